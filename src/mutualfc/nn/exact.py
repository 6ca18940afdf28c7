"""Exact arithmetic for everything a decoder computes: fixed-point integers, so that every machine decodes alike.

Values are integers held in float64 tensors (``x_int = x * 2**bits``). A layer's weights are rounded to integers of at
most ``WEIGHT_BITS`` bits with one power-of-two exponent per output channel, its bias to the accumulator's scale; a
matrix product of such integers is exact in float64 whatever the summation order, blocking or instruction set, as long
as every partial sum stays below 2**53, which the clamps below guarantee (``|activation| <= 2**ACT_BOUND_BITS``,
``|weight| < 2**WEIGHT_BITS``, at most ``2**FAN_IN_BITS`` terms). The accumulator is brought back to the activation
scale by a power-of-two division and ``floor(x + 1/2)``, both exact. GELU is a table of integers (hash-checked: a
platform whose ``erf`` would give another table refuses to decode rather than decode differently).
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mutualfc.errors import BitstreamError
from mutualfc.nn.caching import cached
from mutualfc.nn.kernels import kernel

ACT_BITS = 8  # fractional bits of the entropy model's activations, entropy parameters and decoded latents
WEIGHT_BITS = 12  # |integer weight| < 2**12
FAN_IN_BITS = 12  # at most 4096 terms per output
ACT_BOUND_BITS = 53 - WEIGHT_BITS - FAN_IN_BITS - 1  # 28: every sum of products stays below 2**53
ACT_LIMIT = float(2**ACT_BOUND_BITS - 1)

_GELU_RANGE = 8  # GELU(x) = x above, 0 below -8 (to within 1e-14)
_GELU_SHA256 = "f864efdb302712f4e06ca9f314d44ea5d9e050847ddbb96618402999d947f8bb"
_GELU_TABLE: torch.Tensor | None = None
_GELU_GAP: torch.Tensor | None = None
_GELU_GAP_ARRAY: np.ndarray | None = None


def gelu_table() -> torch.Tensor:
    """round(GELU(k / 256) * 256) for k in [-8 * 256, 8 * 256), as float64 integers (built once, hash-checked)."""
    global _GELU_TABLE
    if _GELU_TABLE is None:
        s = 2**ACT_BITS
        ks = range(-_GELU_RANGE * s, _GELU_RANGE * s)
        vals = np.asarray([round(0.5 * (k / s) * (1 + math.erf(k / s / math.sqrt(2))) * s) for k in ks], np.int64)
        if hashlib.sha256(vals.tobytes()).hexdigest() != _GELU_SHA256:
            raise BitstreamError("this platform's erf gives another GELU table than the one the format specifies")
        _GELU_TABLE = torch.from_numpy(vals.astype(np.float64))
    return _GELU_TABLE


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU of fixed-point integers (``ACT_BITS``), exactly: ``c - gap[c]`` for ``c = max(x, -8 * 256)``, where
    ``gap[k] = k - table[k]`` inside [-8, 8): the table's first entry is 0 (GELU is 0 below -8, and ``c - gap`` gives
    it there) and its last is 8 * 256 - 1 (its gap is 0, so that ``x`` itself comes out from 8 up). One compiled
    pass over the values (the same integers as ``gelu_reference``, the tensor operations it replaces)."""
    if x.dtype != torch.float64 or x.device.type != "cpu" or not (x.dim() == 2 or x.is_contiguous()):
        return gelu_reference(x)
    rows = x if x.dim() == 2 else x.view(1, -1)  # columns (any strides), or a contiguous map as one row
    return torch.from_numpy(_gelu_columns(rows.numpy(), _gelu_gap_array(), -_GELU_RANGE * 2**ACT_BITS)).view(x.shape)


def gelu_reference(x: torch.Tensor) -> torch.Tensor:
    """``gelu`` as tensor operations (any device)."""
    s = 2**ACT_BITS
    lo, hi = -_GELU_RANGE * s, _GELU_RANGE * s
    c = x.clamp(min=lo)
    return c.sub_(torch.take(_gelu_gap().to(x.device), c.clamp(max=hi - 1).long().sub_(lo)))


