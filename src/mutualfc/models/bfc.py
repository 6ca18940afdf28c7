"""BFCNet: the base levels, packed to the coarsest resolution, through a linear transform into one latent coded by
the masked hyperprior."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mutualfc.latent_codecs import masked_hyperprior_codec
from mutualfc.models.config import MutualConfig
from mutualfc.models.gain import INV_GAIN_BITS, GainUnit
from mutualfc.nn import exact
from mutualfc.nn.caching import cached
from mutualfc.nn.closed_form import sample_rows, set_pca
from mutualfc.nn.layers import ResBlock, conv
from mutualfc.nn.packing import LevelPacker
from mutualfc.nn.sparse import (
    Columns,
    affine,
    columns,
    positions,
    put_columns,
    scatter,
    trunk_at,
    trunk_positions,
    zero_input,
)

Tier = tuple[float, torch.Tensor]  # (quality, indexes of the cells coded at it)
SYNTHESIS_BITS = 14  # fractional bits of the decoder's synthesis and prediction (features to about 6e-5)


class BFCNet(nn.Module):
    """Basic feature compression: base levels -> latent -> decoded base levels. Analysis and synthesis are the
    closed-form PCA of the packed base in the task metric (training learns the entropy model and the gains).
    ``shared``: also build the trunk that gives the residual stream its context from the decoded latent."""

    def __init__(self, cfg: MutualConfig, base: tuple[str, ...], shared: bool = True):
        super().__init__()
        self.pack = LevelPacker(names=base, **cfg.packer_args())
        c = self.pack.channels
        m, self.groups = cfg.latent_groups(c)
        self.lin_a = conv(c, m, 1)
        self.lin_s = conv(m, c, 1)
        self.g_s = nn.Sequential(conv(m, cfg.width, 1), ResBlock(cfg.width), ResBlock(cfg.width)) if shared else None
        self.latent_codec = masked_hyperprior_codec(m, cfg.hyper, self.groups)
        self.gain = GainUnit(cfg.qualities, m, *cfg.gains)

    def analysis(
        self, levels: dict[str, torch.Tensor], kept: torch.Tensor | None = None, width: int | None = None
    ) -> torch.Tensor:
        """-> latent (before the gains). ``kept``: raster positions that will be coded (real coding): only those are
        computed (from the levels' blocks there, the metric folded into the transform), as columns (C, K), in a grid
        ``width`` cells wide (None: the coarsest level's; a level smaller than the grid reads as padded,
        ``LevelPacker.gather_cells``)."""
        if kept is None:
            return self.lin_a(self.pack.pack(levels))
        k = self.pack.names[-1]
        width = levels[k].shape[-1] // self.pack.factor[k] if width is None else width
        blocks = self.pack.gather_cells(levels, kept, width)
        x = torch.cat([blocks[k].reshape(self.pack.ch[k], kept.numel()) for k in self.pack.names])

        def fold():  # the metric folded into the analysis: latent = W A x + (W a + b)
            a, off = self.pack.packed_affine()
            wt, b = self.lin_a.weight.view(self.lin_a.out_channels, -1).double(), self.lin_a.bias.double()
            return (wt @ a).float(), (wt @ off + b).float()

        wt, b = cached(self, "analysis", (self.lin_a.weight, self.lin_a.bias, *self.pack.buffers()), fold)
        return F.linear(x.T, wt, b).T

    def synthesis(self, y_hat: torch.Tensor, shared: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """-> the residual stream's context (None if there is no trunk or it is not asked for), decoded base
        (packed, in the codec's feature space)."""
        context = self.g_s(y_hat) if shared and self.g_s is not None else None
        return context, self.lin_s(y_hat)

    def dequantize(self, y_hat: torch.Tensor, quality: float, bits: int, low: Tier | None = None) -> torch.Tensor:
        """Decoded latent columns (fixed point, ``ACT_BITS``) times the inverse gains -> fixed point with ``bits``
        fractional bits, exactly. ``low``: (quality, column indexes) of the columns coded at a lower quality."""
        return self.gain.dequantize(y_hat, quality, exact.ACT_BITS + INV_GAIN_BITS - bits, low)

    def packed_cells(
        self, y_hat: torch.Tensor, kept: torch.Tensor, quality: float, low: Tier | None = None
    ) -> torch.Tensor:
        """Real decoding: the decoded base in the codec's packed feature space, as fixed-point columns
        (``SYNTHESIS_BITS``), (packed channels, 1 + K): column 0 is every skipped cell's (latent 0), the others the
        cells ``kept``; ``low``: (quality, indexes among the kept cells) of the cells coded at a lower quality.
        Exact integer arithmetic: the same on every machine."""
        y = columns(y_hat, kept)
        low = None if low is None else (low[0], low[1] + 1)
        y = self.dequantize(torch.cat([y.new_zeros(y.shape[0], 1), y], 1), quality, SYNTHESIS_BITS, low)
        return exact.wide_linear(exact.wide_params(self.lin_s, SYNTHESIS_BITS), y)

    def context(
        self, y_hat: torch.Tensor, quality: float, kept: torch.Tensor | None = None, low: Tier | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """The residual stream's context: the trunk on the dequantized latent map, exactly (fixed point); ``low``
        as for ``packed_cells`` (indexes among the cells ``kept``). ``at``: the raster positions where the context
        is read: it is computed there only (the same integers), the rest of the map is 0; None: everywhere."""
        c, h, w = y_hat.shape[1:]
        low = None if low is None else (low[0], kept[low[1]])
        if at is not None:  # ``kept`` None: every cell may be nonzero
            kept = torch.arange(h * w) if kept is None else kept
            return scatter(self._trunk_at(y_hat, quality, kept, low, at), at, (h, w))
        x = self.dequantize(y_hat.reshape(c, -1), quality, exact.ACT_BITS, low).view(1, c, h, w)
        first, *blocks = self.g_s
        x = exact.conv2d(first, x)
        for block in blocks:
            conv_a, act, conv_b = block.body
            x = (x + exact.conv2d(conv_b, exact.activation(act, exact.conv2d(conv_a, x)))).clamp_(
                -exact.ACT_LIMIT, exact.ACT_LIMIT
            )
        return x

    def _trunk_at(
        self, y_hat: torch.Tensor, quality: float, kept: torch.Tensor, low: tuple[float, torch.Tensor] | None,
        at: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """``context`` at the positions ``at`` as columns. The latent is 0 outside the kept cells, so the trunk's
        first (1x1) layer gives its bias there: it is evaluated (and the latent dequantized) at the kept cells it is
        read at only, and its one zero-input column fills in the others (the same integers)."""
        c, h, w = y_hat.shape[1:]
        first, rest = self.g_s[0], self.g_s[1:]
        need = trunk_positions(self.g_s, at, (h, w))
        flags = torch.zeros(h * w, dtype=torch.int8)  # 1: a kept cell, 2: a kept cell of the lower tier
        flags[kept] = 1
        if low is not None:
            flags[low[1]] = 2
        read = flags[need[0]]
        inside = read.nonzero().squeeze(1)  # indexes into need[0] of the kept cells
        sub = read[inside] == 2
        low = None if low is None or not bool(sub.any()) else (low[0], sub.nonzero().squeeze(1))
        x = self.dequantize(columns(y_hat, need[0][inside]), quality, exact.ACT_BITS, low)
        out = zero_input(first).expand(-1, need[0].numel()).clone()  # a copy: written below
        put_columns(out, inside, affine(first, x))
        return trunk_at(rest, Columns(out, need[0], (h, w)), at, need[1:])

    def decoded_levels(self, y_hat: torch.Tensor, mask: torch.Tensor, quality: float) -> dict[str, torch.Tensor]:
        """Real decoding of the base levels alone (separate-scale codec), cell by cell, exactly."""
        kept = positions(mask)
        return self.pack.paint_fixed(self.packed_cells(y_hat, kept, quality), SYNTHESIS_BITS, kept, mask.shape[-2:])

    def init_from_data(
        self, levels: dict[str, torch.Tensor], samples: int, sensitivity: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Metric and PCA of the packed base; returns the packed base as reconstructed from the principal components."""
        self.pack.set_stats(levels, sensitivity)
        u = self.pack.pack(levels)
        set_pca(self.lin_a, self.lin_s, sample_rows(u, samples))
        with torch.no_grad():
            return self.lin_s(self.lin_a(u))
