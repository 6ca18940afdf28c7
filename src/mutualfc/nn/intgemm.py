"""Exact layers as integer matrix products: int8 digits through ``torch._int_mm`` (int32 sums), recombined in int64.

An exact layer (``mutualfc.nn.exact``) multiplies fixed-point integers by integer weights; in float64 every partial
sum is exact, and so is any other way of forming the same integer sum. Splitting each activation into balanced
base-256 digits (-128..127) and each 12-bit weight into two, every digit product sums to at most
fan-in * 2**14 < 2**31 in int32, exactly, in any order; one ``_int_mm`` of both weight digits (stacked as rows) by
all activation digits (stacked as columns) gives them all. The recombined sum is the same integer as the float64
product, so the layer's output is the same whichever path runs, on every machine: which one runs may depend on the
shape and the values (the number of digits follows the largest activation).
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch
from torch import nn

from mutualfc.nn import exact
from mutualfc.nn.caching import cached
from mutualfc.nn.kernels import kernel

MIN_FAN_IN = 256  # below this, a float64 product is about as fast as the digit products and their recombination
MIN_MACS = 1 << 20
MIN_REUSE = 1024  # outputs times taps each activation's digits serve: fewer do not repay splitting it
_HAS_INT_MM = hasattr(torch, "_int_mm")
_state = threading.local()


@contextlib.contextmanager
def float64_products():
    """Within it (this thread), every exact product runs as the float64 product: what a MAC counter sees as one
    product per multiply-accumulate of the layer (the digit products are one implementation of the same MACs)."""
    before = getattr(_state, "off", False)
    _state.off = True
    try:
        yield
    finally:
        _state.off = before


def counting() -> bool:
    """Whether this thread is inside ``float64_products``: then every exact product must run as a torch product
    (what a MAC counter sees), not as a compiled kernel or digit products."""
    return getattr(_state, "off", False)


def usable(x: torch.Tensor, rows: int, fan_in: int, out: int, taps: int) -> bool:
    """Whether ``linear_at`` is worth trying for ``rows`` patches of ``fan_in`` values (``taps`` reads of each
    column of ``x``) times ``out`` outputs: float64 on the CPU, a large product, and each activation's digits
    used often enough (by taps times outputs) to repay splitting it."""
    return (
        _HAS_INT_MM
        and not counting()
        and x.dtype == torch.float64
        and x.device.type == "cpu"
        and not x.requires_grad
        and fan_in >= MIN_FAN_IN
        and out * taps >= MIN_REUSE
        and rows * fan_in * out >= MIN_MACS
    )


def digit_weights(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer's integer weights (``exact.int_params``), inputs in (tap, channel) order, as two balanced base-256
    digits stacked, (2 out, taps C_in) int8 (low digits first), with its integer bias and per-output scale
    (float64, (out,))."""

    def build():
        w, b, inv = exact.int_params(conv)
        w = w.permute(0, 2, 3, 1).flatten(1).long()  # (tap, channel) order; |w| < 2**(WEIGHT_BITS - 1): two digits
        low = (w + 128) % 256 - 128
        high = (w - low) // 256
        if int(high.abs().max()) > 127:
            raise ValueError(f"weights over two digits: {int(w.abs().max())}")
        digits = torch.cat([low, high]).to(torch.int8).contiguous()
        return digits, b.reshape(-1).contiguous(), inv.reshape(-1).contiguous()

    return cached(conv, "digit_weights", exact.weight_tensors(conv), build)


def linear_at(conv: nn.Conv2d, x: torch.Tensor, src: torch.Tensor | None, taps: int) -> torch.Tensor | None:
    """``F.linear(patch_rows(x, src, taps), *exact.scaled_params(conv))`` for fixed-point source columns ``x``
    (C, N) -> (K, out), the same float64 values, through integer products (``src`` None: the columns themselves,
    one tap); None where a value of ``x`` is not an integer or needs more than four digits (the caller's float64
    product then gives the same values)."""
    if src is None:
        src = torch.arange(x.shape[1])
    k = src.numel() // taps
    digits, count = _patch_digits(x.numpy(), src.view(taps, k).numpy())
    if count == 0:
        return None
    w, b, inv = digit_weights(conv)
    rows = torch.from_numpy(digits)
    by_outputs = rows.shape[0] < w.shape[0]  # oneDNN re-lays out the second operand on every call: the smaller one
    try:
        products = torch._int_mm(w, rows.T) if by_outputs else torch._int_mm(rows, w.T)
    except (RuntimeError, NotImplementedError):  # a build without the CPU kernel: float64 from now on
        global _HAS_INT_MM
        _HAS_INT_MM = False
        return None
    return torch.from_numpy(_recombine(products.numpy(), by_outputs, count, k, b.numpy(), inv.numpy()))


