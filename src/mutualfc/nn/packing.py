"""Pyramid levels in the codec's feature space: the task metric, lossless packing to the coarsest resolution, the
per-cell form real coding uses, and padding to whole hyper-latent cells."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mutualfc.nn import exact
from mutualfc.nn.caching import cached
from mutualfc.nn.kernels import kernel
from mutualfc.nn.sparse import block_indexes, put_columns, take_columns


class LevelPacker(nn.Module):
    """Brings pyramid levels into the codec's feature space and back: per-channel mean removed, then the detector's
    sensitivity whitening (``set_stats``: squared error there approximates the change in the detections), then the
    coarsest resolution by lossless space-to-depth."""

    def __init__(self, levels: tuple[str, ...], channels: tuple[int, ...], names: tuple[str, ...],
                 eps: float = 1e-5, scale: float = 50.0):  # fmt: skip
        super().__init__()
        ch = dict(zip(levels, channels, strict=True))
        top = len(levels) - 1
        self.names, self.eps, self.scale = names, eps, scale
        self.factor = {k: 2 ** (top - levels.index(k)) for k in names}
        self.ch = {k: ch[k] * self.factor[k] ** 2 for k in names}
        self.channels = sum(self.ch.values())
        for k in names:
            self.register_buffer(f"mean_{k}", torch.zeros(1, ch[k], 1, 1))
            self.register_buffer(f"proj_{k}", torch.eye(ch[k]).view(ch[k], ch[k], 1, 1))
            self.register_buffer(f"unproj_{k}", torch.eye(ch[k]).view(ch[k], ch[k], 1, 1))

    def normalize(self, k: str, x: torch.Tensor) -> torch.Tensor:
        """Feature units -> the codec's feature space (one level, its own resolution)."""
        return F.conv2d(x - getattr(self, f"mean_{k}"), getattr(self, f"proj_{k}"))

    def to_features(self, k: str, x: torch.Tensor) -> torch.Tensor:
        """A difference in the codec's feature space -> feature units (no mean)."""
        return F.conv2d(x, getattr(self, f"unproj_{k}"))

    def pack(self, levels: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for k in self.names:
            x = self.normalize(k, levels[k])
            parts.append(F.pixel_unshuffle(x, self.factor[k]) if self.factor[k] > 1 else x)
        return torch.cat(parts, 1)

    def unpack(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for k, part in zip(self.names, u.split([self.ch[k] for k in self.names], 1), strict=True):
            x = F.pixel_shuffle(part, self.factor[k]) if self.factor[k] > 1 else part
            out[k] = self.to_features(k, x) + getattr(self, f"mean_{k}")
        return out

    # -- per-cell form (real coding): the coarsest-level cells as columns, each level's f x f block per cell ------
    def gather_cells(self, levels: dict[str, torch.Tensor], kept: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
        """-> each level's blocks at the coarsest-level cells ``kept`` (raster indices in a map ``width`` wide), as
        (C, f, f, K) in the level's own units. A level smaller than the cells' grid reads as ``pad_levels`` pads it
        (its last row and column repeated), without a padded copy."""
        out = {}
        for k in self.names:
            f, x = self.factor[k], levels[k][0]
            c = x.shape[0]
            at = block_indexes(kept, width, f, tuple(x.shape[-2:]))
            out[k] = take_columns(x.reshape(c, -1), at).view(c, f, f, kept.numel())
        return out

    def features_to_cells(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(C, f, f, N) blocks in feature units -> (packed channels, N) in the codec's feature space: ``pack`` of N
        cells (the packed channel order is ``pixel_unshuffle``'s)."""
        parts = []
        for k in self.names:
            c, f = feats[k].shape[0], self.factor[k]
            x = feats[k].reshape(c, -1) - getattr(self, f"mean_{k}").view(c, 1)
            parts.append((getattr(self, f"proj_{k}").view(c, c) @ x).reshape(c * f * f, -1))
        return torch.cat(parts, 0)

    def fixed_to_blocks(self, u: torch.Tensor, bits: int) -> torch.Tensor:
        """The decoder's inverse of ``features_to_cells``: packed codec-space columns as fixed-point integers
        (``bits`` fractional bits) -> the levels' blocks in feature units, stacked as ``split_blocks`` reads them
        (float32, converted from the exact fixed-point result)."""
        rows = []
        for k, part in zip(self.names, u.split([self.ch[k] for k in self.names], 0), strict=True):
            x, mean = self._unprojected(k, part, bits)
            rows.append(((x + mean) * 2.0**-bits).float().reshape(part.shape))
        return torch.cat(rows, 0)

    def _unprojected(self, k: str, part: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Level ``k``'s packed rows (C f f, N) -> its inverse metric applied, exactly: (C, f f N) fixed-point
        integers without the mean, and the mean (C, 1) in the same fixed point."""
        c = self.ch[k] // self.factor[k] ** 2
        unproj, mean = getattr(self, f"unproj_{k}"), getattr(self, f"mean_{k}")
        weights, mean = cached(self, f"unproj_wide{k}{bits}", (unproj, mean), lambda u=unproj, m=mean, c=c: (
            exact.wide_weights(u.view(c, c), None, bits), exact.to_fixed(m.view(c, 1), bits)))  # fmt: skip
        return exact.wide_linear(weights, part.reshape(c, -1)), mean

    def paint_fixed(
        self, u: torch.Tensor, bits: int, kept: torch.Tensor, size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """``paint(split_blocks(fixed_to_blocks(u, bits)), kept, size)``: after the exact products, the mean, the
        scale, the conversion to float32 and the painting of each level in one compiled pass that writes every
        value of the maps once (the same values). Raises ValueError when a value is not finite (possible only with
        non-finite weights or statistics): decoders return finite maps or nothing."""
        h, w = size
        if u.device.type != "cpu":
            out = self.paint(self.split_blocks(self.fixed_to_blocks(u, bits)), kept, size)
            finite = {k: bool(torch.isfinite(v.sum())) for k, v in out.items()}
        else:
            at = kept.numpy() if u.shape[1] > 1 else kept.new_zeros(0).numpy()  # one column: every cell takes it
            out, finite = {}, {}
            for k, part in zip(self.names, u.split([self.ch[k] for k in self.names], 0), strict=True):
                x, mean = self._unprojected(k, part, bits)
                f = self.factor[k]
                blocks = x.view(-1, f, f, u.shape[1]).contiguous().numpy()
                maps, finite[k] = _paint_fixed(blocks, mean.view(-1).contiguous().numpy(), 2.0**-bits, at, h, w)
                out[k] = torch.from_numpy(maps).view(1, -1, h * f, w * f)
        for k, ok in finite.items():
            if not ok:
                raise ValueError(f"decoded level {k} is not finite")
        return out

    def packed_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The metric of every level as one affine map from per-cell blocks in feature units to the packed codec
        space, ``A x + a`` (float64), so that the encoder can fold it into its analysis transform. Blocks are
        stacked level after level, each (C, f, f) flattened."""
        mats, means = [], []
        for k in self.names:
            c, f2 = self.ch[k] // self.factor[k] ** 2, self.factor[k] ** 2
            m = getattr(self, f"proj_{k}").view(c, c).double()
            mats.append(torch.kron(m, torch.eye(f2, dtype=torch.float64)))
            means.append(getattr(self, f"mean_{k}").double().view(c).repeat_interleave(f2))
        a, mean = torch.block_diag(*mats), torch.cat(means)
        return a, -(a @ mean)

    def split_blocks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(stacked blocks, N) -> each level's (C, f, f, N) blocks."""
        return {
            k: part.view(-1, self.factor[k], self.factor[k], x.shape[1])
            for k, part in zip(self.names, x.split([self.ch[k] for k in self.names]), strict=True)
        }

    @staticmethod
    def paint(feats: dict[str, torch.Tensor], kept: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Per-cell blocks (C, f, f, 1 + K) -> full maps (1, C, H f, W f): column 0 fills every cell not in
        ``kept`` (skipped cells all decode to the same block), the others go to the ``kept`` cells; blocks
        (C, f, f, 1): every cell takes column 0."""
        h, w = size
        out = {}
        for k, v in feats.items():
            c, f = v.shape[0], v.shape[1]
            band = v[..., 0].reshape(c, f, 1, f).expand(c, f, w, f).reshape(c, f, w * f)  # one row of cells
            full = band.repeat(1, h, 1).view(c, -1)
            if v.shape[-1] > 1:
                put_columns(full, block_indexes(kept, w, f), v[..., 1:].reshape(c, -1))
            out[k] = full.view(1, c, h * f, w * f)
        return out

    def set_stats(self, levels: dict[str, torch.Tensor], sensitivity: dict[str, torch.Tensor]) -> None:
        """Means from ``levels`` and the metric from the task network's ``level_sensitivity`` (C x C per level)."""
        for k in self.names:
            x = levels[k].double()
            mean = x.mean((0, 2, 3), keepdim=True)
            getattr(self, f"mean_{k}").copy_(mean.float())
            e, v = torch.linalg.eigh(sensitivity[k].double().cpu())
            e = e.clamp_min(0) + self.eps * e.max().clamp_min(1e-30)
            c = e.numel()
            proj = self.scale * (v * e.sqrt()) @ v.T
            unproj = (v / e.sqrt()) @ v.T / self.scale
            getattr(self, f"proj_{k}").copy_(proj.float().view(c, c, 1, 1))
            getattr(self, f"unproj_{k}").copy_(unproj.float().view(c, c, 1, 1))


def pad_levels(
    levels: dict[str, torch.Tensor], names: tuple[str, ...], multiple: int
) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """Replicate-pad so the coarsest level (``names`` run fine -> coarse, each level half the size of the previous)
    is a multiple of ``multiple``; -> padded levels, the coarsest level's original size."""
    h, w = levels[names[-1]].shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    out = {}
    for i, name in enumerate(names):
        f = 2 ** (len(names) - 1 - i)
        x = levels[name].float()
        out[name] = F.pad(x, (0, pw * f, 0, ph * f), mode="replicate") if (ph or pw) else x
    return out, (h, w)


def crop_levels(levels: dict[str, torch.Tensor], names: tuple[str, ...], size: tuple[int, int]) -> dict:
    """Inverse of ``pad_levels``: every level cropped to the coarsest ``size`` times its factor."""
    h, w = size
    out = {}
    for i, name in enumerate(names):
        f = 2 ** (len(names) - 1 - i)
        out[name] = levels[name][..., : h * f, : w * f]
    return out


@kernel()
def _paint_fixed(blocks, mean, scale, kept, h, w):  # pragma: no cover - compiled
    """Fixed-point blocks (C, f, f, 1 + K) and means (C,) -> float32 maps (C, h f, w f): column 0 everywhere (row
    by row, copied), then the cells ``kept`` their columns; each value ``float32((value + mean) * scale)``, as
    ``fixed_to_blocks`` converts it. Also whether every value is finite."""
    c, f, n = blocks.shape[0], blocks.shape[1], blocks.shape[3]
    out = np.empty((c, h * f, w * f), np.float32)
    row = np.empty(w * f, np.float32)
    finite = True
    for ch in range(c):
        m = mean[ch]
        for i in range(f):
            for j in range(f):
                v = np.float32((blocks[ch, i, j, 0] + m) * scale)
                finite &= np.isfinite(v)
                for x in range(w):
                    row[x * f + j] = v
            for y in range(h):  # element by element: a slice per row costs more than its copy
                for x in range(w * f):
                    out[ch, y * f + i, x] = row[x]
        for col in range(1, n):
            y, x = kept[col - 1] // w, kept[col - 1] % w
            for i in range(f):
                for j in range(f):
                    v = np.float32((blocks[ch, i, j, col] + m) * scale)
                    finite &= np.isfinite(v)
                    out[ch, y * f + i, x * f + j] = v
    return out, finite