@kernel(inline=True)
def _gelu_value(v: float, gap: np.ndarray, lo: int) -> float:  # pragma: no cover - compiled
    """``gelu`` of one value (``gap`` starts at ``lo``)."""
    c = max(v, lo)
    return c - gap[int(min(c, lo + gap.shape[0] - 1)) - lo]


@kernel()
def _gelu_columns(x: np.ndarray, gap: np.ndarray, lo: int) -> np.ndarray:  # pragma: no cover - compiled
    out = np.empty(x.shape)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = _gelu_value(x[i, j], gap, lo)
    return out


def _gelu_gap() -> torch.Tensor:
    global _GELU_GAP, _GELU_GAP_ARRAY
    if _GELU_GAP is None:
        s = 2**ACT_BITS
        _GELU_GAP = torch.arange(-_GELU_RANGE * s, _GELU_RANGE * s, dtype=torch.float64) - gelu_table()
        _GELU_GAP_ARRAY = _GELU_GAP.numpy()
    return _GELU_GAP


def _gelu_gap_array() -> np.ndarray:
    """``_gelu_gap`` as the array the compiled kernels read."""
    if _GELU_GAP_ARRAY is None:
        _gelu_gap()
    return _GELU_GAP_ARRAY


def activation(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An element-wise module of an entropy-model stack, on fixed-point integers."""
    if isinstance(module, nn.GELU):
        return gelu(x)
    if isinstance(module, nn.Identity):
        return x
    raise ValueError(f"no exact form of {type(module).__name__}")


def conv_mask(conv: nn.Conv2d) -> torch.Tensor | None:
    """The mask buffer of a masked convolution (CompressAI's ``MaskedConv2d``), None for a plain one (a buffer
    look-up: ``hasattr`` on a module goes through a raised ``AttributeError``, slow on this hot path)."""
    return conv._buffers.get("mask")


def effective_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The weight a (possibly masked) convolution applies."""
    mask = conv_mask(conv)
    return conv.weight if mask is None else conv.weight * mask


def int_params(conv: nn.Conv2d, bits: int = ACT_BITS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> integer weight (float64, the weight's shape), integer bias at the accumulator's scale plus the rounding
    offset (see ``int_weights``), and the per-output scale 2**-e that brings the accumulator back to activations
    with ``bits`` fractional bits. Deterministic: scaling by powers of two and rounding are exact operations on the
    stored float32 values."""
    build = lambda: int_weights(effective_weight(conv), conv.bias, bits)  # noqa: E731
    return cached(conv, f"int_params{bits}", weight_tensors(conv), build)


def scaled_params(conv: nn.Conv2d, bits: int = ACT_BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """``int_params`` with each output's scale folded in: weights ``w_int * 2**-e`` (out, in * kh * kw) and bias
    ``b_int * 2**-e``, so that a layer is ``floor_activations(x @ w.T + b)``: the same integers as ``requantize``
    with one pass less. Exact: every product is the integer ``x * w_int`` times the output's power of two, and every
    partial sum its integer partial sum (below 2**53) times the same power, so float64 holds each one exactly in
    any summation order (the smallest power is 2**-71, far above the subnormals)."""

    def build():
        w, b, inv = int_params(conv, bits)
        return (w.flatten(1) * inv).contiguous(), b * inv.view(-1)

    return cached(conv, f"scaled_params{bits}", lambda: weight_tensors(conv), build)


def floor_activations(acc: torch.Tensor) -> torch.Tensor:
    """An accumulator of ``scaled_params`` (bias and rounding offset included) -> activations: floor, clamped; in
    place."""
    return acc.floor_().clamp_(-ACT_LIMIT, ACT_LIMIT)


def activations_from_rows(acc: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
    """``activation(act, floor_activations(acc.T))`` for an accumulator of rows (N, out) (what ``F.linear`` gives)
    -> activations as columns (out, N), contiguous, in one compiled pass. ``act``: GELU, Identity or None."""
    gelu = isinstance(act, nn.GELU)
    if not (gelu or act is None or isinstance(act, nn.Identity)):
        raise ValueError(f"no exact form of {type(act).__name__}")
    if acc.dim() != 2 or acc.device.type != "cpu":
        out = floor_activations(acc.T.clone())
        return gelu_reference(out) if gelu else out
    lo = -_GELU_RANGE * 2**ACT_BITS
    return torch.from_numpy(_floor_rows(acc.numpy(), _gelu_gap_array(), lo, ACT_LIMIT, gelu))


@kernel()
def _floor_rows(acc: np.ndarray, gap: np.ndarray, lo: int, limit: float, gelu: bool) -> np.ndarray:  # pragma: no cover
    out = np.empty((acc.shape[1], acc.shape[0]))
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            v = min(max(np.floor(acc[i, j]), -limit), limit)
            out[j, i] = _gelu_value(v, gap, lo) if gelu else v
    return out


def affine_columns(w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``w @ x + bias`` for columns ``x`` (in, N) and a bias (out,) or (out, 1): exact for the exact layers' integers
    (every partial sum below 2**53, the bias added to exact sums). The product, then the bias: ``addmm``'s broadcast
    bias takes a slower path on the CPU at these shapes."""
    return torch.mm(w, x).add_(bias.view(-1, 1))


def affine_activations(w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, act: nn.Module | None) -> torch.Tensor:
    """``activations(affine_columns(w, x, bias), act)``: after the product, the bias, the floor, the clamp and
    ``act`` in one compiled pass on the CPU (the same float64 operations, so the same values)."""
    acc = torch.mm(w, x)
    known = act is None or isinstance(act, (nn.GELU, nn.Identity))  # else ``activations`` raises
    if acc.device.type != "cpu" or acc.dtype != torch.float64 or acc.requires_grad or not known:
        return activations(acc.add_(bias.view(-1, 1)), act)
    _biased_floor(acc.numpy(), bias.reshape(-1).numpy(), *activation_tables(), isinstance(act, nn.GELU))
    return acc


@kernel()
def _biased_floor(acc, bias, gap, lo, limit, gelu):  # pragma: no cover - compiled
    """``floor_flat`` of ``acc`` (out, N) plus each output's bias, in place."""
    for o in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            v = min(max(np.floor(acc[o, j] + bias[o]), -limit), limit)
            acc[o, j] = _gelu_value(v, gap, lo) if gelu else v


def activations(acc: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
    """``activation(act, floor_activations(acc))`` in place, for an accumulator in any layout (columns, as
    ``affine_columns`` gives them): one compiled pass for a contiguous CPU tensor."""
    gelu = isinstance(act, nn.GELU)
    if not (gelu or act is None or isinstance(act, nn.Identity)):
        raise ValueError(f"no exact form of {type(act).__name__}")
    if acc.device.type != "cpu" or not acc.is_contiguous() or acc.dtype != torch.float64:
        out = floor_activations(acc)
        return acc.copy_(gelu_reference(out)) if gelu else out
    floor_flat(acc.view(-1).numpy(), *activation_tables(), gelu)
    return acc


def activation_tables() -> tuple[np.ndarray, int, float]:
    """What ``floor_flat`` reads besides the values: the GELU table's gaps, its first fixed-point value and the
    activations' clamp."""
    return _gelu_gap_array(), -_GELU_RANGE * 2**ACT_BITS, ACT_LIMIT


@kernel()
def floor_flat(acc: np.ndarray, gap: np.ndarray, lo: int, limit: float, gelu: bool) -> None:  # pragma: no cover
    """``activations`` of a flat accumulator, in place (``activation_tables`` gives the other arguments)."""
    for i in range(acc.shape[0]):
        v = min(max(np.floor(acc[i]), -limit), limit)
        acc[i] = _gelu_value(v, gap, lo) if gelu else v


def weight_tensors(conv: nn.Conv2d) -> tuple[torch.Tensor, ...]:
    """The tensors a convolution's exact weights derive from (weight, bias, mask): the key of caches built on them."""
    params, mask = conv._parameters, conv_mask(conv)
    return tuple(t for t in (params["weight"], params.get("bias"), mask) if t is not None)


def int_weights(weight: torch.Tensor, bias: torch.Tensor | None, bits: int) -> tuple[torch.Tensor, ...]:
    """``int_params`` for a weight (out, ...) and a bias (out,) of any layer. The bias carries ``2**(e - 1)`` (for
    ``e >= 1``), so that ``requantize`` is a floor: ``floor((acc + 2**(e-1)) * 2**-e) = floor(acc * 2**-e + 1/2)``
    for every integer accumulator below 2**52 (both exact), and for ``e <= 0`` ``acc * 2**-e`` is already an
    integer. One operation less per layer, the same integers."""
    w = weight.detach().double()
    fan_in = w[0].numel()
    if fan_in > 2**FAN_IN_BITS:
        raise ValueError(f"fan-in {fan_in} over the exact limit of {2**FAN_IN_BITS}")
    bias = bias.detach().double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    _, w_exp = torch.frexp(w.flatten(1).abs().amax(1).clamp_min(2.0**-60))  # peak |w| < 2**w_exp
    _, b_exp = torch.frexp(bias.abs().clamp_min(1.0))  # |b| < 2**b_exp
    # |w * 2**e| < 2**(WEIGHT_BITS - 1) and |b * 2**(e + bits)| < 2**50: every sum stays below 2**53
    e = torch.minimum(WEIGHT_BITS - 1 - w_exp, 50 - bits - b_exp)
    scale = torch.pow(2.0, e.double())
    w_int = torch.round(w * scale.view(-1, *([1] * (w.dim() - 1))))
    b_int = torch.round(bias * scale * 2**bits) + torch.where(e >= 1, scale * 0.5, 0.0)  # < 2**50 + 2**41
    return w_int, b_int, (1.0 / scale).view(-1, 1)


def requantize(acc: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    """Accumulator (out, N) of integers at activation x weight scale, ``int_params``' bias (with its rounding offset)
    included -> activation scale: floor(acc * 2**-e + 1/2), clamped. ``inv_scale``: (out, 1). Works in place:
    ``acc`` is consumed. The layers fold the scale into their weights (``scaled_params``); this is the reference
    they are tested against."""
    return acc.mul_(inv_scale).floor_().clamp_(-ACT_LIMIT, ACT_LIMIT)


def to_fixed(x: torch.Tensor, bits: int = ACT_BITS) -> torch.Tensor:
    """Real values -> fixed-point integers (round half to even; exact for values already on the grid)."""
    return torch.round(x.double() * 2**bits).clamp_(-ACT_LIMIT, ACT_LIMIT)


WIDE_SPLIT = 12  # wide weights: two float64 products of 12-bit halves, combined in int64
_FLOAT_EXACT = 2**52  # integers whose every partial sum stays within this are exact in float64 (with a margin of 2)


class WideWeights(NamedTuple):
    """``wide_weights``: a layer's 23-bit integer weights and what each path of ``wide_linear`` needs of them."""

    hi: torch.Tensor  # high 12-bit halves (split path)
    lo: torch.Tensor  # low halves
    bias: torch.Tensor  # int64 bias at the accumulator's scale
    shift: torch.Tensor  # int64 per-output shifts e
    whole: torch.Tensor  # the whole integer weights (one-product path)
    row_bound: int  # largest row sum of |weights|
    bias_low: torch.Tensor  # (out, 1) float64: (bias mod 2**e) + the rounding offset 2**(e - 1), below 2**(e + 1)
    bias_high: torch.Tensor  # (out, 1) float64: bias >> e (floor), added after the shift
    inv_scale: torch.Tensor  # (out, 1) float64: 2**-e
    fast_bound: int  # the float64 path is exact while max|x| * row_bound < fast_bound (0: never)


def wide_weights(weight: torch.Tensor, bias: torch.Tensor | None, bits: int) -> WideWeights:
    """Like ``int_weights`` with 23-bit weights, for the linear synthesis and prediction, whose least-squares and
    whitening matrices need more precision than an entropy model."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    if w.shape[1] > 2**FAN_IN_BITS:
        raise ValueError(f"fan-in {w.shape[1]} over the exact limit of {2**FAN_IN_BITS}")
    bias = bias.detach().double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    _, w_exp = torch.frexp(w.abs().amax(1).clamp_min(2.0**-60))
    _, b_exp = torch.frexp(bias.abs().clamp_min(1.0))
    e = torch.minimum(2 * WIDE_SPLIT - 1 - w_exp, 60 - bits - b_exp).clamp(min=0).long()  # |w int| < 2**23
    w_int = torch.round(w * torch.pow(2.0, e.double()).view(-1, 1))
    hi = torch.floor(w_int * 2.0**-WIDE_SPLIT)
    b_int = torch.round(bias * torch.pow(2.0, (e + bits).double())).long()
    row_bound = int(w_int.abs().sum(1).amax()) if w_int.numel() else 0  # exact: < 2**35
    # the one-product path: floor((acc + b + half) / 2**e) = (b >> e) + floor((acc + (b mod 2**e) + half) / 2**e),
    # every term an integer float64 holds exactly while |acc| + 2**(e + 1) <= 2**52 and |b >> e| <= 2**52
    high = torch.bitwise_right_shift(b_int, e)
    half = torch.where(e > 0, torch.pow(2.0, (e - 1).double()), 0.0)
    low = (b_int - torch.bitwise_left_shift(high, e)).double() + half
    top_e = int(e.max()) if e.numel() else 0
    fits = top_e <= 50 and (not high.numel() or int(high.abs().max()) <= _FLOAT_EXACT)
    return WideWeights(
        hi, w_int - hi * 2**WIDE_SPLIT, b_int, e, w_int, row_bound, low.view(-1, 1), high.double().view(-1, 1),
        torch.pow(2.0, -e.double()).view(-1, 1), _FLOAT_EXACT - 2 ** (top_e + 1) if fits else 0,
    )  # fmt: skip


def wide_params(conv: nn.Conv2d, bits: int) -> WideWeights:
    """``wide_weights`` of a 1x1 convolution, cached until its weights change."""
    return cached(conv, f"wide{bits}", (conv.weight, conv.bias), lambda: wide_weights(conv.weight, conv.bias, bits))


FEW_COLUMNS = 96  # up to this many columns, ``wide_linear``'s product runs as rows (``few_columns``)


def few_columns(x: torch.Tensor) -> bool:
    """Whether columns ``x`` (in, N) are few enough that ``x.T @ w.T`` (rows, ``x.T`` made contiguous) beats
    ``w @ x`` for the wide layers' weights inside the codec (``benchmarks/wide_orders.py`` times both there)."""
    return x.shape[1] <= FEW_COLUMNS


def wide_linear(weights: WideWeights, x: torch.Tensor) -> torch.Tensor:
    """``wide_weights`` applied to fixed-point columns (in, N) -> (out, N), exactly. While ``max|x|`` times the
    largest row sum of ``|w|`` keeps every partial sum (and the low part of the bias) within 2**52, one float64
    product with the shift in float64 suffices; otherwise each 12-bit half's product is exact and they are combined
    in int64. Both give the same integers, so the choice cannot make two machines disagree."""
    if not x.numel():
        return x.new_zeros(weights.whole.shape[0], x.shape[1])
    lo_x, hi_x = torch.aminmax(x)
    peak = int(max(-float(lo_x), float(hi_x)))  # an integer: the product below is Python's, exact
    if peak * weights.row_bound < weights.fast_bound:
        if x.device.type == "cpu" and not x.requires_grad:  # the weights never need a gradient (``wide_weights``)
            w = weights  # the steps after the product in one compiled pass: the same operations
            tables = (*(t.view(-1).numpy() for t in (w.bias_low, w.inv_scale, w.bias_high)), ACT_LIMIT)
            if few_columns(x):  # as rows: the same sums (exact in any order), faster for few columns
                rows = torch.mm(x.T.contiguous(), weights.whole.T)
                return torch.from_numpy(_wide_finish_rows(rows.numpy(), *tables))
            acc = torch.mm(weights.whole, x)
            _wide_finish(acc.numpy(), *tables)
            return acc
        acc = torch.mm(weights.whole, x)
        acc.add_(weights.bias_low)
        return acc.mul_(weights.inv_scale).floor_().add_(weights.bias_high).clamp_(-ACT_LIMIT, ACT_LIMIT)
    hi, lo, b, e = weights.hi, weights.lo, weights.bias, weights.shift
    acc = F.linear(x.T, hi).T.long() * 2**WIDE_SPLIT + F.linear(x.T, lo).T.long() + b.view(-1, 1)
    half = torch.where(e > 0, torch.ones_like(e) << (e - 1).clamp(min=0), torch.zeros_like(e)).view(-1, 1)
    return torch.bitwise_right_shift(acc + half, e.view(-1, 1)).double().clamp_(-ACT_LIMIT, ACT_LIMIT)


@kernel()
def _wide_finish(acc, low, scale, high, limit):  # pragma: no cover - compiled
    """``wide_linear``'s one-product path after the product, in place: floor((acc + low) * scale) + high, clamped."""
    for o in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            acc[o, j] = min(max(np.floor((acc[o, j] + low[o]) * scale[o]) + high[o], -limit), limit)


@kernel()
def _wide_finish_rows(rows, low, scale, high, limit):  # pragma: no cover - compiled
    """``_wide_finish`` of the accumulator as rows (N, out) -> columns (out, N), a new array."""
    out = np.empty((rows.shape[1], rows.shape[0]))
    for j in range(rows.shape[0]):
        for o in range(rows.shape[1]):
            out[o, j] = min(max(np.floor((rows[j, o] + low[o]) * scale[o]) + high[o], -limit), limit)
    return out


def rescale(
    x: torch.Tensor, multiplier: torch.Tensor, shift: int, other: torch.Tensor | None = None,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """floor(x * multiplier / 2**shift + 1/2), clamped, for fixed-point integers ``x`` (C, N) and integer multipliers
    (C,); the columns ``columns`` (indexes) by the multipliers ``other`` instead. Exact (the products are integers
    below 2**53, the power of two and the half exact): one compiled pass on the CPU, the same values."""
    if x.device.type == "cpu" and x.dtype == torch.float64 and x.dim() == 2 and not x.requires_grad:
        pick = np.zeros(x.shape[1], np.bool_)
        if columns is not None:
            pick[columns.numpy()] = True
        other = multiplier if other is None else other
        return torch.from_numpy(_rescale(x.numpy(), multiplier.numpy(), other.numpy(), pick, 2.0**-shift, ACT_LIMIT))
    out = (x * multiplier.view(-1, 1)).mul_(2.0**-shift).add_(0.5).floor_().clamp_(-ACT_LIMIT, ACT_LIMIT)
    if columns is not None:
        out[:, columns] = rescale(x[:, columns], other, shift)
    return out


@kernel()
def _rescale(x, multiplier, other, pick, scale, limit):  # pragma: no cover - compiled
    out = np.empty(x.shape)
    for c in range(x.shape[0]):
        for j in range(x.shape[1]):
            m = other[c] if pick[j] else multiplier[c]
            out[c, j] = min(max(np.floor(x[c, j] * m * scale + 0.5), -limit), limit)
    return out


def conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A whole-map convolution of fixed-point integers (1, C, H, W), as unfold + matrix product (exact)."""
    w, b = scaled_params(conv)
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    h_out = (x.shape[-2] + 2 * p[0] - k[0]) // s[0] + 1
    w_out = (x.shape[-1] + 2 * p[1] - k[1]) // s[1] + 1
    if conv.groups != 1:
        raise ValueError("whole-map exact convolutions are ungrouped")
    cols = F.unfold(x, k, padding=p, stride=s)[0]  # (C k k, H W)
    acc = F.linear(cols.T, w, b).T
    return floor_activations(acc).view(1, -1, h_out, w_out)