@kernel()
def _digit_count(x: np.ndarray) -> int:  # pragma: no cover - compiled
    """The fewest balanced base-256 digits that hold every value of ``x`` (2-D), 0 when one is not an integer or
    needs more than four (one pass of integer reductions, which the compiler vectorises)."""
    peak, odd = np.int64(0), False
    for c in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[c, j]
            iv = np.int64(v) if abs(v) < 2.0**40 else np.int64(2**40)  # NaN: 2**40, and ``odd``
            odd |= np.float64(iv) != v
            peak = max(peak, abs(iv))
    if odd:
        return 0
    bound = 127
    for d in range(4):
        if peak <= bound:
            return d + 1
        bound = bound * 256 + 127
    return 0


@kernel()
def _patch_digits(x: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, int]:  # pragma: no cover - compiled
    """``patch_rows``' matrix (K, C taps), its columns in (tap, channel) order, as balanced base-256 digits of its
    values: (D K, taps C) int8, digit d in rows d K..(d+1) K - 1, 0 where the source is -1; D, the fewest digits
    that hold max |x|, or 0 when a value of ``x`` is not an integer or needs more than four digits."""
    c_in, n = x.shape
    taps, k = src.shape
    count = _digit_count(x)
    if count == 0:
        return np.empty((0, c_in * taps), np.int8), 0
    dx = np.empty((count, n, c_in), np.int8)  # each position's channels side by side: a tap copies C bytes
    for start in range(0, n, 32):  # a transpose, in tiles of 32 positions whose rows stay in the cache
        for c in range(c_in):
            if count == 2:  # the usual count, without the digit loop
                for j in range(start, min(start + 32, n)):
                    v = np.int64(x[c, j])
                    low = ((v + 128) & 255) - 128
                    dx[0, j, c] = low
                    dx[1, j, c] = (v - low) >> 8
                continue
            for j in range(start, min(start + 32, n)):
                v = np.int64(x[c, j])
                for d in range(count):
                    digit = ((v + 128) & 255) - 128
                    dx[d, j, c] = digit
                    v = (v - digit) >> 8
    out = np.empty((count * k, taps * c_in), np.int8)
    for d in range(count):
        for i in range(k):
            for t in range(taps):
                j, row, col = src[t, i], d * k + i, t * c_in
                if j >= 0:
                    for c in range(c_in):
                        out[row, col + c] = dx[d, j, c]
                else:
                    for c in range(c_in):
                        out[row, col + c] = 0
    return out, count


@kernel()
def _recombine(p, by_outputs, count, n, bias, inv):  # pragma: no cover - compiled
    """Digit products, (2 out, count N) (``by_outputs``) or (count N, 2 out) int32 -> (sum + bias) * scale, (N, out)
    float64: exact (the int64 sum is the float64 product's integer, below 2**53 by the exact layers' bounds; the
    scale is a power of two)."""
    out_channels = bias.shape[0]
    acc = np.empty((n, out_channels))
    if by_outputs:  # each loop over the cells runs along contiguous rows
        col = np.empty(n, np.int64)
        for o in range(out_channels):
            col[:] = 0
            for d in range(count - 1, -1, -1):
                for i in range(n):
                    col[i] = col[i] * 256 + np.int64(p[out_channels + o, d * n + i]) * 256 + np.int64(p[o, d * n + i])
            for i in range(n):
                acc[i, o] = (np.float64(col[i]) + bias[o]) * inv[o]
        return acc
    row = np.empty(out_channels, np.int64)
    for i in range(n):  # each loop over the outputs runs along contiguous rows
        row[:] = 0
        for d in range(count - 1, -1, -1):
            r = d * n + i
            for o in range(out_channels):
                row[o] = row[o] * 256 + np.int64(p[r, out_channels + o]) * 256 + np.int64(p[r, o])
        for o in range(out_channels):
            acc[i, o] = (np.float64(row[o]) + bias[o]) * inv[o]
    return acc
