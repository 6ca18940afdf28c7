"""Learnt mutual feature compression (after Liu et al., ICASSP 2023), and its separate-scale baseline.

BFCNet codes the base (small-scale, high-level) pyramid levels into one latent at the coarsest resolution, with a
hyperprior whose entropy parameters also use a checkerboard spatial context and channel-group context (CompressAI
latent codecs: every step decodes in parallel over the whole map). MFCNet predicts the finer levels from the decoded
base, so those cost no bits; an optional residual stream refines the finest level, with its entropy parameters
predicted from the decoded base (conditional coding, no side information). One model covers the rate range through
per-quality gain vectors (fractional qualities interpolate).

All transforms work in the detector's task metric. In the default ``transform="linear"`` design they are the
closed-form ones (PCA analysis/synthesis, least-squares prediction) and training learns the entropy models, gains
and the residual's context; ``"nonlinear"`` (the earlier design, still loadable) adds trained non-linear branches.

``SeparateFeatureNet`` applies the same kind of codec to each level independently: the "existing approach" that
the mutual design has to beat.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():
    # CompressAI's package import pulls in torch_geometric, which calls the deprecated torch.jit.script at import
    # time; the warning says nothing about mutualfc, so it is kept off the user's terminal.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from compressai.ans import BufferedRansEncoder, RansDecoder
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.entropy_models.entropy_models import EntropyModel
    from compressai.latent_codecs import (
        ChannelGroupsLatentCodec,
        CheckerboardLatentCodec,
        GaussianConditionalLatentCodec,
        HyperLatentCodec,
        HyperpriorLatentCodec,
    )
    from compressai.layers import CheckerboardMaskedConv2d
    from compressai.ops import quantize_ste


_PRE_METRIC_FIELDS = {"arch", "levels", "channels", "base", "width", "min_width", "latent", "hyper", "groups",
                      "residual", "qualities", "init_samples"}  # fmt: skip


@dataclass
class MutualConfig:
    """Configuration as data (stored in every checkpoint)."""

    arch: str = "mutual"  # "mutual" (BFCNet + MFCNet) or "separate" (one codec per level)
    levels: tuple[str, ...] = ("p3", "p4", "p5")  # fine -> coarse, each level half the size of the previous
    channels: tuple[int, ...] = (64, 128, 256)
    base: tuple[str, ...] = ("p4", "p5")  # coded by BFCNet; the finer levels are predicted by MFCNet
    width: int = 128  # transform width at the coarsest level; halved per finer level (at least min_width)
    min_width: int = 32
    latent: int = 0  # latent channels; 0 = as many as the packed base has (a complete transform)
    hyper: int = 128
    groups: tuple[int, ...] = (1, 1, 2, 4, 16)  # relative sizes of the latent's channel groups (context order)
    residual: int = 128  # channels of the finest level's residual latent; 0 = no residual stream
    qualities: int = 8
    gains: tuple[float, float] = (1.0, 32.0)  # initial latent gains of the lowest and the highest quality
    init_samples: int = 20000  # positions used for the closed-form (PCA / least-squares) initialisation
    # Feature space the transforms work in: "task" whitens each level with the square root of the detector's
    # sensitivity (task network's ``level_sensitivity``), so squared error there approximates the change in the
    # detections; "std" only divides each level by its standard deviation (checkpoints before the task metric).
    metric: str = "task"
    metric_eps: float = 1e-5  # floor of the sensitivity's eigenvalues, relative to the largest (keeps it invertible)
    metric_scale: float = 50.0  # brings the whitened features to a range where quantisation steps of 1 are coarse
    # "linear": analysis, synthesis and prediction are the closed-form linear transforms (PCA, least squares) and
    # only the entropy models and gains are learned; "nonlinear" adds trained non-linear branches to every transform
    # (checkpoints before the linear design). Measured on coco-val212, the trained branches cost accuracy at every
    # rate with the training this project can afford (results/ablation.md).
    transform: str = "linear"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MutualConfig:
        known = {f.name for f in fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        if _PRE_METRIC_FIELDS <= d.keys():  # a complete config: fields added since then take their old meaning
            if "metric" not in d:
                d |= {"metric": "std", "gains": (0.25, 16.0)}
            d.setdefault("transform", "nonlinear")
        cfg = cls(**d)
        if cfg.transform not in ("linear", "nonlinear"):
            raise ValueError(f"unknown transform {cfg.transform!r}")
        return cfg

    @property
    def linear(self) -> bool:
        return self.transform == "linear"

    def latent_groups(self, packed: int) -> tuple[int, tuple[int, ...]]:
        """-> latent channels and channel-group sizes for a base that packs into ``packed`` channels."""
        m = self.latent or packed
        total = sum(self.groups)
        sizes = [max(1, round(m * g / total)) for g in self.groups[:-1]]
        return m, (*sizes, m - sum(sizes))

    def width_at(self, i: int) -> int:
        """Transform width at level index ``i`` (0 = finest)."""
        return max(self.min_width, self.width >> (len(self.levels) - 1 - i))


@contextlib.contextmanager
def reproducible_threads() -> Iterator[None]:
    """Entropy parameters must match to the last bit between encoder and decoder, and decoded features should not
    depend on the machine's thread count: intra-op parallelism changes float summation order, so coding always
    runs single-threaded whatever the caller set."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _conv(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, s, k // 2)


