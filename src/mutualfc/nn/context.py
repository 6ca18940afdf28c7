"""The checkerboard context convolution (masked, one input channel per group) evaluated at the coded cells only.

Its taps, weights and each cell's sources are separate steps (``context_weights``, ``context_sources``), so that the
channel groups' coding steps (``latent_codecs.group_pass``) can call the compiled convolution (``grouped_context``)
directly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from mutualfc.nn import exact, intgemm
from mutualfc.nn.caching import cached, memoized
from mutualfc.nn.kernels import kernel
from mutualfc.nn.sparse import cell_map, gather_columns


def _map_positions(rows: torch.Tensor, cols: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raster indices of map cells (rows, cols), clamped into an h x w map, and a mask of those outside it (None when
    none is): what a zero-padded convolution reads, without padding the map."""
    outside = (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)
    flat = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)
    return flat, outside if bool(outside.any()) else None


def _sources(flat: torch.Tensor, outside: torch.Tensor | None) -> torch.Tensor:
    """Map positions ``flat`` -> the raster index each reads, -1 where ``outside`` the map (the padding)."""
    return flat if outside is None else flat.masked_fill(outside, -1)


class ContextSources(NamedTuple):
    """Where a context convolution at K cells reads: the map positions of its (K, taps) reads (clamped into the map)
    and those outside it (None if none), the source of each read (-1 outside), and whether each map position may
    be nonzero (bool, H W)."""

    flat: torch.Tensor
    outside: torch.Tensor | None
    src: torch.Tensor
    live: np.ndarray


class ContextWeights(NamedTuple):
    """The kernel offsets any output of a context convolution uses (``key``: the same as a tuple) and its weights
    there, (C, out per group, taps)."""

    taps: torch.Tensor
    weights: torch.Tensor
    key: tuple[int, ...]


def context_weights(conv: nn.Conv2d, fixed: bool) -> ContextWeights:
    """The exact weights (``exact.scaled_params``) for fixed-point inputs, else the effective float ones, at the
    taps the mask does not zero (those are never read)."""
    c = conv.groups
    if conv.weight.shape[1] != 1:
        raise ValueError("context convolution must have one input channel per group")

    def build():
        weight = exact.scaled_params(conv)[0] if fixed else exact.effective_weight(conv)
        taps = weight.flatten(1).abs().sum(0).nonzero().squeeze(1)
        wt = weight.flatten(1)[:, taps].reshape(c, -1, taps.numel()).contiguous()
        return ContextWeights(taps, wt, tuple(taps.tolist()))

    key = tuple(t for t in (conv.weight, exact.conv_mask(conv)) if t is not None)
    return cached(conv, f"taps{int(fixed)}", key, build)


