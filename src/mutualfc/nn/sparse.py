"""Evaluating networks at the coded cells only: maps as columns (C, K) for K raster positions.

Real coding touches a small share of a feature map (the cells the skip mask keeps); every convolution of the
entropy model and every linear transform is evaluated at the positions a later step reads, as matrix products over
gathered patches, so the cost follows the number of coded cells.

float64 inputs are fixed-point integers (``mutualfc.nn.exact``): then every layer runs in exact integer arithmetic
(what real coding does, so that every machine computes the same entropy parameters); float32 inputs run the float
network (used to check the engine against whole-map convolutions).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mutualfc.nn import exact, intgemm
from mutualfc.nn.caching import cached, memoized
from mutualfc.nn.kernels import kernel


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Raster indices of the nonzero cells of a map of one image ((1, 1, H, W) or (H, W)): the coded positions."""
    return mask.flatten().nonzero().squeeze(1)


def cell_map(idx: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``positions``: a (1, 1, H, W) map that is 1 at raster positions ``idx`` (dilating it with a max
    pool gives the cells a convolution reads)."""
    cells = torch.zeros(1, 1, *size)
    cells.view(-1)[idx] = 1
    return cells


def take_columns(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(C, N) -> (C, K): columns ``idx`` (in range), copied. On the CPU one compiled pass (rows of the cache-sized
    map read in turn); elsewhere ``gather`` with a broadcast index (faster than ``index_select`` along dim 1)."""
    if x.device.type == "cpu" and idx.dtype == torch.int64 and x.dtype in (torch.float32, torch.float64):
        if not x.requires_grad or not torch.is_grad_enabled():
            return torch.from_numpy(_take_columns(x.detach().numpy(), idx.contiguous().numpy()))
    return torch.gather(x, 1, idx.expand(x.shape[0], -1))


@kernel()
def _take_columns(x: np.ndarray, idx: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    for j in range(idx.shape[0]):
        if idx[j] < 0 or idx[j] >= x.shape[1]:
            raise IndexError("column index out of range")
    out = np.empty((x.shape[0], idx.shape[0]), x.dtype)
    for c in range(x.shape[0]):
        for j in range(idx.shape[0]):
            out[c, j] = x[c, idx[j]]
    return out


def put_columns(x: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``x[:, idx] = values`` in place for (C, N) ``x`` and distinct ``idx`` (``scatter_``: faster than
    ``index_copy_`` along dim 1)."""
    return x.scatter_(1, idx.expand(x.shape[0], -1), values)


def columns(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (C, K): the values at raster positions ``idx``."""
    return take_columns(x.reshape(x.shape[1], -1), idx)


def scatter(cells: torch.Tensor, idx: torch.Tensor, size: tuple[int, int], fill: torch.Tensor | None = None):
    """(C, K) values at raster positions ``idx`` -> (1, C, H, W) map, ``fill`` ((C,); default 0) elsewhere."""
    c, n = cells.shape[0], size[0] * size[1]
    out = cells.new_zeros(c, n) if fill is None else fill.view(c, 1).expand(c, n).clone()
    return put_columns(out, idx, cells).view(1, c, *size)


def block_indexes(cells: torch.Tensor, width: int, f: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Raster indices, in a map ``f`` times finer, of the f x f blocks under the cells ``cells`` (raster indices in a
    map ``width`` wide), ordered (row in block, column in block, cell): the ``(C, f, f, K)`` layout of cell blocks.
    ``size``: the finer map's (rows, columns) when it is smaller than ``width * f`` wide or the cells' rows times f
    high: positions beyond it read its last row or column (what replicate padding would give); None: the whole
    blocks are inside, the map ``width * f`` wide."""
    h, w = size if size is not None else (2**62, width * f)
    if cells.device.type == "cpu" and cells.dtype == torch.int64:  # one compiled pass
        return torch.from_numpy(_block_indexes(cells.contiguous().numpy(), width, f, h, w))
    i = torch.arange(f)
    rows = ((cells // width) * f).view(1, 1, -1) + i.view(-1, 1, 1)
    cols = ((cells % width) * f).view(1, 1, -1) + i.view(1, -1, 1)
    return (rows.clamp(max=h - 1) * w + cols.clamp(max=w - 1)).view(-1)


@kernel()
def _block_indexes(cells: np.ndarray, width: int, f: int, h: int, w: int) -> np.ndarray:  # pragma: no cover
    k = cells.shape[0]
    out = np.empty(f * f * k, np.int64)
    for i in range(f):
        for j in range(f):
            for c in range(k):
                row, col = min((cells[c] // width) * f + i, h - 1), min((cells[c] % width) * f + j, w - 1)
                out[(i * f + j) * k + c] = row * w + col
    return out


def gather_columns(x: torch.Tensor, flat: torch.Tensor, outside: torch.Tensor | None) -> torch.Tensor:
    """(C, N) columns at ``flat``, +0 where ``outside`` (the padding), as ``F.pad`` gives."""
    out = take_columns(x, flat)
    return out if outside is None else out.masked_fill_(outside, 0.0)


def patch_rows(x: torch.Tensor, src: torch.Tensor, taps: int) -> torch.Tensor:
    """Source columns ``x`` (C, N) -> the patch matrix (K, C * taps) a convolution's weight (C, k, k order) is
    applied to: row i, column c * taps + t holds ``x[c, src[t * K + i]]``, 0 where the source is -1 (padding, or a
    map cell no column holds). One compiled pass for CPU tensors (the same values as gathering, masking and
    transposing)."""
    k = src.numel() // taps
    if x.device.type != "cpu" or x.dtype not in (torch.float64, torch.float32) or x.requires_grad:
        return gather_columns(x, src.clamp(min=0), src < 0).view(x.shape[0] * taps, k).T
    return torch.from_numpy(_patch_rows(x.numpy(), src.view(taps, k).numpy()))


@kernel()
def _patch_rows(x: np.ndarray, src: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    c_in, (taps, k) = x.shape[0], src.shape
    out = np.empty((k, c_in * taps), x.dtype)
    for i in range(k):
        for c in range(c_in):
            for t in range(taps):
                j = src[t, i]
                out[i, c * taps + t] = x[c, j] if j >= 0 else 0.0
    return out


def _linear(conv: nn.Conv2d, rows: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
    """(N, C_in k k) patches -> (C_out, N): the convolution's weights applied, then the element-wise ``act`` if
    given; exactly for fixed-point inputs (one compiled pass after the product)."""
    if rows.dtype == torch.float64:
        w, b = exact.scaled_params(conv)
        return exact.activations_from_rows(F.linear(rows, w, b), act)
    out = F.linear(rows, exact.effective_weight(conv).reshape(conv.out_channels, -1), conv.bias).T
    return out if act is None else act(out)


def _product(conv: nn.Conv2d, x: torch.Tensor, src: torch.Tensor | None, taps: int, act: nn.Module | None):
    """The convolution's weights applied to the patches (``patch_rows``) of the columns ``x`` (C, N) (``src``
    None: to the columns themselves) -> (C_out, K), then ``act``; large fixed-point products as integer digit
    products (``intgemm``: the same values)."""
    k = x.shape[1] if src is None else src.numel() // taps
    if intgemm.usable(x, k, x.shape[0] * taps, conv.out_channels, taps):
        acc = intgemm.linear_at(conv, x, src, taps)
        if acc is not None:
            return exact.activations_from_rows(acc, act)
    if src is None and x.dtype == torch.float64:  # columns in, columns out: no transposed operand
        w, b = exact.scaled_params(conv)
        return exact.affine_activations(w, x, b, act)
    return _linear(conv, x.T if src is None else patch_rows(x, src, taps), act)


def accumulate(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 exact layer's accumulator on fixed-point columns (C_in, N) -> (C_out, N), bias included, before
    ``exact.floor_activations``: integer digit products where they pay (``intgemm``), else one float64 product."""
    if intgemm.usable(x, x.shape[1], x.shape[0], conv.out_channels, 1):
        acc = intgemm.linear_at(conv, x, None, 1)
        if acc is not None:
            return acc.T
    w, b = exact.scaled_params(conv)
    return exact.affine_columns(w, x, b)


def activate(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An element-wise module (exactly, for fixed-point inputs)."""
    return exact.activation(module, x) if x.dtype == torch.float64 else module(x)


def affine(conv: nn.Conv2d, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
    """A 1x1 convolution applied to columns: (C_in, N) -> (C_out, N), then the element-wise ``act`` if given."""
    return _product(conv, x, None, 1, act)


def zero_input(conv: nn.Conv2d, act: nn.Module | None = None) -> torch.Tensor:
    """A 1x1 exact layer's output (then ``act``) for an input of zeros, (C_out, 1): what every cell whose input is 0
    gives. Kept until the weights change: computing it reads the whole weight matrix for one column. Shared: copy it
    before writing into it."""
    build = lambda: affine(conv, torch.zeros(conv.in_channels, 1, dtype=torch.float64), act)  # noqa: E731
    return cached(conv, f"zero_input_{type(act).__name__}", exact.weight_tensors(conv), build)


def affine_parts(conv: nn.Conv2d, split: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 1x1 convolution's exact weights (``exact.scaled_params``) split at input channel ``split`` -> (weights of
    the first inputs (out, split), of the others, bias). Applied to the two input blocks apart and summed before
    ``exact.floor_activations`` they give exactly what ``affine`` of the concatenation gives (every partial sum is
    an integer below 2**53 times the output's power of two), so a block that is all zeros can be left out and one
    shared by several steps computed once."""

    def build():
        w, b = exact.scaled_params(conv)
        return w[:, :split].contiguous(), w[:, split:].contiguous(), b

    return cached(conv, f"parts{split}", lambda: exact.weight_tensors(conv), build)


class Columns(NamedTuple):
    """A sparse map: ``values`` (C, K) at raster positions ``at`` of a map of ``size``, 0 elsewhere; what a stack
    passes from one layer to the next without painting a whole map."""

    values: torch.Tensor
    at: torch.Tensor
    size: tuple[int, int]


def _shape(x: torch.Tensor | Columns) -> tuple[int, int, int]:
    return (x.values.shape[0], *x.size) if isinstance(x, Columns) else tuple(x.shape[1:])


def _lookup(x: Columns) -> torch.Tensor:
    """The column of ``x`` that holds each map position, -1 where the map is 0."""
    lookup = torch.full((x.size[0] * x.size[1],), -1, dtype=torch.long)
    lookup[x.at] = torch.arange(x.at.numel())
    return lookup


def values_at(x: torch.Tensor | Columns, idx: torch.Tensor) -> torch.Tensor:
    """A map (1, C, H, W) or ``Columns`` -> (C, K): the values at raster positions ``idx``."""
    if not isinstance(x, Columns):
        return columns(x, idx)
    return patch_rows(x.values, _lookup(x)[idx], 1).T


def conv_at(
    conv: nn.Conv2d, x: torch.Tensor | Columns, idx: torch.Tensor, memo: dict | None = None,
    act: nn.Module | None = None,
) -> torch.Tensor:  # fmt: skip
    """An (ungrouped, square, symmetrically padded) convolution of ``x`` (1, C, H, W), or of the sparse map
    ``Columns``, evaluated at raster positions ``idx`` of its output only -> (C_out, K), as one matrix product over
    the gathered patches; then the element-wise ``act`` if given."""
    k, s, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if conv.groups != 1 or conv.kernel_size != (k, k) or conv.stride != (s, s) or conv.padding != (pad, pad):
        raise ValueError("only ungrouped, square convolutions can be evaluated at positions")
    c, h, w = _shape(x)
    sparse = isinstance(x, Columns)
    if k == 1 and s == 1 and pad == 0 and not sparse:
        return affine(conv, columns(x, idx), act)

    def sources():  # (k * k * K): the source column of each tap, -1 for the padding and the map's zeros
        at = x.at.numpy() if sparse else np.empty(0, np.int64)
        src = _conv_sources(idx.numpy(), at, sparse, h, w, (w + 2 * pad - k) // s + 1, k, s, pad)
        return (x.at if sparse else None, torch.from_numpy(src))

    key = ("conv", k, s, pad, h, w, id(x.at) if sparse else None)
    src = memoized(memo, key, idx, sources)[1]  # the sources' positions are held with them
    return _product(conv, x.values if sparse else x.reshape(c, -1), src, k * k, act)  # the weight's (C, k, k) order


@kernel()
def _conv_sources(idx, at, sparse, h, w, w_out, k, s, pad):  # pragma: no cover - compiled
    """``conv_at``'s sources in one pass: for tap t and output position ``idx[i]`` (in a map ``w_out`` wide), entry
    t K + i is the column the tap reads: -1 outside the h x w input (the padding); for a sparse input (columns at
    ``at``) the column that holds the position, -1 where none does (the map's zeros); else the raster position."""
    n = idx.shape[0]
    lookup = np.full(h * w if sparse else 0, -1, np.int64)
    for j in range(at.shape[0]):
        lookup[at[j]] = j
    src = np.empty(k * k * n, np.int64)
    for t in range(k * k):
        dr, dc = t // k - pad, t % k - pad
        for i in range(n):
            r, c = idx[i] // w_out * s + dr, idx[i] % w_out * s + dc
            if r < 0 or r >= h or c < 0 or c >= w:
                src[t * n + i] = -1
            else:
                src[t * n + i] = lookup[r * w + c] if sparse else r * w + c
    return src


def stack_at(
    layers: nn.Sequential, x: torch.Tensor | Columns, idx: torch.Tensor, memo: dict | None = None
) -> torch.Tensor:
    """A stack of stride-1 "same" convolutions and element-wise activations applied to ``x`` (1, C, H, W) or the
    sparse map ``Columns``, evaluated at raster positions ``idx`` only -> (C_out, K). Each convolution runs only
    where a later one reads it (the positions dilated by the later kernels' radii), so a sparse set of coded cells
    costs in proportion to its size."""
    _, h, w = _shape(x)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]

    def need_at() -> dict[int, torch.Tensor]:  # each convolution's positions
        need = {convs[-1]: idx}
        cells = cell_map(idx, (h, w))
        for a, b in zip(reversed(convs[:-1]), reversed(convs[1:]), strict=True):
            r = layers[b].kernel_size[0] // 2
            if r:
                cells = F.max_pool2d(cells, 2 * r + 1, 1, r)
            need[a] = positions(cells) if r else need[b]
        return need

    need = memoized(memo, ("stack", h, w, *(layers[i].kernel_size[0] for i in convs)), idx, need_at)
    out, prev, applied = None, None, False  # columns at need[prev]; whether the next module was applied with them
    for i, m in enumerate(layers):
        if not isinstance(m, nn.Conv2d):
            out, applied = out if applied else activate(m, out), False
            continue
        act = layers[i + 1] if i + 1 < len(layers) and not isinstance(layers[i + 1], nn.Conv2d) else None
        if prev is not None and m.kernel_size == (1, 1):  # reads the columns it is given (need[prev] = need[i])
            out = affine(m, out, act)
        else:
            out = conv_at(m, x if prev is None else Columns(out, need[prev], (h, w)), need[i], memo, act)
        prev, applied = i, act is not None
    return out


def radius(layers: nn.Module) -> int:
    """How many cells around an output cell a stack of stride-1 "same" convolutions, element-wise modules and
    residual blocks reads."""
    if isinstance(layers, nn.Conv2d):
        return layers.kernel_size[0] // 2
    return sum(radius(m) for m in layers.children())


def dilated(idx: torch.Tensor, size: tuple[int, int], r: int) -> torch.Tensor:
    """Raster positions within ``r`` cells (Chebyshev distance) of ``idx`` in a map of ``size``: what a (2r+1)-wide
    stack reads to give its outputs at ``idx``. ``idx`` itself when ``r`` is 0."""
    return idx if not r else positions(F.max_pool2d(cell_map(idx, size), 2 * r + 1, 1, r))


def trunk_positions(layers: nn.Sequential, idx: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
    """Where each layer of a ``trunk_at`` stack is evaluated so that its output is known at raster positions ``idx``
    of a map of ``size``: the positions dilated, from the last layer back, by the radius of the layers after each."""
    need = [idx]  # need[i]: where layer i's output is read, built from the last layer back
    for m in reversed(layers[1:]):
        need.append(dilated(need[-1], size, radius(m)))
    return need[::-1]


def trunk_at(
    layers: nn.Sequential, x: torch.Tensor | Columns, idx: torch.Tensor, need: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """``stack_at`` for a stack that also holds residual blocks (modules with a ``body`` stack whose output is
    added to their input; clamped for fixed-point inputs, as the whole-map exact path does): ``x`` (1, C, H, W), or
    the sparse map ``Columns`` -> (C_out, K) at raster positions ``idx``, each part run only where a later part reads
    it (``need``: ``trunk_positions``, when the caller has them; sparse ``x`` whose columns are ``need[0]`` itself
    goes straight into a first 1x1 layer)."""
    size = x.size if isinstance(x, Columns) else tuple(x.shape[-2:])
    need = trunk_positions(layers, idx, size) if need is None else need
    fixed = (x.values if isinstance(x, Columns) else x).dtype == torch.float64
    memo = {}  # a block's body reads the positions its input was just built at: their sources are found once
    out, at = (x.values, x.at) if isinstance(x, Columns) else (None, None)  # the last output's columns, positions
    for m, where in zip(layers, need, strict=True):
        src = x if out is None else Columns(out, at, size)
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and at is where:
            out = affine(m, out)
        elif isinstance(m, nn.Conv2d):
            out = conv_at(m, src, where, memo)
        elif hasattr(m, "body"):
            out = values_at(src, where) + stack_at(m.body, src, where, memo)
            out = out.clamp_(-exact.ACT_LIMIT, exact.ACT_LIMIT) if fixed else out
        else:
            out = activate(m, columns(x, where) if out is None else out)  # reads where it writes (``where is at``)
        at = where
    return out
