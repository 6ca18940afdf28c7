"""Exact layers as int8 digit products (``mutualfc.nn.intgemm``): the same float64 values as the float64 product,
compared exactly, for every digit count, the padding, both weight orders and the extreme values the exact layers
allow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mutualfc.nn import exact, intgemm
from mutualfc.nn.sparse import conv_at, patch_rows

pytestmark = pytest.mark.skipif(not intgemm._HAS_INT_MM, reason="this torch has no _int_mm")


def _reference(conv: torch.nn.Conv2d, x: torch.Tensor, src: torch.Tensor | None, taps: int) -> torch.Tensor:
    w, b = exact.scaled_params(conv)
    return F.linear(x.T if src is None else patch_rows(x, src, taps), w, b)


@pytest.mark.parametrize("peak", [100, 30_000, 8_000_000, int(exact.ACT_LIMIT)])  # one to four digits
@pytest.mark.parametrize("kernel", [1, 3])
def test_digit_products_equal_the_float64_product_exactly(peak, kernel):
    torch.manual_seed(peak % 997 + kernel)
    conv = torch.nn.Conv2d(40, 24, kernel)
    x = torch.randint(-peak, peak + 1, (40, 70)).double()
    x[0, 0] = -peak  # the bound itself
    taps = kernel * kernel
    src = None if kernel == 1 else torch.randint(-1, 70, (taps * 50,))  # -1: the padding's zeros
    got = intgemm.linear_at(conv, x, src, taps)
    assert got is not None and torch.equal(got, _reference(conv, x, src, taps))


@pytest.mark.parametrize("cells", [3, 200])  # fewer digit rows than weight rows, and more: either operand order
def test_digit_products_in_either_operand_order_equal_the_float64_product(cells):
    torch.manual_seed(cells)
    conv = torch.nn.Conv2d(32, 96, 3)
    x = torch.randint(-30_000, 30_001, (32, cells + 5)).double()
    src = torch.randint(-1, cells + 5, (9 * cells,))
    got = intgemm.linear_at(conv, x, src, 9)
    assert got is not None and torch.equal(got, _reference(conv, x, src, 9))


def test_the_largest_weights_and_activations_stay_exact():
    """Weights at the top of their integer range and every activation at the limit, over the largest fan-in: sums
    far beyond int32 (each digit product's sum stays within it), recombined exactly."""
    conv = torch.nn.Conv2d(448, 8, 3, padding=1)  # fan-in 4032, just under the exact layers' 4096
    with torch.no_grad():
        conv.weight.fill_(0.99999).mul_(torch.tensor([1.0, -1.0]).repeat(4).view(8, 1, 1, 1))
        conv.bias.fill_(3.0)
    x = torch.full((448, 9), exact.ACT_LIMIT, dtype=torch.float64)
    src = torch.arange(81) % 9
    got = intgemm.linear_at(conv, x, src, 9)
    assert got is not None and torch.equal(got, _reference(conv, x, src, 9))
    _, bias, inv = intgemm.digit_weights(conv)
    assert float((got / inv - bias).abs().min()) > 2.0**50  # the integer sums themselves


@pytest.mark.parametrize("bad", [0.5, -1e-9, exact.ACT_LIMIT * 16, 2.0**63, float("nan"), float("-inf")])
def test_values_that_are_not_small_integers_are_left_to_the_float64_product(bad):
    conv = torch.nn.Conv2d(300, 16, 1)
    x = torch.randint(-50, 50, (300, 80)).double()
    x[7, 3] = bad
    assert intgemm.linear_at(conv, x, None, 1) is None


def test_convolutions_at_cells_take_the_digit_path_and_give_the_same_integers(monkeypatch):
    """``conv_at`` on a fixed-point map large enough for the digit path equals the float64 path."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = exact.to_fixed(torch.randn(1, 128, 20, 24) * 3)
    idx = torch.randperm(480)[:200].sort().values
    calls = []
    monkeypatch.setattr(intgemm, "linear_at", lambda *a: calls.append(1) or _linear_at(*a))
    fast = conv_at(conv, x, idx)
    assert calls, "the digit path was not taken"
    monkeypatch.setattr(intgemm, "_HAS_INT_MM", False)
    assert torch.equal(fast, conv_at(conv, x, idx))


_linear_at = intgemm.linear_at


def test_mac_counts_are_the_layers_not_the_digit_products():
    """``mutualfc complexity`` counts a layer's multiply-accumulates once each, whichever kernel computes them."""
    from mutualfc.eval.complexity import count_macs

    torch.manual_seed(4)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = exact.to_fixed(torch.randn(1, 128, 20, 24))
    idx = torch.arange(0, 480, 2)
    out, macs = count_macs(conv_at, conv, x, idx)
    assert macs == idx.numel() * 128 * 128 * 9
    assert torch.equal(out, conv_at(conv, x, idx))


def test_a_torch_without_the_cpu_kernel_falls_back_to_float64(monkeypatch):
    def missing(*_):
        raise NotImplementedError("_int_mm: no CPU kernel in this build")

    torch.manual_seed(5)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = exact.to_fixed(torch.randn(1, 128, 16, 16))
    idx = torch.arange(0, 256, 3)
    want = conv_at(conv, x, idx)
    monkeypatch.setattr(intgemm, "_HAS_INT_MM", True)  # restored after the test
    monkeypatch.setattr(torch, "_int_mm", missing)
    assert torch.equal(conv_at(conv, x, idx), want)
    assert not intgemm._HAS_INT_MM  # tried once, then left alone
