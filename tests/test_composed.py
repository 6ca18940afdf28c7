"""The composed channel-context layer (bitstream version 6, ``mutualfc.nn.composed``) against exact rational
arithmetic: each integer is the correctly rounded composition, as wide as the rule allows and no wider, and every sum
the accumulator takes stays exact."""

from fractions import Fraction

import pytest
import torch
from torch import nn

from mutualfc.nn import exact
from mutualfc.nn.composed import composed_weights, composes


def _layers(seed: int, other_scale: float = 1.0) -> tuple[nn.Conv2d, nn.Conv2d, int]:
    """An inner 1x1 layer (9 -> 12) whose output is inputs 5..16 of an outer 1x1 layer (21 -> 6), with weights
    and biases spread over many exponents (so the rows' powers of two differ, some of them below 1)."""
    g = torch.Generator().manual_seed(seed)
    inner, outer = nn.Conv2d(9, 12, 1), nn.Conv2d(21, 6, 1)
    spread = lambda lo, hi, shape: 2.0 ** torch.randint(lo, hi, shape, generator=g)  # noqa: E731
    with torch.no_grad():
        inner.weight.copy_(torch.randn(12, 9, 1, 1, generator=g) * spread(-8, 6, (12, 1, 1, 1)))
        inner.bias.copy_(torch.randn(12, generator=g) * spread(-4, 6, (12,)))
        outer.weight.copy_(torch.randn(6, 21, 1, 1, generator=g) * spread(-10, 4, (6, 1, 1, 1)))
        outer.weight[:, :5] *= other_scale
        outer.weight[:, 17:] *= other_scale
        outer.bias.copy_(torch.randn(6, generator=g))
    return inner, outer, 5


def _exact_parts(inner, outer, lo):
    """The composition as exact rationals from the two layers' integers: G (out, in) and H (out,) in the outer
    layer's integer units (``exact.int_params``), its exponents e and the outer layer's integers."""
    c, cb, cinv = exact.int_params(inner)
    a, ab, ainv = exact.int_params(outer)
    c, a = c.flatten(1), a.flatten(1)
    f = [Fraction(v) for v in cinv.view(-1).tolist()]  # 2**-f_j
    hi = lo + inner.out_channels
    offset = [v / 2 if v > 1 else Fraction(0) for v in (1 / x for x in f)]  # 2**(f_j - 1) for f_j >= 1
    g = [[sum(Fraction(int(a[o, lo + j])) * int(c[j, i]) * f[j] for j in range(c.shape[0])) for i in range(c.shape[1])]
         for o in range(a.shape[0])]  # fmt: skip
    h = [sum(Fraction(int(a[o, lo + j])) * (int(cb[j]) - offset[j]) * f[j] for j in range(c.shape[0]))
         for o in range(a.shape[0])]  # fmt: skip
    e = [Fraction(v) for v in ainv.view(-1).tolist()]  # 2**-e_o
    others = [sum(abs(int(v)) for k, v in enumerate(a[o].tolist()) if not lo <= k < hi) for o in range(a.shape[0])]
    return g, h, e, others, ab


def _bound(other, bias, row, b, s):
    """The largest sum the outer layer's accumulator can take, in its integer units (inputs below 2**28)."""
    limit = int(exact.ACT_LIMIT)
    return other * limit + abs(int(bias)) + (sum(abs(v) for v in row) * limit + abs(b)) * 2**-s


def _round(x: Fraction) -> int:
    return int((x + Fraction(1, 2)).__floor__())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_composed_integers_are_the_rounded_exact_composition(seed):
    inner, outer, lo = _layers(seed)
    got = composed_weights(inner, outer, lo)
    g, h, e, others, ab = _exact_parts(inner, outer, lo)
    for o, s in enumerate(got.shift):
        scale = e[o] * Fraction(2) ** -s  # 2**-(e_o + s)
        ints = [Fraction(v) / scale for v in got.weight[o].tolist()]
        assert all(v.denominator == 1 for v in ints)
        assert [int(v) for v in ints] == [_round(x * 2**s) for x in g[o]]  # correctly rounded, half up
        b = Fraction(got.bias[o].item()) / scale
        assert b == _round(h[o] * 2**s)
        assert max(abs(v) for v in ints) < 2 ** (exact.WEIGHT_BITS - 1)  # as wide as any exact layer's
        assert s <= 0  # on the outer layer's grid, or coarser where its integers would be wider
        assert s == 0 or max(abs(_round(x * 2 ** (s + 1))) for x in g[o]) >= 2 ** (exact.WEIGHT_BITS - 1)
        assert _bound(others[o], ab[o], [int(v) for v in ints], int(b), s) < 2**52


def test_layers_whose_composed_sums_could_reach_2_52_are_not_composed():
    """A composed bias beyond the exact range (an inner bias of 2**32, read through the outer layer's widest
    weights): no composed layer; the decoder then floors (and clamps) the inner layer's output, as bitstream version
    5 did."""
    inner, outer, lo = _layers(0)
    with torch.no_grad():
        inner.bias.fill_(2.0**32)
        outer.weight.mul_(2.0**-3)
        outer.weight[:, lo : lo + 12] = 1.0
    assert composed_weights(inner, outer, lo) is None
    with torch.no_grad():
        inner.bias.fill_(1.0)  # changed in place: rebuilt, and composed
    assert composed_weights(inner, outer, lo) is not None


def test_composed_layer_adds_what_the_float_layers_compute():
    """Applied to fixed-point inputs, the composed layer is the float composition of the two layers (to the
    rounding of its integers), without the floor between them."""
    inner, outer, lo = _layers(5)
    x = exact.to_fixed(torch.randn(9, 40, generator=torch.Generator().manual_seed(1)) * 20)
    got = composed_weights(inner, outer, lo)
    out = got.weight @ x + got.bias.view(-1, 1)
    with torch.no_grad():
        w_in, w_out = inner.weight.double().flatten(1), outer.weight.double().flatten(1)[:, lo : lo + 12]
        ref = w_out @ (w_in @ x + inner.bias.double().view(-1, 1) * 2**exact.ACT_BITS)
    tol = (got.weight.abs().amax(1, keepdim=True) * 2.0**-10) * x.abs().sum(0) + 1  # 11-bit weights, one rounding
    assert ((out - ref).abs() <= tol).all()


def test_only_1x1_layers_compose():
    inner, outer, lo = _layers(0)
    assert composes(inner, outer)
    assert not composes(nn.Conv2d(9, 12, 3, padding=1), outer)
    with pytest.raises(ValueError):
        composed_weights(nn.Conv2d(9, 12, 3, padding=1), outer, lo)
    with pytest.raises(ValueError):
        composed_weights(inner, outer, 10)  # the inner output would not fit the outer inputs
