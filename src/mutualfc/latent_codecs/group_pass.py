"""One channel group's checkerboard steps (anchors, then the others) in few calls per side.

Each step runs the context convolution, the entropy parameters' two exact layers and the Gaussian coding; at the
tens of cells a step codes at low rates, the step-by-step loop's layers of calls cost more than their arithmetic.
Here each step is the compiled context convolution, two torch products (MKL, on the caller's threads, with the
cells as rows: faster at a few tens of cells) and the compiled activation and coding kernels: the same exact integer
operations (float64 products of integers, exact in any order; the same floors, clamps and GELU table), so the same
symbols and decoded values as the step-by-step loop (tested). That loop still runs where this does not apply:
another device, a MAC counter, another layer structure. (Products inside the compiled kernels would call SciPy's
OpenBLAS, whose own threads compete with torch's.)
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
    """What the steps read of one group's layers (the cached exact weights)."""

    ctx: ContextWeights  # the context convolution's
    ctx_weights: np.ndarray  # (C, out per group, taps)
    ctx_bias: np.ndarray
    first: torch.Tensor  # the entropy parameters' first layer on the context (C_hidden, C_context)
    gelu: bool
    last: torch.Tensor  # the last layer (2 C, C_hidden)
    last_bias: torch.Tensor  # (2 C, 1)
    scales_first: bool
    index_table: np.ndarray
    tables: FlatTables


def group_weights(cb: CheckerboardLatentCodec, like: torch.Tensor) -> GroupWeights | None:
    """The pass's view of the group ``cb`` for fixed-point columns like ``like``; None where it does not apply."""
    if like.device.type != "cpu" or like.dtype != torch.float64 or intgemm.counting():
        return None
    return cached(cb, "group_pass", lambda: _group_tensors(cb), lambda: _group_weights(cb))


def _group_weights(cb: CheckerboardLatentCodec) -> GroupWeights | None:
    ep, conv, gcl = cb.entropy_parameters, cb.context_prediction, cb.latent_codec["y"]
    if len(ep) != 3 or not isinstance(ep[1], (nn.GELU, nn.Identity)) or conv.groups != conv.in_channels:
        return None
    first, act, last = ep
    tabled = compiled_tables(gcl.gaussian_conditional)
    if tabled is None or any(c.kernel_size != (1, 1) or c.groups != 1 for c in (first, last)):
        return None
    w_last, b_last = exact.scaled_params(last)
    ctx = context_weights(conv, True)
    return GroupWeights(
        ctx, ctx.weights.numpy(), exact.scaled_params(conv)[1].numpy(), affine_parts(first, conv.out_channels)[0],
        isinstance(act, nn.GELU), w_last, b_last.view(-1, 1), scales_first(gcl), *tabled,
    )  # fmt: skip


def _group_tensors(cb: CheckerboardLatentCodec) -> list[torch.Tensor]:
    """What ``_group_weights`` derives from: the layers' weights and the Gaussian's tables."""
    gc = cb.latent_codec["y"].gaussian_conditional
    layers = (cb.context_prediction, *(m for m in cb.entropy_parameters if isinstance(m, nn.Conv2d)))
    return [*(t for m in layers for t in exact.weight_tensors(m)), gc.scale_table, gc.quantized_cdf]


def code_group(
    coder: SymbolCoder, cb: CheckerboardLatentCodec, weights: GroupWeights, y: torch.Tensor | None,
    side: torch.Tensor, out: torch.Tensor, cols: torch.Tensor, cells: torch.Tensor, others: torch.Tensor,
    size: tuple[int, int], memo: dict | None,
) -> None:  # fmt: skip
    """Codes (``y``: the group's values (g, K) at ``cells``, in coding order) or decodes one group: ``side`` (C, K)
    is its entropy parameters' first layer on everything but the spatial context (bias included); ``cells`` are the
    anchors, then the non-anchors ``others`` (the same tensor for every group, so that ``memo`` knows their reads);
    the decoded values go to ``out`` (g, H W), a map that is 0 elsewhere, and to ``cols`` (g, K) at ``cells``."""
    w, reader = weights, isinstance(coder, SymbolReader)
    reads = context_sources(cb.context_prediction, size, others, w.ctx, memo, cells)
    gap, act_lo, limit = exact.activation_tables()
    ymap, at, n_anchors = out.numpy(), cells.numpy(), cells.numel() - others.numel()
    for step, (lo, hi) in enumerate(((0, n_anchors), (n_anchors, cells.numel()))):
        if lo == hi:
            continue
        if step:  # the non-anchors read the anchors decoded into ``out``
            ctx = grouped_context(ymap, reads.src.numpy(), reads.live, w.ctx_weights, w.ctx_bias, limit)
            acc = torch.addmm(side[:, lo:hi].T, torch.from_numpy(ctx), w.first.T)  # rows (K, C_hidden)
        else:
            acc = side[:, lo:hi].T.clone(memory_format=torch.contiguous_format)  # rows, a copy: floored in place
        exact.floor_flat(acc.view(-1).numpy(), gap, act_lo, limit, w.gelu)
        gauss = torch.mm(acc, w.last.T).add_(w.last_bias.view(1, -1)).numpy().T  # (2 C, K), a view of rows
        if reader:
            coder.run(decode_at, gauss, w.scales_first, w.index_table, *w.tables, *FLAT_FLAG_TABLES, ymap, at[lo:hi])
            continue
        values = y[:, lo:hi].double().contiguous().numpy()
        flag, symbols, indexes = encode_at(values, gauss, w.scales_first, w.index_table, ymap, at[lo:hi])
        if flag >= 0:
            coder.flag(bool(flag))
        coder.add(w.tables, symbols, indexes)
    _take(ymap, at, cols.numpy())


@kernel()
def _take(ymap, cells, cols):  # pragma: no cover - compiled
    """The decoded map's columns at ``cells`` -> ``cols`` (C, K), in place."""
    for c in range(cols.shape[0]):
        for i in range(cells.shape[0]):
            cols[c, i] = ymap[c, cells[i]]