def context_sources(
    conv: nn.Conv2d, size: tuple[int, int], idx: torch.Tensor, taps: ContextWeights, memo: dict | None = None,
    nonzero: torch.Tensor | None = None,
) -> ContextSources:  # fmt: skip
    """The reads of ``conv`` (``taps``: its ``context_weights``) at raster positions ``idx`` of a map of ``size``
    (kept in ``memo`` for the next group: every group reads at the same cells); ``nonzero``: the raster positions
    off which the map is 0."""
    h, w = size
    k, pad, offsets = conv.kernel_size[0], conv.padding[0], taps.taps

    def build():
        live = np.ones(h * w, np.bool_)
        if idx.device.type == "cpu" and idx.dtype == offsets.dtype == torch.int64:  # one compiled pass
            flat, outside, src, any_outside = _reads(idx.contiguous().numpy(), offsets.numpy(), k, pad, h, w)
            if nonzero is not None:
                live = _live(nonzero.contiguous().numpy(), h * w)
            flat, src = torch.from_numpy(flat), torch.from_numpy(src)
            outside = torch.from_numpy(outside) if any_outside else None
            return ContextSources(flat, outside, src.view(-1, offsets.numel()), live), nonzero
        r, col = idx // w, idx % w
        rows = (r.view(-1, 1) + offsets // k - pad).reshape(-1)
        cols = (col.view(-1, 1) + offsets % k - pad).reshape(-1)
        flat, outside = _map_positions(rows, cols, h, w)
        if nonzero is not None:
            live = cell_map(nonzero, size).view(-1).bool().numpy()
        return ContextSources(flat, outside, _sources(flat, outside).view(-1, offsets.numel()), live), nonzero

    key = ("context", k, pad, h, w, *taps.key, None if nonzero is None else id(nonzero))
    return memoized(memo, key, idx, build)[0]


@kernel()
def _reads(idx, offsets, k, pad, h, w):  # pragma: no cover - compiled
    """``context_sources``' reads: for each position and tap, the map position clamped into the map, whether it
    is outside (all flat, position-major), the source (-1 outside) and whether any is outside."""
    n, t = idx.shape[0], offsets.shape[0]
    flat, src = np.empty(n * t, np.int64), np.empty(n * t, np.int64)
    outside = np.zeros(n * t, np.bool_)
    any_outside = False
    for i in range(n):
        r0, c0 = idx[i] // w - pad, idx[i] % w - pad
        for j in range(t):
            r, c = r0 + offsets[j] // k, c0 + offsets[j] % k
            out = r < 0 or r >= h or c < 0 or c >= w
            at = min(max(r, 0), h - 1) * w + min(max(c, 0), w - 1)
            flat[i * t + j], src[i * t + j], outside[i * t + j] = at, -1 if out else at, out
            any_outside |= out
    return flat, outside, src, any_outside


@kernel()
def _live(nonzero, n):  # pragma: no cover - compiled
    live = np.zeros(n, np.bool_)
    for i in range(nonzero.shape[0]):
        live[nonzero[i]] = True
    return live


def context_at(
    conv: nn.Conv2d, x: torch.Tensor, idx: torch.Tensor, memo: dict | None = None, nonzero: torch.Tensor | None = None
) -> torch.Tensor:
    """A (masked, grouped, one input channel per group) context convolution of ``x`` (1, C, H, W) evaluated at
    raster positions ``idx`` only -> (C_out, K): the taps the mask zeroes are not read at all, nor (fixed point)
    the positions outside ``nonzero`` (raster positions off which ``x`` is 0: a map of the coded cells)."""
    c, h, w = x.shape[1:]
    if conv.groups != c:
        raise ValueError("context convolution must have one input channel per group")
    fixed = x.dtype == torch.float64
    taps, wt, _ = weights = context_weights(conv, fixed)
    reads = context_sources(conv, (h, w), idx, weights, memo, nonzero)
    if fixed and x.device.type == "cpu" and not intgemm.counting():  # one compiled pass: gather, products, floor
        b = exact.scaled_params(conv)[1]
        return torch.from_numpy(grouped_context(x.reshape(c, -1).numpy(), reads.src.numpy(), reads.live, wt.numpy(),
                                                b.numpy(), exact.ACT_LIMIT)).T  # fmt: skip
    patches = gather_columns(x.reshape(c, -1), reads.flat, reads.outside).view(c, -1, taps.numel())  # (C, K, taps)
    acc = torch.bmm(wt, patches.transpose(1, 2)).reshape(-1, idx.numel())
    if fixed:
        return exact.floor_activations(acc.add_(exact.scaled_params(conv)[1].view(-1, 1)))
    return acc + conv.bias.view(-1, 1)


@kernel()
def grouped_context(x, src, live, wt, bias, limit):  # pragma: no cover - compiled
    """``context_at``'s fixed-point path: x (C, N) read at ``src`` (K, taps; -1 reads 0, as does a position that
    is not ``live``), weights (C, O, taps) -> floor(sum + bias), clamped, as rows (K, C O). Each cell's live taps
    are listed first, so the products loop over those only. Exact: every partial sum is an integer times the
    output's power of two, below 2**53 (``exact.scaled_params``), whatever the order."""
    c_in, per, taps = wt.shape
    k = src.shape[0]
    out = np.empty((k, c_in * per))
    tap, pos = np.empty(taps, np.int64), np.empty(taps, np.int64)
    for i in range(k):
        n = 0
        for t in range(taps):
            j = src[i, t]
            if j >= 0 and live[j]:
                tap[n], pos[n] = t, j
                n += 1
        for c in range(c_in):
            for o in range(per):
                s = bias[c * per + o]
                for m in range(n):
                    s += wt[c, o, tap[m]] * x[c, pos[m]]
                out[i, c * per + o] = min(max(np.floor(s), -limit), limit)
    return out
