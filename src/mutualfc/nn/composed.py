"""Two exact 1x1 layers with no floor between them, as one exact layer (bitstream version 6).

The channel groups' context network ends in a 1x1 convolution whose output only feeds the entropy parameters' first
(1x1) layer. In the float model the two are one linear map; the exact path used to floor the first one's output
(1,152 channels in ``mutual-fast``'s last group) and multiply it by a 96 x 1,152 weight. Composed, the entropy
parameters read the context network's 64 hidden channels through one 96 x 64 weight: about a tenth of the products.

The composed integers derive from the two layers' own integers (``exact.int_params``) by exact integer arithmetic
(Python integers), then round once to the weight width of every exact layer, so every machine builds the same ones
(normative: docs/bitstream.md).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from mutualfc.nn import exact
from mutualfc.nn.caching import cached

_SUM_LIMIT = 2**52  # every partial sum of the accumulator the composed layer adds to stays below this (exact)


class ComposedWeights(NamedTuple):
    """The composed layer as the accumulator of the second layer adds it: ``weight @ x + bias`` (float64, each
    output's power of two folded in, like ``exact.scaled_params``), for the first layer's inputs ``x``."""

    weight: torch.Tensor  # (out, C_in): F * 2**-(e + s)
    bias: torch.Tensor  # (out,): h * 2**-(e + s)
    shift: tuple[int, ...]  # each output's s: its integers F, h are the exact ones times 2**s, rounded


def composes(inner: nn.Module, outer: nn.Module) -> bool:
    """Whether ``inner`` and ``outer`` are both ungrouped 1x1 convolutions (stride 1, no padding)."""
    return all(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0)
        and m.groups == 1
        for m in (inner, outer)
    )  # fmt: skip


def composed_weights(inner: nn.Conv2d, outer: nn.Conv2d, lo: int) -> ComposedWeights | None:
    """``outer``'s inputs ``lo`` to ``lo + inner.out_channels`` read ``inner``'s output before its floor: the two as
    one exact layer on ``inner``'s inputs, to be added to ``outer``'s accumulator (its other inputs and bias), cached
    until either layer's weights change. None where the accumulator's sums could reach 2**52 with it (the layers
    are then applied one after the other, floor between, as in bitstream version 5)."""
    if not composes(inner, outer) or lo < 0 or lo + inner.out_channels > outer.in_channels:
        raise ValueError("only 1x1 layers whose output is a block of the next one's inputs compose")
    tensors = lambda: (*exact.weight_tensors(inner), *exact.weight_tensors(outer))  # noqa: E731
    return cached(outer, f"composed{lo}", tensors, lambda: _build(inner, outer, lo))


def _build(inner: nn.Conv2d, outer: nn.Conv2d, lo: int) -> ComposedWeights | None:
    c_int, c_bias, c_inv = (t.cpu() for t in exact.int_params(inner))
    a_int, a_bias, a_inv = (t.cpu() for t in exact.int_params(outer))
    hi = lo + inner.out_channels
    f = _exponents(c_inv)  # inner output j: W_j * 2**-f_j
    e = _exponents(a_inv)  # outer output o
    offset = [1 << (k - 1) if k >= 1 else 0 for k in f]  # the rounding offset int_params adds to inner's bias
    a = a_int.flatten(1)[:, lo:hi].to(torch.int64).numpy()  # |integer weights| < 2**11
    c = c_int.flatten(1).to(torch.int64).numpy()
    c_b = [int(v) - o for v, o in zip(c_bias.tolist(), offset, strict=True)]
    top = max(f)
    # G * 2**top = sum_j A[o, j] C[j, i] 2**(top - f_j), H * 2**top likewise: exact (Python integers). Rows of C
    # with one exponent at a time: A[:, J] @ C[J] is below 2**11 * 2**11 * 2**12 terms, exact in int64.
    g = np.zeros((a.shape[0], c.shape[1]), dtype=object)
    for k in sorted(set(f)):
        rows = [j for j, fj in enumerate(f) if fj == k]
        g += (a[:, rows] @ c[rows]).astype(object) * (1 << (top - k))
    a_rows = a.tolist()
    h = [sum(row[j] * c_b[j] << (top - f[j]) for j in range(len(f))) for row in a_rows]
    others = a_int.flatten(1).abs()
    others[:, lo:hi] = 0
    other_sum = [int(v) for v in others.sum(1).tolist()]  # sum of |W| over the outer layer's other inputs
    limit = int(exact.ACT_LIMIT)
    weights, biases, shifts = [], [], []
    for o in range(a.shape[0]):
        row = [int(v) for v in g[o]]
        s = 0  # on the outer layer's own grid, coarser only where that would make an integer 12 bits wide
        while True:
            w = [_round_shift(v, top - s) for v in row]
            if max((abs(v) for v in w), default=0) < 2 ** (exact.WEIGHT_BITS - 1):
                break
            s -= 1
        b = _round_shift(h[o], top - s)
        bound = other_sum[o] * limit + abs(int(a_bias[o])) + ((sum(abs(v) for v in w) * limit + abs(b)) << -s)
        if bound >= _SUM_LIMIT:
            return None
        scale = 2.0 ** -(e[o] + s)
        weights.append([v * scale for v in w])
        biases.append(b * scale)
        shifts.append(s)
    weight = torch.tensor(weights, dtype=torch.float64).to(inner.weight.device)
    bias = torch.tensor(biases, dtype=torch.float64).to(inner.weight.device)
    return ComposedWeights(weight, bias, tuple(shifts))


def _exponents(inv: torch.Tensor) -> list[int]:
    """``int_params``' per-output scale 2**-e -> the integers e."""
    return [-int(np.frexp(v)[1] - 1) for v in inv.view(-1).tolist()]


def _round_shift(v: int, n: int) -> int:
    """``floor(v * 2**-n + 1/2)`` exactly."""
    return (v + (1 << (n - 1))) >> n if n > 0 else v << -n
