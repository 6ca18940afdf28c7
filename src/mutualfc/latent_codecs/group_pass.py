"""One channel group's checkerboard steps (anchors, then the others) as one compiled pass per side.

Each step runs the context convolution, the entropy parameters' two exact layers and the Gaussian coding; at the
tens of cells a step codes at low rates, calling them one by one from Python costs more than their arithmetic. The
compiled pass runs the same exact integer operations (float64 products of integers, exact in any order; the same
floors, clamps and GELU table) and the same coding kernels, so its symbols and decoded values are the step-by-step
loop's (tested). That loop still runs where the pass does not apply: another device, a MAC counter (which must see
torch products), another layer structure.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from compressai.latent_codecs import CheckerboardLatentCodec
from torch import nn

from mutualfc.entropy import SymbolCoder, SymbolReader
from mutualfc.entropy.ans import FlatTables
from mutualfc.entropy.gaussian import compiled_tables, decode_at, encode_at, scales_first
from mutualfc.entropy.rans import FLAT_FLAG_TABLES
from mutualfc.nn import exact, intgemm
from mutualfc.nn.caching import cached
from mutualfc.nn.context import ContextWeights, context_sources, context_weights, grouped_context
from mutualfc.nn.kernels import kernel
from mutualfc.nn.sparse import affine_parts


class GroupWeights(NamedTuple):
    """What the compiled pass reads of one group's layers (numpy views of the cached exact weights)."""

    ctx: ContextWeights  # the context convolution's
    ctx_bias: np.ndarray
    first: np.ndarray  # the entropy parameters' first layer on the context (C_hidden, C_context)
    gelu: bool
    last: np.ndarray  # the last layer (2 C, C_hidden)
    last_bias: np.ndarray
    scales_first: bool
    index_table: np.ndarray
    tables: FlatTables


def group_weights(cb: CheckerboardLatentCodec, like: torch.Tensor) -> GroupWeights | None:
    """The pass's view of the group ``cb`` for fixed-point columns like ``like``; None where it does not apply."""
    if like.device.type != "cpu" or like.dtype != torch.float64 or intgemm.counting():
        return None
    ep, conv = cb.entropy_parameters, cb.context_prediction
    gc = cb.latent_codec["y"].gaussian_conditional

    def build() -> GroupWeights | None:
        if len(ep) != 3 or not isinstance(ep[1], (nn.GELU, nn.Identity)) or conv.groups != conv.in_channels:
            return None
        first, act, last = ep
        tabled = compiled_tables(gc)
        if tabled is None or any(c.kernel_size != (1, 1) or c.groups != 1 for c in (first, last)):
            return None
        w_last, b_last = exact.scaled_params(last)
        return GroupWeights(
            context_weights(conv, True), exact.scaled_params(conv)[1].numpy(),
            affine_parts(first, conv.out_channels)[0].numpy(), isinstance(act, nn.GELU), w_last.contiguous().numpy(),
            b_last.numpy(), scales_first(cb.latent_codec["y"]), *tabled,
        )  # fmt: skip

    def tensors():
        layers = (conv, *(m for m in ep if isinstance(m, nn.Conv2d)))
        return [*(t for m in layers for t in exact.weight_tensors(m)), gc.scale_table, gc.quantized_cdf]

    return cached(cb, "group_pass", tensors, build)


