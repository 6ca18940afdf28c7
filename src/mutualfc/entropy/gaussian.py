"""Gaussian coding of latent columns: scale-table indexes, the floor-scale flag, the entropy bottleneck's medians."""

from __future__ import annotations

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import GaussianConditionalLatentCodec

from mutualfc.entropy.rans import SymbolCoder
from mutualfc.nn import exact
from mutualfc.nn.caching import cached


def medians(eb: EntropyBottleneck) -> torch.Tensor:
    """The bottleneck's per-channel medians, (C, 1, 1): where its quantisation grid is centred."""
    return eb.quantiles[:, :, 1:2]


def scale_indexes(gc: GaussianConditional, scales: torch.Tensor) -> torch.Tensor:
    """CompressAI's ``build_indexes`` (index of the smallest table scale >= the scale) by binary search. Fixed-point
    scales (float64 integers, ``ACT_BITS``) are compared with integer thresholds: exact on every machine."""
    if scales.dtype == torch.float64:
        return torch.searchsorted(scale_thresholds(gc), scales.contiguous())
    return torch.searchsorted(gc.scale_table[:-1].contiguous(), scales.contiguous())


def scale_thresholds(gc: GaussianConditional) -> torch.Tensor:
    """floor(table scale * 2**ACT_BITS) of every table scale but the last: a fixed-point scale s has index
    #{thresholds < s}, which is CompressAI's index of s / 2**ACT_BITS (the table is the stored one, not recomputed)."""
    table = gc.scale_table  # the key is the stored tensor (a slice would be a new tensor, a miss, on every call)
    return cached(gc, "thresholds", (table,), lambda: torch.floor(table[:-1].double() * 2**exact.ACT_BITS).contiguous())


def split_params(codec: GaussianConditionalLatentCodec, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2C, K) entropy parameters -> scales, means (C, K), in the order the latent codec's ``chunks`` declares."""
    if codec.chunks not in (("scales", "means"), ("means", "scales")):
        raise ValueError(f"Gaussian parameters must be scales and means, got {codec.chunks}")
    a, b = params.chunk(2, 0)
    return (a, b) if codec.chunks[0] == "scales" else (b, a)


def gaussian_bits(codec: GaussianConditionalLatentCodec, y: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Estimated bits of each column of ``y`` (C, K) under the Gaussians ``params`` ((2C, K), as ``code_gaussian``
    takes them): the information content of the symbol coding would send, at the scale table's scale. Float: for
    the encoder's decisions (which the stream records), never for what the decoder computes."""
    gc = codec.gaussian_conditional
    scales, means = split_params(codec, params)
    if params.dtype == torch.float64:
        means = means * 2.0**-exact.ACT_BITS
    s = gc.scale_table[scale_indexes(gc, scales)].double()
    v = torch.round(y.double() - means).abs()
    p = torch.special.ndtr((0.5 - v) / s) - torch.special.ndtr((-0.5 - v) / s)
    return -torch.log2(p.clamp_min(2.0**-30)).sum(0)


def code_gaussian(
    coder: SymbolCoder, codec: GaussianConditionalLatentCodec, y: torch.Tensor | None, params: torch.Tensor
) -> torch.Tensor:
    """Codes the values ``y`` (C, K) with the Gaussians ``params`` ((2C, K): scales and means at the same K
    positions) predicts, using ``codec``'s Gaussian conditional; -> the decoded values, (C, K).

    Values whose scale is at the table's floor (index 0: about 1e-5 bits each) are left out when all of them round
    to their mean, which one flag says: then both sides take the means. Otherwise everything is coded, so decoding
    is exact either way. Fixed-point ``params`` (float64 integers) give fixed-point decoded values."""
    gc = codec.gaussian_conditional
    scales, means = split_params(codec, params)
    shape, means = means.shape, means.reshape(-1)
    fixed = params.dtype == torch.float64
    values = None if y is None else y.reshape(-1)
    real = means  # the means in real units: the encoder codes its symbols around them
    if fixed:  # exactly; the decoder adds its symbols to the fixed-point means and needs no real ones
        real = None if values is None else means * 2.0**-exact.ACT_BITS
    indexes = scale_indexes(gc, scales).reshape(-1)
    floor = indexes == 0
    every = True
    if bool(floor.any()):
        off = None if values is None else bool(torch.round(values - real).ne(0).logical_and_(floor).any())
        every = coder.flag(off)
    if every:
        return _decoded(coder.symbols(gc, values, indexes, real), means).view(shape)
    out, coded = means.clone(), indexes.nonzero().squeeze(1)
    if coded.numel():
        take = lambda t: None if t is None else t.index_select(0, coded)  # noqa: E731
        symbols = coder.symbols(gc, take(values), take(indexes), take(real))
        out.index_copy_(0, coded, _decoded(symbols, take(means)))
    return out.view(shape)


def _decoded(symbols: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Symbols (int32) around ``means`` -> decoded values: ``symbols + means`` for real means; for fixed-point ones
    ``symbols * 2**ACT_BITS + means``, clamped, which is ``to_fixed(symbols + means * 2**-ACT_BITS)`` exactly (both
    terms are integers far below 2**53) in two passes fewer."""
    if means.dtype != torch.float64:
        return symbols.to(means.dtype).add_(means)
    out = symbols.double().mul_(2**exact.ACT_BITS).add_(means)
    return out.clamp_(-exact.ACT_LIMIT, exact.ACT_LIMIT)