def _up(cin: int, cout: int) -> nn.Sequential:
    """x2 upsampling by sub-pixel convolution."""
    return nn.Sequential(_conv(cin, cout * 4, 3), nn.PixelShuffle(2))


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_conv(ch, ch), nn.GELU(), _conv(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _stamps(tensors) -> tuple:
    """Identity and in-place version of each tensor: a cache key that changes when any of them is replaced or
    modified. Tensors made under ``torch.inference_mode`` keep no version; they cannot be modified outside it."""

    def version(t: torch.Tensor) -> int:
        return -1 if t.is_inference() else t._version

    return tuple((id(t), t.data_ptr(), version(t)) for t in tensors)


_SHARED_TABLES: dict[bytes, tuple[list[list[int]], list[int], list[int]]] = {}


def _tables(model: EntropyModel) -> tuple[list[list[int]], list[int], list[int]]:
    """The model's CDF tables as the Python lists CompressAI's rANS coder takes, each CDF cut to its length; cached
    on the model (CompressAI converts the whole padded table on every call) and rebuilt when the table tensors were
    replaced or changed in place (``update()``, ``load_state_dict``). Models with the same tables (every Gaussian
    conditional of a network has the same scale table) get the same list objects, so that a stream coding several
    of them passes each table once."""
    key = _stamps((model._quantized_cdf, model._cdf_length, model._offset))
    cached = getattr(model, "_mutualfc_tables", None)
    if cached is None or cached[0] != key:
        lengths = model._cdf_length.reshape(-1).int().tolist()
        offsets = model._offset.reshape(-1).int().tolist()
        cdfs = [row[:n] for row, n in zip(model._quantized_cdf.tolist(), lengths, strict=True)]
        content = np.asarray([len(cdfs), *lengths, *offsets, *(v for c in cdfs for v in c)], np.int64).tobytes()
        if len(_SHARED_TABLES) > 64:
            _SHARED_TABLES.clear()
        cached = (key, _SHARED_TABLES.setdefault(content, (cdfs, lengths, offsets)))
        model._mutualfc_tables = cached
    return cached[1]


# A binary flag (CompressAI CDF: 16-bit precision, last entry the escape): 0 costs about 0.012 bits, 1 about 7.
_FLAG_TABLES = ([[0, 65000, 65534, 65536]], [4], [0])


class SymbolWriter:
    """Encoder side of one rANS stream (CompressAI's ``BufferedRansEncoder``): the symbols of every coding step are
    collected in decoding order and handed to the coder in one call at ``finish`` (each call converts the CDF tables
    it is given, so one call per stream instead of one per step)."""

    def __init__(self):
        self._parts: list[tuple[tuple, torch.Tensor, torch.Tensor]] = []

    def code(self, model: EntropyModel, values: torch.Tensor, indexes: torch.Tensor, means: torch.Tensor):
        """-> the decoded values (``round(values - means) + means``, exactly what the reader returns)."""
        symbols = torch.round(values - means).int()
        self._parts.append((_tables(model), symbols, indexes.int()))
        return symbols.to(means.dtype) + means

    def flag(self, value: bool) -> bool:
        self._parts.append(
            (_FLAG_TABLES, torch.tensor([int(value)], dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
        )
        return value

    def finish(self) -> bytes:
        if not self._parts:
            return b""
        start: dict[int, int] = {}  # table set (by identity) -> its first index in the combined tables
        cdfs, lengths, offsets = [], [], []
        for tables, _, _ in self._parts:
            if id(tables) not in start:
                start[id(tables)] = len(cdfs)
                cdfs, lengths, offsets = cdfs + tables[0], lengths + tables[1], offsets + tables[2]
        symbols = torch.cat([s for _, s, _ in self._parts]).tolist()
        indexes = torch.cat([i + start[id(t)] for t, _, i in self._parts]).tolist()
        enc = BufferedRansEncoder()
        enc.encode_with_indexes(symbols, indexes, cdfs, lengths, offsets)
        return enc.flush()


class SymbolReader:
    """Decoder side: the same calls, in the same order, read the symbols back (``values`` is ignored). Each call
    passes the CDF tables only up to the highest index its symbols use (the coder converts every table it is given
    on every call, and the tables grow with the index: scale tables are sorted by scale)."""

    def __init__(self, data: bytes):
        self._dec = RansDecoder()
        self._dec.set_stream(data)

    def code(self, model: EntropyModel, values, indexes: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        cdfs, lengths, offsets = _tables(model)
        n = int(indexes.max()) + 1 if indexes.numel() else 0
        symbols = self._dec.decode_stream(indexes.int().tolist(), cdfs[:n], lengths[:n], offsets[:n])
        return torch.from_numpy(np.fromiter(symbols, np.int32, len(symbols))).to(means.dtype) + means

    def flag(self, value=None) -> bool:
        return self._dec.decode_stream([0], *_FLAG_TABLES)[0] == 1


def _scale_indexes(gc: GaussianConditional, scales: torch.Tensor) -> torch.Tensor:
    """CompressAI's ``build_indexes`` (index of the smallest table scale >= the scale) by binary search."""
    return torch.searchsorted(gc.scale_table[:-1].contiguous(), scales.contiguous())


def _code_gaussian(coder, gc: GaussianConditional, y: torch.Tensor | None, params: torch.Tensor, chunk) -> torch.Tensor:
    """Codes the values ``y`` (C, K) with the Gaussians ``params`` ((2C, K): scales and means at the same K
    positions, split by the latent codec's ``chunk``) predicts; -> the decoded values, (C, K).

    Values whose scale is at the table's floor (index 0: about 1e-5 bits each) are left out when all of them round
    to their mean, which one flag says: then both sides take the means. With the zoo model on coco-val212 at quality
    4 that is half of the latents, and 1 in 400,000 of them is not at its mean; an untrained model sets the flag."""
    scales, means = (t[0] for t in chunk(params.unsqueeze(0)))
    indexes, out = _scale_indexes(gc, scales).reshape(-1), means.reshape(-1).clone()
    floor = indexes == 0
    every = True
    if bool(floor.any()):
        off = None if y is None else bool(torch.round(y.reshape(-1) - out).ne(0).logical_and_(floor).any())
        every = coder.flag(off)
    if every:
        return coder.code(gc, None if y is None else y.reshape(-1), indexes, out).view_as(means)
    coded = indexes.nonzero().squeeze(1)
    if coded.numel():
        values = None if y is None else y.reshape(-1).index_select(0, coded)
        out.index_copy_(0, coded, coder.code(gc, values, indexes.index_select(0, coded), out.index_select(0, coded)))
    return out.view_as(means)


# Real coding evaluates every network only at the coded cells, as columns: (C, K) for K raster positions of a map.


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Raster indices of the nonzero cells of a map of one image ((1, 1, H, W) or (H, W)): the coded positions."""
    return mask.flatten().nonzero().squeeze(1)


def _cell_map(idx: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``_positions``: a (1, 1, H, W) map that is 1 at raster positions ``idx`` (dilating it with a max
    pool gives the cells a convolution reads)."""
    cells = torch.zeros(1, 1, *size)
    cells.view(-1)[idx] = 1
    return cells


def _columns(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (C, K): the values at raster positions ``idx``."""
    return x.reshape(x.shape[1], -1).index_select(1, idx)


def _scatter(cells: torch.Tensor, idx: torch.Tensor, size: tuple[int, int], fill: torch.Tensor | None = None):
    """(C, K) values at raster positions ``idx`` -> (1, C, H, W) map, ``fill`` ((C,); default 0) elsewhere."""
    c, n = cells.shape[0], size[0] * size[1]
    out = cells.new_zeros(c, n) if fill is None else fill.view(c, 1).expand(c, n).clone()
    out.index_copy_(1, idx, cells)
    return out.view(1, c, *size)


def _block_indexes(cells: torch.Tensor, width: int, f: int) -> torch.Tensor:
    """Raster indices, in a map ``f`` times finer, of the f x f blocks under the cells ``cells`` (raster indices in a
    map ``width`` wide), ordered (row in block, column in block, cell): the ``(C, f, f, K)`` layout of cell blocks."""
    i = torch.arange(f)
    rows, cols = (cells // width) * f, (cells % width) * f
    return ((rows.view(1, 1, -1) + i.view(-1, 1, 1)) * (width * f) + cols.view(1, 1, -1) + i.view(1, -1, 1)).view(-1)


def _affine(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to columns: (C_in, N) -> (C_out, N)."""
    return F.linear(x.T, conv.weight.view(conv.out_channels, -1), conv.bias).T  # faster than addmm in this layout


def _cached(owner: nn.Module, name: str, tensors: tuple[torch.Tensor, ...], build):
    """``build()``, cached on ``owner`` until one of ``tensors`` is replaced or changed in place (training steps,
    ``load_state_dict``, ``update()``)."""
    key = _stamps(tensors)
    hit = owner.__dict__.get(f"_mutualfc_{name}")
    if hit is None or hit[0] != key:
        hit = (key, build())
        owner.__dict__[f"_mutualfc_{name}"] = hit
    return hit[1]


def _memoized(memo: dict | None, key: tuple, positions: torch.Tensor, build):
    """``build()``, kept in ``memo`` (one image's coding: every channel group gathers at the same cells) under
    ``key`` and the identity of ``positions`` (held with the value, so that the identity cannot be reused)."""
    if memo is None:
        return build()
    key = (*key, id(positions))
    if key not in memo:
        memo[key] = (positions, build())
    return memo[key][1]


def _context_at(conv: nn.Conv2d, x: torch.Tensor, idx: torch.Tensor, memo: dict | None = None) -> torch.Tensor:
    """A (masked, grouped, one input channel per group) context convolution of ``x`` (1, C, H, W) evaluated at
    raster positions ``idx`` only -> (C_out, K): the taps the mask zeroes are not read at all."""
    c, h, w = x.shape[1:]
    k, pad = conv.kernel_size[0], conv.padding[0]
    if conv.groups != c or conv.weight.shape[1] != 1:
        raise ValueError("context convolution must have one input channel per group")

    def taps_and_weights():
        weight = conv.weight * conv.mask if hasattr(conv, "mask") else conv.weight
        taps = weight.flatten(1).abs().sum(0).nonzero().squeeze(1)  # kernel offsets any output uses
        return taps, weight.flatten(1)[:, taps].view(c, -1, taps.numel())  # (C, out per group, taps)

    taps, wt = _cached(conv, "taps", (conv.weight, getattr(conv, "mask", conv.weight)), taps_and_weights)

    def gather_at():  # (K * taps) in the padded map
        r, col = idx // w, idx % w
        return ((r.view(-1, 1) + taps // k) * (w + 2 * pad) + (col.view(-1, 1) + taps % k)).reshape(-1)

    flat = _memoized(memo, ("context", k, pad, w, *taps.tolist()), idx, gather_at)
    xp = F.pad(x, (pad, pad, pad, pad)).reshape(c, -1)
    patches = xp.index_select(1, flat).view(c, -1, taps.numel())  # (C, K, taps)
    return torch.bmm(wt, patches.transpose(1, 2)).reshape(-1, idx.numel()) + conv.bias.view(-1, 1)


def _conv_at(conv: nn.Conv2d, x: torch.Tensor, idx: torch.Tensor, memo: dict | None = None) -> torch.Tensor:
    """An (ungrouped, square, symmetrically padded) convolution of ``x`` (1, C, H, W) evaluated at raster positions
    ``idx`` of its output only -> (C_out, K), as one matrix product over the gathered patches."""
    k, s, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if conv.groups != 1 or conv.kernel_size != (k, k) or conv.stride != (s, s) or conv.padding != (pad, pad):
        raise ValueError("only ungrouped, square convolutions can be evaluated at positions")
    c, h, w = x.shape[1:]
    if k == 1 and s == 1 and pad == 0:
        return _affine(conv, _columns(x, idx))

    def gather_at():  # (k * k * K) in the padded map
        w_out = (w + 2 * pad - k) // s + 1
        taps = torch.arange(k * k).view(-1, 1)
        r, col = idx // w_out * s, idx % w_out * s
        return ((taps // k + r) * (w + 2 * pad) + (taps % k + col)).reshape(-1)

    flat = _memoized(memo, ("conv", k, s, pad, w), idx, gather_at)
    xp = F.pad(x, (pad, pad, pad, pad)).reshape(c, -1)
    patches = xp.index_select(1, flat).view(c * k * k, -1)  # rows in the weight's (C, k, k) order
    return F.linear(patches.T, conv.weight.reshape(conv.out_channels, -1), conv.bias).T


def _apply_columns(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A stack of 1x1 convolutions and element-wise activations applied to columns (C, K)."""
    for m in layers:
        x = _affine(m, x) if isinstance(m, nn.Conv2d) else m(x)
    return x


def _stack_at(layers: nn.Sequential, x: torch.Tensor, idx: torch.Tensor, memo: dict | None = None) -> torch.Tensor:
    """A stack of stride-1 "same" convolutions and element-wise activations applied to ``x`` (1, C, H, W),
    evaluated at raster positions ``idx`` only -> (C_out, K). Each convolution runs only where a later one reads it
    (the positions dilated by the later kernels' radii), so a sparse set of coded cells costs in proportion to its
    size."""
    h, w = x.shape[-2:]
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]

    def need_at() -> dict[int, torch.Tensor]:  # each convolution's positions
        need = {convs[-1]: idx}
        cells = _cell_map(idx, (h, w))
        for a, b in zip(reversed(convs[:-1]), reversed(convs[1:]), strict=True):
            r = layers[b].kernel_size[0] // 2
            if r:
                cells = F.max_pool2d(cells, 2 * r + 1, 1, r)
            need[a] = _positions(cells) if r else need[b]
        return need

    need = _memoized(memo, ("stack", h, w, *(layers[i].kernel_size[0] for i in convs)), idx, need_at)
    out, prev = None, None  # columns at need[prev]
    for i, m in enumerate(layers):
        if not isinstance(m, nn.Conv2d):
            out = m(out)
        elif prev is not None and m.kernel_size == (1, 1):
            out, prev = _affine(m, out), i  # a 1x1 convolution reads the columns it is given (need[prev] = need[i])
        else:
            out, prev = _conv_at(m, x if prev is None else _scatter(out, need[prev], (h, w)), need[i], memo), i
    return out


class MaskedParams(nn.Sequential):
    """Entropy-parameter network whose input carries the skip mask as its last channel (CompressAI's latent codecs
    split and re-arrange it with the other inputs, checkerboard halves included). Where the mask is 0 the Gaussian
    is pinned to mean 0 and the smallest scale: a skipped (zero) latent then costs about 1e-4 bits and both sides
    agree on its value without decoding anything."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :-1]) * x[:, -1:]


class MaskedHyperLatentCodec(HyperLatentCodec):
    """Hyper-latent codec that codes only the hyper-latent positions over at least one kept latent cell; the others
    are the entropy bottleneck's medians on both sides (no bits)."""

    @staticmethod
    def _z_mask(mask: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(mask, 2)

    def _coded_positions(self, mask: torch.Tensor) -> torch.Tensor:
        """Raster indices of the hyper-latent positions that are coded (batch of one)."""
        return _positions(self._z_mask(mask))

    def _medians(self, like: torch.Tensor) -> torch.Tensor:
        return self.entropy_bottleneck._get_medians().detach().view(1, -1, 1, 1).expand_as(like)

    def forward(self, y: torch.Tensor, mask: torch.Tensor) -> dict:
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        if self.quantizer == "ste":
            medians = self.entropy_bottleneck._get_medians()
            z_hat = quantize_ste(z - medians) + medians
        zm = self._z_mask(mask) > 0
        z_hat = torch.where(zm, z_hat, self._medians(z_hat))
        z_likelihoods = torch.where(zm, z_likelihoods, torch.ones_like(z_likelihoods))
        return {"likelihoods": {"z": z_likelihoods}, "params": self.h_s(z_hat)}

    def code(self, coder, y: torch.Tensor | None, mask: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Codes (``SymbolWriter``, latent columns ``y`` (C, K) at ``kept`` given) or decodes (``SymbolReader``)
        the hyper-latent at the coded positions; -> the hyperprior's parameters at ``kept``, (C_params, K)."""
        eb = self.entropy_bottleneck
        size = tuple(mask.shape[-2:])
        c, (h, w) = eb.channels, (size[0] // 2, size[1] // 2)
        idx = self._coded_positions(mask)
        medians = eb._get_medians().detach().view(c, 1)
        z_hat = medians.expand(c, h * w).clone()
        if idx.numel():
            k = idx.numel()
            values = None
            if y is not None:  # h_a at the coded positions: skipped cells' latents are 0
                first, act, down = self.h_a
                a = _scatter(act(_affine(first, y)), kept, size, act(first.bias))
                values = _conv_at(down, a, idx).reshape(-1)
            channel = torch.arange(c).view(c, 1).expand(c, k).reshape(-1)
            z_hat[:, idx] = coder.code(eb, values, channel, medians.expand(c, k).reshape(-1)).view(c, k)
        return self._synthesis_at(z_hat.view(1, c, h, w), size, kept)

    def _synthesis_at(self, z_hat: torch.Tensor, size: tuple[int, int], kept: torch.Tensor) -> torch.Tensor:
        """``h_s`` (up-convolution, activation, convolution) evaluated only where the latent is coded: the last
        convolution at ``kept``, the up-convolution at the hyper-latent cells whose children it reads."""
        (up, shuffle), act, last = self.h_s
        r = last.kernel_size[0] // 2
        parents = _positions(F.max_pool2d(F.max_pool2d(_cell_map(kept, size), 2 * r + 1, 1, r), 2))
        u = _scatter(_conv_at(up, z_hat, parents), parents, tuple(z_hat.shape[-2:]))
        return _conv_at(last, act(shuffle(u)), kept)


class MaskedHyperpriorLatentCodec(HyperpriorLatentCodec):
    """Hyperprior latent codec that knows which latent cells are skipped (``mask``: 1 = coded, at the latent's
    resolution; the decoder reads it from its own stream): skipped cells and the hyper-latent over them cost no bits."""

    def forward(self, y: torch.Tensor, mask: torch.Tensor) -> dict:
        y = y * mask
        hyper = self.latent_codec["hyper"](y, mask)
        out = self.latent_codec["y"](y, torch.cat([hyper["params"], mask.expand(y.shape[0], 1, -1, -1)], 1))
        lik = out["likelihoods"]["y"]
        lik = torch.where(mask > 0, lik, torch.ones_like(lik))  # exactly what coding costs (the noise would not be)
        return {"likelihoods": {"y": lik, "z": hyper["likelihoods"]["z"]}, "y_hat": out["y_hat"] * mask}

    def code(self, coder, y: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """Real coding into one rANS stream: the hyper-latent, then per channel group the checkerboard anchors and
        non-anchors, only at kept cells. The encoder (``SymbolWriter``, ``y`` given) and the decoder
        (``SymbolReader``, ``y`` None) run this same code, so their entropy parameters match by construction; they
        equal what ``forward`` computes (two-pass checkerboard, channel-group context) up to float rounding, each
        network evaluated at the coded cells only. -> y_hat."""
        h, w = mask.shape[-2:]
        kept = _positions(mask)
        cg = self.latent_codec["y"]
        y_hat = mask.new_zeros(1, sum(cg.groups), h, w)
        if not kept.numel():
            return y_hat
        y = None if y is None else _columns(y, kept)  # (C, K): only the coded cells are read
        params = self.latent_codec["hyper"].code(coder, y, mask, kept)  # (C_params, K)
        y_hat_ = [t.view(t.shape[1], h * w) for t in y_hat.split(cg.groups, 1)]
        y_ = [None] * len(cg.groups) if y is None else y.split(cg.groups, 0)
        anchor = (kept // w + kept % w) % 2 == 0  # CompressAI's "even" anchor parity
        steps = [anchor.nonzero().squeeze(1), (~anchor).nonzero().squeeze(1)]  # indexes into ``kept``
        memo, idxs = {}, [kept.index_select(0, sel) for sel in steps]  # the same cells for every group
        for k, g in enumerate(cg.groups):
            side = params
            if k:
                channel_ctx = _stack_at(cg.channel_context[f"y{k}"], y_hat[:, : sum(cg.groups[:k])], kept, memo)
                side = torch.cat([channel_ctx, side])
            cb = cg.latent_codec[f"y{k}"]
            gcl = cb.latent_codec["y"]
            for step, sel in enumerate(steps):
                if not sel.numel():
                    continue
                idx = idxs[step]
                if step == 0:  # anchors: no spatial context
                    ctx = side.new_zeros(cb.context_prediction.out_channels, sel.numel())
                else:  # non-anchors: this group's map holds its decoded anchors only
                    ctx = _context_at(cb.context_prediction, y_hat_[k].view(1, g, h, w), idx, memo)
                p = _apply_columns(cb.entropy_parameters, torch.cat([ctx, side.index_select(1, sel)]))
                values = None if y is None else y_[k].index_select(1, sel)
                y_hat_[k].index_copy_(1, idx, _code_gaussian(coder, gcl.gaussian_conditional, values, p, gcl._chunk))
        return y_hat


def _hyperprior_codec(m: int, n_hyper: int, groups: tuple[int, ...]) -> MaskedHyperpriorLatentCodec:
    """Hyperprior (hyper-latent at half the latent's resolution) + channel groups + checkerboard context, all aware
    of the skip mask."""
    side = n_hyper * 2
    h_a = nn.Sequential(_conv(m, n_hyper, 1), nn.GELU(), _conv(n_hyper, n_hyper, 3, 2))
    h_s = nn.Sequential(_up(n_hyper, n_hyper), nn.GELU(), _conv(n_hyper, side))
    channel_context = {
        f"y{k}": nn.Sequential(
            _conv(sum(groups[:k]), 64, 1), nn.GELU(), _conv(64, 64, 3), nn.GELU(), _conv(64, groups[k] * 2, 1)
        )
        for k in range(1, len(groups))
    }
    per_group = {}
    for k, g in enumerate(groups):
        cin = g * 2 + (k > 0) * g * 2 + side
        per_group[f"y{k}"] = CheckerboardLatentCodec(
            latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
            context_prediction=CheckerboardMaskedConv2d(g, g * 2, kernel_size=5, stride=1, padding=2, groups=g),
            entropy_parameters=MaskedParams(nn.Conv2d(cin, 96, 1), nn.GELU(), nn.Conv2d(96, g * 2, 1)),
        )
    hyper = MaskedHyperLatentCodec(entropy_bottleneck=EntropyBottleneck(n_hyper), h_a=h_a, h_s=h_s, quantizer="ste")
    return MaskedHyperpriorLatentCodec(
        latent_codec={
            "y": ChannelGroupsLatentCodec(groups=list(groups), channel_context=channel_context, latent_codec=per_group),
            "hyper": hyper,
        }
    )


class GainUnit(nn.Module):
    """Per-quality channel gains (variable rate in one model); fractional qualities interpolate log-linearly.

    ``tied``: the inverse gain is 1 / gain (what a linear transform needs). Untied inverse gains are free parameters
    (checkpoints of the non-linear design); Adam moves small parameters by large relative steps, and the inverse
    gains of the highest qualities drifted to a fifth of 1 / gain in training."""

    def __init__(self, qualities: int, ch: int, lo: float = 1.0, hi: float = 32.0, tied: bool = False):
        super().__init__()
        # geometric initial gains: latents start well above the quantisation step, so information flows at once
        g = lo * (hi / lo) ** (torch.arange(qualities, dtype=torch.float32) / max(qualities - 1, 1))
        self.gain = nn.Parameter(g.view(-1, 1, 1, 1).repeat(1, ch, 1, 1))
        self.inv_gain = None if tied else nn.Parameter((1 / g).view(-1, 1, 1, 1).repeat(1, ch, 1, 1))

    def forward(self, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        q = min(max(float(quality), 0.0), self.gain.shape[0] - 1.0)
        lo, hi = math.floor(q), math.ceil(q)
        t = q - lo
        out = []
        for p in (self.gain, self.inv_gain):
            if p is None:
                out.append(1 / out[0])
                continue
            v = p.abs().clamp_min(1e-4)
            out.append(torch.exp((1 - t) * v[lo].log() + t * v[hi].log()) if t else v[lo])
        return out[0], out[1]


def _zero_init(conv: nn.Conv2d) -> nn.Conv2d:
    """A non-linear branch that starts at zero leaves the closed-form linear path in charge at initialisation."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _flat(u: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """(B, C, H, W) -> at most ``n`` random positions as rows (C columns)."""
    x = u.permute(0, 2, 3, 1).reshape(-1, u.shape[1])
    if x.shape[0] > n:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]
    return x.double()


def _pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> mean (C,), top-``k`` principal directions (C, k)."""
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / max(x.shape[0] - 1, 1)
    _, vecs = torch.linalg.eigh(cov)
    return mu, vecs[:, -k:].flip(1)


def _set_linear(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        conv.weight.copy_(weight.to(conv.weight).view_as(conv.weight))
        conv.bias.copy_(bias.to(conv.bias))


class LevelPacker(nn.Module):
    """Brings pyramid levels into the codec's feature space and back: per-channel mean removed, then the metric
    (``cfg.metric``: the detector's sensitivity whitening, or a per-level scale; set from data by ``set_stats``),
    then the coarsest resolution by lossless space-to-depth."""

    def __init__(self, cfg: MutualConfig, names: tuple[str, ...]):
        super().__init__()
        ch = dict(zip(cfg.levels, cfg.channels, strict=True))
        top = len(cfg.levels) - 1
        self.names, self.metric = names, cfg.metric
        self.eps, self.scale = cfg.metric_eps, cfg.metric_scale
        if self.metric not in ("task", "std"):
            raise ValueError(f"unknown feature metric {self.metric!r}")
        self.factor = {k: 2 ** (top - cfg.levels.index(k)) for k in names}
        self.ch = {k: ch[k] * self.factor[k] ** 2 for k in names}
        self.channels = sum(self.ch.values())
        for k in names:
            self.register_buffer(f"mean_{k}", torch.zeros(1, ch[k], 1, 1))
            if self.metric == "task":
                self.register_buffer(f"proj_{k}", torch.eye(ch[k]).view(ch[k], ch[k], 1, 1))
                self.register_buffer(f"unproj_{k}", torch.eye(ch[k]).view(ch[k], ch[k], 1, 1))
            else:
                self.register_buffer(f"std_{k}", torch.ones(()))

    def normalize(self, k: str, x: torch.Tensor) -> torch.Tensor:
        """Feature units -> the codec's feature space (one level, its own resolution)."""
        x = x - getattr(self, f"mean_{k}")
        return F.conv2d(x, getattr(self, f"proj_{k}")) if self.metric == "task" else x / getattr(self, f"std_{k}")

    def to_features(self, k: str, x: torch.Tensor) -> torch.Tensor:
        """A difference in the codec's feature space -> feature units (no mean)."""
        return F.conv2d(x, getattr(self, f"unproj_{k}")) if self.metric == "task" else x * getattr(self, f"std_{k}")

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
        (C, f, f, K) in the level's own units."""
        out = {}
        for k in self.names:
            f, x = self.factor[k], levels[k][0]
            c = x.shape[0]
            out[k] = x.reshape(c, -1).index_select(1, _block_indexes(kept, width, f)).view(c, f, f, kept.numel())
        return out

    def features_to_cells(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(C, f, f, N) blocks in feature units -> (packed channels, N) in the codec's feature space: ``pack`` of N
        cells (the packed channel order is ``pixel_unshuffle``'s)."""
        parts = []
        for k in self.names:
            c, f = feats[k].shape[0], self.factor[k]
            x = feats[k].reshape(c, -1) - getattr(self, f"mean_{k}").view(c, 1)
            x = getattr(self, f"proj_{k}").view(c, c) @ x if self.metric == "task" else x / getattr(self, f"std_{k}")
            parts.append(x.reshape(c * f * f, -1))
        return torch.cat(parts, 0)

    def cells_to_features(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of ``features_to_cells``: (packed channels, N) -> each level's (C, f, f, N) blocks in feature
        units."""
        out = {}
        for k, part in zip(self.names, u.split([self.ch[k] for k in self.names], 0), strict=True):
            f = self.factor[k]
            c = self.ch[k] // (f * f)
            x = part.reshape(c, -1)
            x = getattr(self, f"unproj_{k}").view(c, c) @ x if self.metric == "task" else x * getattr(self, f"std_{k}")
            out[k] = (x + getattr(self, f"mean_{k}").view(c, 1)).view(c, f, f, -1)
        return out

    def packed_affine(self, to_features: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-pixel metric of every level as one affine map on per-cell blocks (float64), so that it can be
        folded into the linear transforms: ``to_features``: codec space (packed) -> blocks in feature units
        ``A u + a``; else the inverse direction. Blocks are stacked level after level, each (C, f, f) flattened."""
        mats, means = [], []
        for k in self.names:
            c, f2 = self.ch[k] // self.factor[k] ** 2, self.factor[k] ** 2
            if self.metric == "task":
                m = getattr(self, f"unproj_{k}" if to_features else f"proj_{k}").view(c, c).double()
            else:
                std = getattr(self, f"std_{k}").double()
                m = torch.eye(c, dtype=torch.float64) * (std if to_features else 1 / std)
            mats.append(torch.kron(m, torch.eye(f2, dtype=torch.float64)))
            means.append(getattr(self, f"mean_{k}").double().view(c).repeat_interleave(f2))
        a, mean = torch.block_diag(*mats), torch.cat(means)
        return (a, mean) if to_features else (a, -(a @ mean))

    def split_blocks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(stacked blocks, N) -> each level's (C, f, f, N) blocks."""
        return {
            k: part.view(-1, self.factor[k], self.factor[k], x.shape[1])
            for k, part in zip(self.names, x.split([self.ch[k] for k in self.names]), strict=True)
        }

    @staticmethod
    def paint(feats: dict[str, torch.Tensor], kept: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Per-cell blocks (C, f, f, 1 + K) -> full maps (1, C, H f, W f): column 0 fills every cell not in
        ``kept`` (skipped cells all decode to the same block), the others go to the ``kept`` cells."""
        h, w = size
        out = {}
        for k, v in feats.items():
            c, f = v.shape[0], v.shape[1]
            band = v[..., 0].reshape(c, f, 1, f).expand(c, f, w, f).reshape(c, f, w * f)  # one row of cells
            full = band.repeat(1, h, 1).view(c, -1)
            full.index_copy_(1, _block_indexes(kept, w, f), v[..., 1:].reshape(c, -1))
            out[k] = full.view(1, c, h * f, w * f)
        return out

    def set_stats(self, levels: dict[str, torch.Tensor], sensitivity: dict[str, torch.Tensor] | None = None) -> None:
        if self.metric == "task" and sensitivity is None:
            raise ValueError("the task metric needs the task network's level_sensitivity()")
        for k in self.names:
            x = levels[k].double()
            mean = x.mean((0, 2, 3), keepdim=True)
            getattr(self, f"mean_{k}").copy_(mean.float())
            if self.metric == "std":
                getattr(self, f"std_{k}").copy_((x - mean).std().float())
                continue
            e, v = torch.linalg.eigh(sensitivity[k].double().cpu())
            e = e.clamp_min(0) + self.eps * e.max().clamp_min(1e-30)
            c = e.numel()
            proj = self.scale * (v * e.sqrt()) @ v.T
            unproj = (v / e.sqrt()) @ v.T / self.scale
            getattr(self, f"proj_{k}").copy_(proj.float().view(c, c, 1, 1))
            getattr(self, f"unproj_{k}").copy_(unproj.float().view(c, c, 1, 1))


class BFCNet(nn.Module):
    """Basic feature compression: base levels (packed to the coarsest resolution) -> latent -> decoded base levels
    and a shared representation for MFCNet. Analysis and synthesis are a linear transform (initialised as PCA; with
    ``cfg.transform == "nonlinear"`` plus non-linear residual branches); ``latent_codec`` is hyperprior +
    checkerboard + channel-group context. ``shared``: whether to compute the shared representation (the residual
    stream's context) in the linear design, where nothing else needs it."""

    def __init__(self, cfg: MutualConfig, base: tuple[str, ...], shared: bool = True):
        super().__init__()
        n = cfg.width
        self.pack = LevelPacker(cfg, base)
        c = self.pack.channels
        m, self.groups = cfg.latent_groups(c)
        self.lin_a = _conv(c, m, 1)
        self.lin_s = _conv(m, c, 1)
        self.g_a = self.g_s = self.out_s = None
        if not cfg.linear:
            self.g_a = nn.Sequential(_conv(c, n, 1), ResBlock(n), _zero_init(_conv(n, m, 1)))
            self.out_s = _zero_init(_conv(n, c, 1))
        if shared or not cfg.linear:
            self.g_s = nn.Sequential(_conv(m, n, 1), ResBlock(n), ResBlock(n))
        self.latent_codec = _hyperprior_codec(m, cfg.hyper, self.groups)
        self.gain = GainUnit(cfg.qualities, m, *cfg.gains, tied=cfg.linear)

    def analysis(self, levels: dict[str, torch.Tensor], kept: torch.Tensor | None = None) -> torch.Tensor:
        """-> latent (before the gains). ``kept``: raster positions that will be coded (real coding); the linear
        design computes only those (from the levels' blocks there) and leaves the others 0."""
        if self.g_a is not None:
            u = self.pack.pack(levels)
            return self.lin_a(u) + self.g_a(u)
        if kept is None:
            return self.lin_a(self.pack.pack(levels))
        k = self.pack.names[-1]
        h, w = (n // self.pack.factor[k] for n in levels[k].shape[-2:])
        blocks = self.pack.gather_cells(levels, kept, w)
        x = torch.cat([blocks[k].reshape(self.pack.ch[k], kept.numel()) for k in self.pack.names])

        def fold():  # the metric folded into the analysis: latent = W A x + (W a + b)
            a, off = self.pack.packed_affine(to_features=False)
            wt, b = self.lin_a.weight.view(self.lin_a.out_channels, -1).double(), self.lin_a.bias.double()
            return (wt @ a).float(), (wt @ off + b).float()

        wt, b = _cached(self, "analysis", (self.lin_a.weight, self.lin_a.bias, *self.pack.buffers()), fold)
        return _scatter(F.linear(x.T, wt, b).T, kept, (h, w))

    def synthesis(self, y_hat: torch.Tensor, shared: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """-> shared representation (None if not computed or not asked for and not needed here), decoded base
        (packed, normalised)."""
        shared = None if self.g_s is None or not (shared or self.out_s is not None) else self.g_s(y_hat)
        base = self.lin_s(y_hat)
        return shared, base if self.out_s is None else base + self.out_s(shared)

    def synthesis_blocks(self, y_hat: torch.Tensor, kept: torch.Tensor, mfc: MFCNet | None = None) -> torch.Tensor:
        """Linear design, real decoding: the decoded base levels' blocks in feature units (``LevelPacker`` stacking),
        then with ``mfc`` the predicted levels' blocks, as columns (rows, 1 + K): column 0 is every skipped cell's
        (latent 0), the others the cells ``kept``. The metric and the prediction are folded into one matrix."""

        def fold():
            w, b = self.lin_s.weight.view(self.lin_s.out_channels, -1).double(), self.lin_s.bias.double()
            a, off = self.pack.packed_affine(to_features=True)
            ws, bs = [a @ w], [a @ b + off]
            if mfc is not None:
                wm, bm = mfc.lin.weight.view(mfc.lin.out_channels, -1).double(), mfc.lin.bias.double()
                a, off = mfc.pack.packed_affine(to_features=True)
                ws.append(a @ wm @ w)
                bs.append(a @ (wm @ b + bm) + off)
            return torch.cat(ws).float(), torch.cat(bs).float()

        key = (self.lin_s.weight, self.lin_s.bias, *self.pack.buffers())
        if mfc is not None:
            key += (mfc.lin.weight, mfc.lin.bias, *mfc.pack.buffers())
        w, b = _cached(self, "synthesis" if mfc is None else "synthesis+mfc", key, fold)
        y = _columns(y_hat, kept)
        return F.linear(torch.cat([y.new_zeros(y.shape[0], 1), y], 1).T, w, b).T

    def decoded_levels(self, y_hat: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Real decoding of the base levels alone (separate-scale codec): cell by cell in the linear design."""
        if self.out_s is not None:
            return self.pack.unpack(self.synthesis(y_hat)[1])
        kept = _positions(mask)
        return self.pack.paint(self.pack.split_blocks(self.synthesis_blocks(y_hat, kept)), kept, mask.shape[-2:])

    def init_from_data(
        self, levels: dict[str, torch.Tensor], samples: int, sensitivity: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """PCA of the packed base; returns the packed base as reconstructed from the principal components."""
        self.pack.set_stats(levels, sensitivity)
        u = self.pack.pack(levels)
        x = _flat(u, samples)
        mu, v = _pca(x, self.lin_a.out_channels)
        _set_linear(self.lin_a, v.T, -(v.T @ mu))
        _set_linear(self.lin_s, v, mu)
        with torch.no_grad():
            return self.lin_s(self.lin_a(u))


class MFCNet(nn.Module):
    """Predicts the non-base levels from the decoded base: a linear map of the packed decoded base (least-squares
    initialisation) plus a non-linear coarse-to-fine branch from the shared representation."""

    def __init__(self, cfg: MutualConfig, base: tuple[str, ...], targets: tuple[str, ...]):
        super().__init__()
        ch = dict(zip(cfg.levels, cfg.channels, strict=True))
        self.pack = LevelPacker(cfg, targets)
        self.lin = _conv(LevelPacker(cfg, base).channels, self.pack.channels, 1)
        finest = min(cfg.levels.index(k) for k in targets)
        self.order = list(reversed(cfg.levels[finest:]))[1:]  # coarse -> fine below the coarsest level
        self.ups = self.heads = None
        if cfg.linear:
            return
        self.ups = nn.ModuleDict(
            {k: nn.Sequential(_up(cfg.width_at(cfg.levels.index(k) + 1), cfg.width_at(cfg.levels.index(k))),
                              ResBlock(cfg.width_at(cfg.levels.index(k)))) for k in self.order}
        )  # fmt: skip
        self.heads = nn.ModuleDict({k: _zero_init(_conv(cfg.width_at(cfg.levels.index(k)), ch[k])) for k in targets})

    def forward(self, shared: torch.Tensor, base_packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> predicted levels (feature units)."""
        lin = self.pack.unpack(self.lin(base_packed))
        if self.heads is None:
            return lin
        out, h = {}, shared
        for k in self.order:
            h = self.ups[k](h)
            if k in self.heads:
                out[k] = lin[k] + self.pack.to_features(k, self.heads[k](h))
        return out

    def init_from_data(
        self, levels: dict[str, torch.Tensor], base_rec: torch.Tensor, samples: int, sensitivity: dict | None = None
    ) -> None:
        self.pack.set_stats(levels, sensitivity)
        t = _flat(self.pack.pack(levels), samples, seed=1)
        b = _flat(base_rec, samples, seed=1)
        b1 = torch.cat([b, torch.ones_like(b[:, :1])], 1)
        reg = 1e-3 * torch.eye(b1.shape[1], dtype=b1.dtype, device=b1.device)
        w = torch.linalg.solve(b1.T @ b1 + reg, b1.T @ t)  # (C_base + 1, C_target)
        _set_linear(self.lin, w[:-1].T, w[-1])


class ResidualCoder(nn.Module):
    """Low-rate residual stream refining the finest predicted level: the residual (packed to the coarsest
    resolution) is transformed linearly (PCA initialisation; the non-linear design adds a branch that also sees the
    shared representation); its Gaussian (mean, scale) come from the shared representation, so it needs no side
    information."""

    def __init__(self, cfg: MutualConfig, level: str):
        super().__init__()
        n, r = cfg.width, cfg.residual
        self.level = level
        self.pack = LevelPacker(cfg, (level,))
        c = self.pack.channels
        self.lin_a = _conv(c, r, 1)
        self.lin_s = _conv(r, c, 1)
        self.g_a = self.g_s = None
        if not cfg.linear:
            self.g_a = nn.Sequential(_conv(c + n, n, 1), ResBlock(n), _zero_init(_conv(n, r)))
            self.g_s = nn.Sequential(_conv(r + n, n, 1), ResBlock(n), _zero_init(_conv(n, c, 1)))
        ep = MaskedParams(_conv(n, 96, 1), nn.GELU(), _conv(96, 96, 3), nn.GELU(), _conv(96, 2 * r, 1))
        self.codec = GaussianConditionalLatentCodec(quantizer="ste", entropy_parameters=ep)
        self.gain = GainUnit(cfg.qualities, r, *cfg.gains, tied=cfg.linear)

    def analysis(self, d: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return self.lin_a(d) if self.g_a is None else self.lin_a(d) + self.g_a(torch.cat([d, shared], 1))

    def code(self, coder, r: torch.Tensor | None, shared: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Codes (``SymbolWriter``, ``r`` given) or decodes (``SymbolReader``) the residual latent at the cells
        ``kept`` into its own stream; ``r`` and the result are (channels, K), one column per cell. The entropy
        parameters are evaluated at those cells only (where the mask channel they expect is 1)."""
        if not kept.numel():
            return shared.new_zeros(self.lin_a.out_channels, 0)
        params = _stack_at(self.codec.entropy_parameters, shared, kept)
        return _code_gaussian(coder, self.codec.gaussian_conditional, r, params, self.codec._chunk)

    def synthesis(self, r_hat: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return self.lin_s(r_hat) if self.g_s is None else self.lin_s(r_hat) + self.g_s(torch.cat([r_hat, shared], 1))

    def init_from_data(self, d: torch.Tensor, samples: int) -> None:
        mu, v = _pca(_flat(d, samples, seed=2), self.lin_a.out_channels)
        _set_linear(self.lin_a, v.T, -(v.T @ mu))
        _set_linear(self.lin_s, v, mu)


def _pad_levels(cfg: MutualConfig, levels: dict[str, torch.Tensor], pad: int) -> tuple[dict, tuple[int, int]]:
    """Replicate-pad so the coarsest level is a multiple of ``pad``; -> padded levels, coarsest original size."""
    h, w = levels[cfg.levels[-1]].shape[-2:]
    ph, pw = -h % pad, -w % pad
    out = {}
    for i, name in enumerate(cfg.levels):
        f = 2 ** (len(cfg.levels) - 1 - i)
        x = levels[name].float()
        out[name] = F.pad(x, (0, pw * f, 0, ph * f), mode="replicate") if (ph or pw) else x
    return out, (h, w)


def _crop_levels(cfg: MutualConfig, levels: dict[str, torch.Tensor], size: tuple[int, int]) -> dict:
    h, w = size
    out = {}
    for i, name in enumerate(cfg.levels):
        f = 2 ** (len(cfg.levels) - 1 - i)
        out[name] = levels[name][..., : h * f, : w * f]
    return out


class _CodingMixin:
    """``update()`` and latent-codec helpers shared by the mutual and the separate network."""

    pad_multiple = 2  # at the coarsest level, so that the hyper-latent (/2) tiles the latent exactly
    latent_count = 1  # BFCNet latents per image (the separate network has one per level)
    cfg: MutualConfig

    def update(self, force: bool = True) -> None:
        """Build the entropy coders' CDF tables (CompressAI) before ``compress``/``decompress``."""
        for m in self.modules():
            if isinstance(m, EntropyBottleneck):
                m.update(force=force)
            elif isinstance(m, GaussianConditional):
                m.update_scale_table(_scale_table(), force=force)

    def _padded(self, size: tuple[int, int]) -> tuple[int, int]:
        h, w = size
        return h + (-h % self.pad_multiple), w + (-w % self.pad_multiple)

    def _mask(
        self, keep: torch.Tensor | None, size: tuple[int, int], batch: int = 1, device: torch.device | None = None
    ) -> torch.Tensor:
        """-> (batch, 1, Hp, Wp) float mask of the coded latent cells: ``keep`` ((B, 1, H, W) at the coarsest level,
        None = all) zero-padded to the latent's size (padding is never coded)."""
        h, w = size
        hp, wp = self._padded(size)
        k = torch.ones(batch, 1, h, w, device=device) if keep is None else keep.float().expand(batch, 1, h, w)
        return F.pad(k, (0, wp - w, 0, hp - h))

    def _compress_latent(self, bfc: BFCNet, x: dict, quality: float, mask: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        gain, inv = bfc.gain(quality)
        writer = SymbolWriter()
        y_hat = bfc.latent_codec.code(writer, bfc.analysis(x, _positions(mask)) * gain, mask)
        return writer.finish(), y_hat * inv

    def _decompress_latent(self, bfc: BFCNet, string: bytes, quality: float, mask: torch.Tensor) -> torch.Tensor:
        return bfc.latent_codec.code(SymbolReader(string), None, mask) * bfc.gain(quality)[1]

    def _guarded(self, strings: list[bytes], size: tuple[int, int]) -> list[bytes]:
        """Zero-pad every rANS stream so that the decoder (which does not bounds-check) does not read past the end of
        a crafted or damaged stream: a regular symbol consumes at most one 32-bit word, and a stream holds at most a
        latent's and its hyper-latent's symbols (and one flag per coding step)."""
        hp, wp = self._padded(size)
        if "_widest" not in self.__dict__:
            self._widest = max(m.gain.shape[1] for m in self.modules() if isinstance(m, GainUnit)) + self.cfg.hyper
        pad = 4 * self._widest * hp * wp + 64
        # escape (bypass) symbols read 4 bits per call and their length prefix comes from the data, so a stream of
        # crafted escape prefixes can ask for about 15 times its own length: padded for that too
        return [strings[0], *(bytes(s) + b"\0" * (pad + 16 * len(s)) for s in strings[1:])]  # mask: not rANS

    def stream_count(self, residual: bool = False) -> int:
        """Streams of one coded image: the skip mask, one rANS stream per latent, then the residual stream if sent."""
        return 1 + self.latent_count + int(residual)


def encode_mask(keep: torch.Tensor | None) -> bytes:
    """Skip mask stream: the coarsest level's keep map, one bit per cell in raster order (numpy ``packbits``); empty
    when every cell is coded."""
    if keep is None or bool(keep.all()):
        return b""
    return np.packbits(keep[0, 0].cpu().numpy().astype(bool).ravel()).tobytes()


def decode_mask(data: bytes, size: tuple[int, int]) -> torch.Tensor | None:
    """Inverse of ``encode_mask`` for a coarsest level of ``size``; ValueError if the length does not fit."""
    if not data:
        return None
    h, w = size
    if len(data) != (h * w + 7) // 8:
        raise ValueError(f"skip mask of {len(data)} bytes does not fit a {h}x{w} map")
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=h * w)
    return torch.from_numpy(bits.astype(bool)).view(1, 1, h, w)


def _check(cfg: MutualConfig) -> None:
    if not cfg.groups or min(cfg.groups) <= 0:
        raise ValueError(f"channel groups {cfg.groups} must be positive")


class MutualFeatureNet(_CodingMixin, nn.Module):
    """BFCNet + MFCNet (+ residual): ``forward`` for training (noisy/STE quantisation, likelihoods; also returns the
    prediction-only reconstruction), ``compress``/``decompress`` for real bits (call ``update()`` first)."""

    def __init__(self, cfg: MutualConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MutualConfig(arch="mutual")
        _check(cfg)
        self.targets = tuple(k for k in cfg.levels if k not in cfg.base)
        if not self.targets:
            raise ValueError("the mutual codec needs at least one predicted level (base must not hold all levels)")
        self.finest = cfg.levels[0]
        residual = bool(cfg.residual) and self.finest in self.targets
        self.bfc = BFCNet(cfg, cfg.base, shared=residual)
        self.mfc = MFCNet(cfg, cfg.base, self.targets)
        self.res = ResidualCoder(cfg, self.finest) if residual else None

    @torch.no_grad()
    def init_from_data(self, levels: dict[str, torch.Tensor], sensitivity: dict[str, torch.Tensor] | None = None):
        """Closed-form start (metric, PCA transforms, least-squares prediction) from a batch of training crops;
        ``sensitivity`` is the task network's ``level_sensitivity`` (needed by the task metric)."""
        levels, _ = _pad_levels(self.cfg, levels, self.pad_multiple)
        n = self.cfg.init_samples
        base_rec = self.bfc.init_from_data({k: levels[k] for k in self.cfg.base}, n, sensitivity)
        self.mfc.init_from_data({k: levels[k] for k in self.targets}, base_rec, n, sensitivity)
        if self.res is not None:
            self.res.pack.set_stats({self.finest: levels[self.finest]}, sensitivity)
            self.init_residual(levels)

    @torch.no_grad()
    def init_residual(self, levels: dict[str, torch.Tensor]) -> None:
        """PCA of the residual of the linear prediction (from the base as the linear transforms reconstruct it);
        also used after loading a model with another residual width into this one."""
        levels, _ = _pad_levels(self.cfg, levels, self.pad_multiple)
        base_rec = self.bfc.lin_s(self.bfc.lin_a(self.bfc.pack.pack({k: levels[k] for k in self.cfg.base})))
        pred = self.mfc.pack.unpack(self.mfc.lin(base_rec))[self.finest]  # linear part of the prediction
        d = self.res.pack.pack({self.finest: levels[self.finest]}) - self.res.pack.pack({self.finest: pred})
        self.res.init_from_data(d, self.cfg.init_samples)

    def normalized(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Levels in the codec's feature space (where training measures distortion)."""
        packers = {k: self.bfc.pack for k in self.cfg.base} | {k: self.mfc.pack for k in self.targets}
        return {k: packers[k].normalize(k, x) for k, x in levels.items()}

    def _decode(self, y_hat: torch.Tensor, residual_fn=None) -> tuple[dict, dict]:
        """-> (levels with the residual applied, prediction-only levels), as maps (training, and coding with the
        non-linear design). ``residual_fn(shared, prediction)`` maps the finest level's prediction (residual packer's
        space) to the decoded residual."""
        shared, base_u = self.bfc.synthesis(y_hat, residual_fn is not None or self.mfc.heads is not None)
        out = self.bfc.pack.unpack(base_u)
        out.update(self.mfc(shared, base_u))
        pred = dict(out)
        if residual_fn is not None:
            p = self.res.pack
            pred_r = p.pack({self.finest: out[self.finest]})
            out[self.finest] = p.unpack(pred_r + residual_fn(shared, pred_r))[self.finest]
        return out, pred

    def _decode_cells(self, y_hat: torch.Tensor, mask: torch.Tensor, residual_fn=None) -> tuple[dict, dict]:
        """``_decode`` of the linear design in real coding: every transform runs on the coded cells only, one
        column per cell (column 0 stands for all skipped cells, which decode to the same blocks), and the levels'
        maps are painted from the columns. ``residual_fn`` gets and returns columns."""
        kept, size = _positions(mask), tuple(mask.shape[-2:])
        base, target = self.bfc.synthesis_blocks(y_hat, kept, self.mfc).split(
            [self.bfc.pack.channels, self.mfc.pack.channels]
        )
        feats = self.bfc.pack.split_blocks(base) | self.mfc.pack.split_blocks(target)
        pred = LevelPacker.paint(feats, kept, size)
        if residual_fn is None:
            return pred, pred
        p = self.res.pack
        pred_r = p.features_to_cells({self.finest: feats[self.finest]})
        feats |= p.cells_to_features(pred_r + residual_fn(self.bfc.g_s(y_hat), pred_r))
        return LevelPacker.paint(feats, kept, size), pred

    def _decode_coded(self, y_hat: torch.Tensor, mask: torch.Tensor, residual_fn=None) -> tuple[dict, dict]:
        return self._decode_cells(y_hat, mask, residual_fn) if self.cfg.linear else self._decode(y_hat, residual_fn)

    def _residual_coding(self, coder, quality: float, mask: torch.Tensor, x: dict | None = None):
        """-> the ``residual_fn`` that codes (``SymbolWriter``, padded levels ``x`` given) or decodes
        (``SymbolReader``) the residual stream at the coded cells, in the form ``_decode_coded`` uses."""
        rg, rinv = (g.view(-1, 1) for g in self.res.gain(quality))
        kept, size, k, res = _positions(mask), tuple(mask.shape[-2:]), self.finest, self.res

        def residual_fn(shared: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
            r = None
            if x is not None and self.cfg.linear:
                d = res.pack.features_to_cells(res.pack.gather_cells({k: x[k]}, kept, size[1])) - pred[:, 1:]
                r = _affine(res.lin_a, d) * rg
            elif x is not None:
                r = res.analysis(res.pack.pack({k: x[k]}) - pred, shared).flatten(2)[0].index_select(1, kept) * rg
            r_hat = res.code(coder, r, shared, kept) * rinv
            if self.cfg.linear:
                return _affine(res.lin_s, torch.cat([r_hat.new_zeros(r_hat.shape[0], 1), r_hat], 1))
            return res.synthesis(_scatter(r_hat, kept, size), shared)

        return residual_fn

    # -- training --------------------------------------------------------------------------------------
    def forward(self, levels: dict[str, torch.Tensor], quality: float, keep: torch.Tensor | None = None) -> dict:
        """``keep``: (B, 1, H, W) at the coarsest level, cells to code (None = all); the others decode to the mean."""
        x, size = _pad_levels(self.cfg, levels, self.pad_multiple)
        mask = self._mask(keep, size, x[self.finest].shape[0], x[self.finest].device)
        gain, inv = self.bfc.gain(quality)
        lc = self.bfc.latent_codec(self.bfc.analysis({k: x[k] for k in self.cfg.base}) * gain, mask)
        likelihoods = dict(lc["likelihoods"])

        def residual(shared, pred_u):
            rg, rinv = self.res.gain(quality)
            d = self.res.pack.pack({self.finest: x[self.finest]}) - pred_u
            rc = self.res.codec(self.res.analysis(d, shared) * rg * mask, torch.cat([shared, mask], 1))
            lik = rc["likelihoods"]["y"]
            likelihoods["r"] = torch.where(mask > 0, lik, torch.ones_like(lik))
            return self.res.synthesis(rc["y_hat"] * mask * rinv, shared)

        rec, pred = self._decode(lc["y_hat"] * inv, residual if self.res is not None else None)
        return {"likelihoods": likelihoods, "levels": _crop_levels(self.cfg, rec, size),
                "prediction": _crop_levels(self.cfg, pred, size)}  # fmt: skip

    # -- real bits -------------------------------------------------------------------------------------
    @torch.inference_mode()
    @reproducible_threads()
    def compress(
        self,
        levels: dict[str, torch.Tensor],
        quality: float,
        residual: bool = True,
        rd_lambda: float | None = None,
        keep: torch.Tensor | None = None,
        reconstruct: bool = True,
    ) -> tuple[list[bytes], dict]:
        """-> byte strings (skip mask, the latent's stream, then the residual stream if used) and what decoding needs
        besides them: the coarsest level's size; also the encoder's own reconstruction under ``"levels"`` (None if
        not ``reconstruct`` and the residual did not need it) and whether the residual stream was sent under
        ``"residual"``.

        With ``rd_lambda`` the residual stream is a rate-distortion decision: it is sent only if its bits cost less
        than ``rd_lambda`` times the squared error it removes (in the codec's feature space, per pixel: the units
        training used). ``keep`` ((1, 1, H, W) at the coarsest level) skips the positions where it is 0: their
        latents (base and residual) are not coded, so they decode to the mean features; the mask is the first
        stream (``encode_mask``)."""
        x, size = _pad_levels(self.cfg, levels, self.pad_multiple)
        mask = self._mask(keep, size)
        latent, y_hat = self._compress_latent(self.bfc, {k: x[k] for k in self.cfg.base}, quality, mask)
        strings = [encode_mask(keep), latent]
        use = residual and self.res is not None
        if not (use or reconstruct):
            return strings, {"size": size, "levels": None, "residual": False}
        writer = SymbolWriter()
        rec, pred = self._decode_coded(y_hat, mask, self._residual_coding(writer, quality, mask, x) if use else None)
        if use:
            strings.append(writer.finish())
        rec, pred = _crop_levels(self.cfg, rec, size), _crop_levels(self.cfg, pred, size)
        if use and rd_lambda is not None:
            k, to_space = self.finest, self.mfc.pack.normalize  # only the finest level differs between the two
            ref = to_space(k, levels[k])
            gain = float((to_space(k, pred[k]) - ref).pow(2).sum() - (to_space(k, rec[k]) - ref).pow(2).sum())
            if 8 * len(strings[-1]) >= rd_lambda * gain:  # both per pixel in training's loss: pixels cancel
                strings.pop()
                rec, use = pred, False
        return strings, {"size": size, "levels": rec, "residual": use}

    @torch.inference_mode()
    @reproducible_threads()
    def decompress(self, strings: list[bytes], size: tuple[int, int], quality: float) -> dict[str, torch.Tensor]:
        n = self.stream_count()
        if len(strings) not in (n, n + 1) or (len(strings) == n + 1 and self.res is None):
            raise ValueError(f"expected {n} streams (+1 residual), got {len(strings)}")
        mask = self._mask(decode_mask(strings[0], size), size)
        strings = self._guarded(strings, size)
        y_hat = self._decompress_latent(self.bfc, strings[1], quality, mask)
        residual_fn = self._residual_coding(SymbolReader(strings[n]), quality, mask) if len(strings) > n else None
        rec, _ = self._decode_coded(y_hat, mask, residual_fn)
        return _crop_levels(self.cfg, rec, size)


class SeparateFeatureNet(_CodingMixin, nn.Module):
    """Separate-scale baseline: the same kind of codec (BFCNet: packing, PCA-initialised transforms, hyperprior +
    checkerboard + channel groups) applied to every level independently, no cross-scale prediction."""

    def __init__(self, cfg: MutualConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MutualConfig(arch="separate")
        _check(cfg)
        self.codecs = nn.ModuleDict({k: BFCNet(cfg, (k,), shared=False) for k in cfg.levels})
        self.latent_count = len(self.codecs)

    @torch.no_grad()
    def init_from_data(self, levels: dict[str, torch.Tensor], sensitivity: dict[str, torch.Tensor] | None = None):
        levels, _ = _pad_levels(self.cfg, levels, self.pad_multiple)
        for k, bfc in self.codecs.items():
            bfc.init_from_data({k: levels[k]}, self.cfg.init_samples, sensitivity)

    def normalized(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Levels in the codec's feature space (where training measures distortion)."""
        return {k: self.codecs[k].pack.normalize(k, x) for k, x in levels.items()}

    def forward(self, levels: dict[str, torch.Tensor], quality: float, keep: torch.Tensor | None = None) -> dict:
        x, size = _pad_levels(self.cfg, levels, self.pad_multiple)
        mask = self._mask(keep, size, x[self.cfg.levels[-1]].shape[0], x[self.cfg.levels[-1]].device)
        lik, rec = {}, {}
        for k, bfc in self.codecs.items():
            gain, inv = bfc.gain(quality)
            lc = bfc.latent_codec(bfc.analysis({k: x[k]}) * gain, mask)
            lik.update({f"{k}.{n}": v for n, v in lc["likelihoods"].items()})
            rec.update(bfc.pack.unpack(bfc.synthesis(lc["y_hat"] * inv)[1]))
        out = _crop_levels(self.cfg, rec, size)
        return {"likelihoods": lik, "levels": out, "prediction": out}

    @torch.inference_mode()
    @reproducible_threads()
    def compress(
        self,
        levels: dict[str, torch.Tensor],
        quality: float,
        residual: bool = True,
        rd_lambda: float | None = None,
        keep: torch.Tensor | None = None,
        reconstruct: bool = True,
    ) -> tuple[list[bytes], dict]:
        """-> byte strings and the encoder's reconstruction (None if not ``reconstruct``; ``residual`` and
        ``rd_lambda`` have no effect here; ``keep`` as for the mutual network, applied to every level's latent)."""
        x, size = _pad_levels(self.cfg, levels, self.pad_multiple)
        mask = self._mask(keep, size)
        strings, rec = [encode_mask(keep)], {}
        for k, bfc in self.codecs.items():
            s, y_hat = self._compress_latent(bfc, {k: x[k]}, quality, mask)
            strings.append(s)
            if reconstruct:
                rec.update(bfc.decoded_levels(y_hat, mask))
        return strings, {"size": size, "levels": _crop_levels(self.cfg, rec, size) if reconstruct else None}

    @torch.inference_mode()
    @reproducible_threads()
    def decompress(self, strings: list[bytes], size: tuple[int, int], quality: float) -> dict[str, torch.Tensor]:
        if len(strings) != self.stream_count():
            raise ValueError(f"expected {self.stream_count()} streams, got {len(strings)}")
        mask = self._mask(decode_mask(strings[0], size), size)
        strings = self._guarded(strings, size)[1:]
        rec = {}
        for string, bfc in zip(strings, self.codecs.values(), strict=True):
            rec.update(bfc.decoded_levels(self._decompress_latent(bfc, string, quality, mask), mask))
        return _crop_levels(self.cfg, rec, size)


def build_network(cfg: MutualConfig) -> MutualFeatureNet | SeparateFeatureNet:
    """The network a configuration describes (configs as data: checkpoints store ``cfg.to_dict()``)."""
    if cfg.arch == "mutual":
        return MutualFeatureNet(cfg)
    if cfg.arch == "separate":
        return SeparateFeatureNet(cfg)
    raise ValueError(f"unknown architecture {cfg.arch!r}")


def _scale_table(lo: float = 0.11, hi: float = 256.0, levels: int = 64) -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(lo), math.log(hi), levels))


def load_entropy_state(net: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """``load_state_dict`` that first resizes the entropy coders' table buffers (their sizes depend on the trained
    distributions), so stored tables are used as they are instead of being recomputed."""
    for name, module in net.named_modules():
        if isinstance(module, (EntropyBottleneck, GaussianConditional)):
            for buf in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"):
                key = f"{name}.{buf}"
                if key in state and hasattr(module, buf):
                    getattr(module, buf).resize_(state[key].shape)
    net.load_state_dict(state, strict=strict)


_INT8 = "::int8"
_SCALE = "::scale"
_DERIVED = "::transpose_of_synthesis"  # marker: this analysis transform is the transpose of its synthesis (PCA)


def _quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 (keeps zoo checkpoints small; encoder and decoder use the same values)."""
    scale = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127
    scale = scale.half().float()
    q = torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))).clamp(-127, 127).to(torch.int8)
    return q, scale.half()


def is_linear_transform(name: str) -> bool:
    """Whether a parameter belongs to a closed-form linear transform (PCA analysis/synthesis, least-squares
    prediction): the trainer keeps these frozen and checkpoints keep them in float16."""
    return any(part in {"lin_a", "lin_s", "lin"} for part in name.split("."))


def _is_pca_pair(state: dict[str, torch.Tensor], analysis: str) -> bool:
    """Whether ``<prefix>.lin_a`` is the orthonormal PCA analysis of ``<prefix>.lin_s`` (weight = its transpose,
    bias = -weight @ mean): true for closed-form transforms that training kept frozen."""
    synthesis = analysis[: -len("lin_a")] + "lin_s"
    keys = [f"{p}.{t}" for p in (analysis, synthesis) for t in ("weight", "bias")]
    if not all(k in state for k in keys):
        return False
    wa, ba, ws, mean = (state[k].double() for k in keys)
    if wa.dim() != 4 or not torch.equal(wa.flatten(1), ws.flatten(1).T):
        return False
    return torch.allclose(ba, -(wa.flatten(1) @ mean), rtol=1e-4, atol=1e-5)


def pack_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Large non-linear weights as int8 + per-channel scale, other floats (the closed-form linear transforms
    included) as float16; integer tables as they are. A PCA analysis transform is not stored: it is the transpose
    of its synthesis (only the encoder uses it, so rounding in re-deriving its bias cannot desynchronise decoding)."""
    out = {}
    derived = {k[: -len(".weight")] for k in state if k.endswith("lin_a.weight") and _is_pca_pair(state, k[:-7])}
    for k, v in state.items():
        prefix = k.rpartition(".")[0]
        if prefix in derived:
            out[prefix + _DERIVED] = torch.ones(())
            continue
        big = v.is_floating_point() and k.endswith(".weight") and v.dim() >= 2 and v.numel() >= 4096
        if big and not is_linear_transform(k):  # the linear transforms stay float16: near-lossless at the top
            out[k + _INT8], out[k + _SCALE] = _quantize_weight(v.float())
        elif v.is_floating_point() and not k.endswith("scale_table"):
            out[k] = v.half()
        else:
            out[k] = v
    return out


def unpack_state(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in packed.items():
        if k.endswith(_DERIVED):
            synthesis = k[: -len(_DERIVED) - len("lin_a")] + "lin_s"
            ws, mean = packed[synthesis + ".weight"].double(), packed[synthesis + ".bias"].double()
            wa = ws.flatten(1).T
            out[k[: -len(_DERIVED)] + ".weight"] = wa.float().view(*wa.shape, 1, 1)
            out[k[: -len(_DERIVED)] + ".bias"] = (-(wa @ mean)).float()
            continue
        if k.endswith(_SCALE):
            continue
        if k.endswith(_INT8):
            name = k[: -len(_INT8)]
            scale = packed[name + _SCALE].float()
            out[name] = v.float() * scale.view(-1, *([1] * (v.dim() - 1)))
        else:
            out[k] = v.float() if v.is_floating_point() else v
    return out


def export_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Packed weights plus the entropy-bottleneck tables built from exactly the unpacked weights. The Gaussian
    conditionals' tables depend only on the fixed scale table and are rebuilt by ``update()`` at load."""
    packed = pack_state({k: v for k, v in net.state_dict().items() if not is_entropy_table(k)})
    load_entropy_state(net, unpack_state(packed), strict=False)
    net.update(force=True)
    tables = {k: v for k, v in net.state_dict().items() if is_entropy_table(k) and ".entropy_bottleneck." in k}
    return packed | tables


def is_entropy_table(key: str) -> bool:
    """Whether a state-dict key is an entropy coder's table buffer (rebuilt by ``update()``, not a weight)."""
    return key.endswith(("_quantized_cdf", "_offset", "_cdf_length", "scale_table"))


def load_packed(net: nn.Module, packed: dict[str, torch.Tensor]) -> None:
    """Load a zoo checkpoint: unpack weights, keep the stored entropy-bottleneck tables, rebuild the Gaussian ones."""
    state = {k: v for k, v in unpack_state(packed).items() if not k.startswith("mfc.base_pack.")}  # unused, legacy
    load_entropy_state(net, state, strict=False)
    missing = [k for k in net.state_dict() if k not in state and not is_entropy_table(k)]
    unexpected = [k for k in state if k not in net.state_dict()]
    if missing or unexpected:
        raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for m in net.modules():
        if isinstance(m, GaussianConditional):
            m.update_scale_table(_scale_table(), force=True)