def code_group(
    coder: SymbolCoder, cb: CheckerboardLatentCodec, weights: GroupWeights, y: torch.Tensor | None,
    side: torch.Tensor, out: torch.Tensor, cols: torch.Tensor, cells: torch.Tensor, others: torch.Tensor,
    size: tuple[int, int], memo: dict | None,
) -> None:  # fmt: skip
    """Codes (``y``: the group's values (g, K) at ``cells``, in coding order) or decodes one group: ``side`` (C, K)
    is its entropy parameters' first layer on everything but the spatial context (bias included); ``cells`` are the
    anchors, then the non-anchors ``others`` (the same tensor for every group, so that ``memo`` knows their reads);
    the decoded values go to ``out`` (g, H W), a map that is 0 elsewhere, and to ``cols`` (g, K) at ``cells``."""
    w = weights
    reads = context_sources(cb.context_prediction, size, others, w.ctx, memo, cells)
    args = (side.contiguous().numpy(), cells.numel() - others.numel(), out.numpy(), cols.numpy(), cells.numpy(),
            reads.src.numpy(), reads.live, w.ctx.weights.numpy(), w.ctx_bias, w.first, *exact.activation_tables(),
            w.gelu, w.last, w.last_bias, w.scales_first, w.index_table, *w.tables)  # fmt: skip
    if isinstance(coder, SymbolReader):
        coder.run(_decode_group, *args, *FLAT_FLAG_TABLES)
        return
    for flag, symbols, indexes in _encode_group(y.double().contiguous().numpy(), *args):
        if flag >= 0:
            coder.flag(bool(flag))
        coder.add(w.tables, symbols, indexes)


@kernel()
def _parameters(
    side, lo, hi, others, ymap, src, live, wt, ctx_bias, first, gap, act_lo, limit, gelu, last, last_bias
):  # pragma: no cover - compiled
    """A step's Gaussians (2 C, hi - lo), before the floor: the first layer's accumulator for its cells (``side``
    plus, for the non-anchors (``others``), the spatial context of the anchors decoded into ``ymap``), activated,
    through the last layer."""
    acc = side[:, lo:hi].copy()
    if others:  # the non-anchors read the anchors: one row of ``src`` per non-anchor
        ctx = grouped_context(ymap, src, live, wt, ctx_bias, limit)  # (K, C_context)
        acc += np.dot(first, ctx.T.copy())
    exact.floor_flat(acc.reshape(-1), gap, act_lo, limit, gelu)
    gauss = np.dot(last, acc)
    for i in range(gauss.shape[0]):
        gauss[i] += last_bias[i]
    return gauss


@kernel()
def _decode_group(
    words, pos, x, side, n_anchors, ymap, cols, cells, src, live, wt, ctx_bias, first, gap, act_lo, limit, gelu,
    last, last_bias, first_scales, table, cdf, start, length, offset, fcdf, fstart, flength, foffset,
):  # pragma: no cover  # fmt: skip
    """Decodes one group (``code_group``'s arguments) from the stream ``words`` at ``pos`` in state ``x`` -> (pos, x,
    symbols read)."""
    count = 0
    for step in range(2):
        lo, hi = (0, n_anchors) if step == 0 else (n_anchors, cells.shape[0])
        if lo == hi:
            continue
        gauss = _parameters(side, lo, hi, step == 1, ymap, src, live, wt, ctx_bias, first, gap, act_lo, limit,
                            gelu, last, last_bias)  # fmt: skip
        pos, x, n = decode_at(words, pos, x, gauss, first_scales, table, cdf, start, length, offset, fcdf, fstart,
                              flength, foffset, ymap, cells[lo:hi])  # fmt: skip
        count += n
    _take(ymap, cells, cols)
    return pos, x, count


@kernel()
def _encode_group(
    y, side, n_anchors, ymap, cols, cells, src, live, wt, ctx_bias, first, gap, act_lo, limit, gelu, last, last_bias,
    first_scales, table, cdf, start, length, offset,
):  # pragma: no cover  # fmt: skip
    """Codes one group, its values ``y`` (g, K) at ``cells`` -> per step (flag, symbols, table indexes), as
    ``encode_at`` gives them."""
    steps = []
    for step in range(2):
        lo, hi = (0, n_anchors) if step == 0 else (n_anchors, cells.shape[0])
        if lo == hi:
            continue
        gauss = _parameters(side, lo, hi, step == 1, ymap, src, live, wt, ctx_bias, first, gap, act_lo, limit,
                            gelu, last, last_bias)  # fmt: skip
        steps.append(encode_at(y[:, lo:hi].copy(), gauss, first_scales, table, ymap, cells[lo:hi]))
    _take(ymap, cells, cols)
    return steps


@kernel(inline=True)
def _take(ymap, cells, cols):  # pragma: no cover - compiled
    for c in range(cols.shape[0]):
        for i in range(cells.shape[0]):
            cols[c, i] = ymap[c, cells[i]]
