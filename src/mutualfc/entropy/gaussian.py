"""Gaussian coding of latent columns: scale-table indexes, the floor-scale flag, the entropy bottleneck's medians."""

from __future__ import annotations

import math

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import GaussianConditionalLatentCodec

from mutualfc.entropy.ans import FlatTables, decode_symbol, decode_symbols
from mutualfc.entropy.rans import FLAT_FLAG_TABLES, SymbolCoder, SymbolReader, model_tables
from mutualfc.nn import exact
from mutualfc.nn.caching import cached
from mutualfc.nn.kernels import kernel


def medians(eb: EntropyBottleneck) -> torch.Tensor:
    """The bottleneck's per-channel medians, (C, 1, 1): where its quantisation grid is centred."""
    return eb.quantiles[:, :, 1:2]


def scale_indexes(gc: GaussianConditional, scales: torch.Tensor) -> torch.Tensor:
    """CompressAI's ``build_indexes`` (index of the smallest table scale >= the scale). Fixed-point scales (float64
    integers, ``ACT_BITS``) are compared with integer thresholds, exactly on every machine: looked up in
    ``index_table`` (a fixed-point scale is an integer), by binary search for a table too large for that."""
    if scales.dtype == torch.float64:
        table = index_table(gc)
        if table is None:
            return torch.searchsorted(scale_thresholds(gc), scales.contiguous())
        return torch.take(table, scales.clamp(0, table.numel() - 1).long())
    return torch.searchsorted(gc.scale_table[:-1].contiguous(), scales.contiguous())


def scale_thresholds(gc: GaussianConditional) -> torch.Tensor:
    """floor(table scale * 2**ACT_BITS) of every table scale but the last: a fixed-point scale s has index
    #{thresholds < s}, which is CompressAI's index of s / 2**ACT_BITS (the table is the stored one, not recomputed)."""
    table = gc.scale_table  # the key is the stored tensor (a slice would be a new tensor, a miss, on every call)
    return cached(gc, "thresholds", (table,), lambda: torch.floor(table[:-1].double() * 2**exact.ACT_BITS).contiguous())


_INDEX_TABLE_LIMIT = 2**20  # entries (int64): a scale table up to 4096 fits


def index_table(gc: GaussianConditional) -> torch.Tensor | None:
    """The scale index of every integer fixed-point scale from 0 to one above the largest threshold (int64; a
    scale below 0 has index 0, one above the range the last index): #{thresholds < s} for each, as
    ``searchsorted`` gives it. None when the range is too large to tabulate."""

    def build() -> torch.Tensor | None:
        thresholds = scale_thresholds(gc)
        top = int(thresholds.max()) + 1 if thresholds.numel() else 0
        if top >= _INDEX_TABLE_LIMIT:
            return None
        return torch.searchsorted(thresholds, torch.arange(top + 1, dtype=torch.float64))

    return cached(gc, "index_table", (gc.scale_table,), build)


def scales_first(codec: GaussianConditionalLatentCodec) -> bool:
    """Whether the latent codec's ``chunks`` put the scales before the means (ValueError if they are not those two)."""
    if codec.chunks not in (("scales", "means"), ("means", "scales")):
        raise ValueError(f"Gaussian parameters must be scales and means, got {codec.chunks}")
    return codec.chunks[0] == "scales"


def split_params(codec: GaussianConditionalLatentCodec, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2C, K) entropy parameters -> scales, means (C, K), in the order the latent codec's ``chunks`` declares."""
    a, b = params.chunk(2, 0)
    return (a, b) if scales_first(codec) else (b, a)


def compiled_tables(gc: GaussianConditional) -> tuple[np.ndarray, FlatTables] | None:
    """What the compiled fixed-point coding steps read: ``index_table`` as an array and the model's flat CDF
    tables, in one look-up per step (kept until any of their tensors changes); None where ``index_table`` is."""

    def build():
        table = index_table(gc)
        return None if table is None else (table.numpy(), model_tables(gc))

    tensors = (gc.scale_table, gc.quantized_cdf, gc.cdf_length, gc.offset)
    return cached(gc, "compiled_tables", tensors, build)


def gaussian_bits(codec: GaussianConditionalLatentCodec, y: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Estimated bits of each column of ``y`` (C, K) under the Gaussians ``params`` ((2C, K), as ``code_gaussian``
    takes them): the information content of the symbol coding would send, at the scale table's scale. Float: for
    the encoder's decisions (which the stream records), never for what the decoder computes."""
    gc = codec.gaussian_conditional
    scales, means = split_params(codec, params)
    table, indexes = bits_table(gc), index_table(gc)
    if params.dtype == torch.float64 and indexes is not None and params.device.type == "cpu":  # one compiled pass
        y, scales, means = (t.double().contiguous().numpy() for t in (y, scales, means))
        return torch.from_numpy(_bits(y, scales, means, indexes.numpy(), table.numpy())).sum(0)
    if params.dtype == torch.float64:
        means = means * 2.0**-exact.ACT_BITS
    v = torch.round(y.double() - means).abs().clamp_max_(table.shape[1] - 1)
    return table[scale_indexes(gc, scales), v.long()].sum(0)


@kernel()
def _bits(y, scales, means, indexes, table):  # pragma: no cover - compiled
    """``gaussian_bits``' look-ups for fixed-point scales and means, (C, K), before the sum over the channels."""
    out = np.empty(y.shape)
    top_scale, top = indexes.shape[0] - 1, table.shape[1] - 1
    for c in range(y.shape[0]):
        for k in range(y.shape[1]):
            i = indexes[int(min(max(scales[c, k], 0.0), top_scale))]
            v = abs(np.rint(y[c, k] - means[c, k] * _INV_STEP))
            out[c, k] = table[i, int(min(v, top))]
    return out


_BITS_FLOOR = 2.0**-30  # the smallest probability ``gaussian_bits`` counts: at most 30 bits a value
_BITS_SPAN = 8  # the bits table's distances from the mean, in the largest scale: beyond, every value costs 30 bits


def bits_table(gc: GaussianConditional) -> torch.Tensor:
    """The information content of an integer distance ``v`` from the mean under each table scale, (scales, V + 1)
    float64: ``-log2(max(Phi((0.5 - v) / s) - Phi((-0.5 - v) / s), 2**-30))``, with every distance from ``V`` on
    (more than 8 of the largest scale) at the floor, 30 bits. A look-up instead of two normal CDFs and a logarithm
    per coded value, element for element the same expression."""

    def build() -> torch.Tensor:
        s = gc.scale_table.double().view(-1, 1)
        v = torch.arange(int(_BITS_SPAN * float(s.max())) + 2, dtype=torch.float64)
        p = torch.special.ndtr((0.5 - v) / s) - torch.special.ndtr((-0.5 - v) / s)
        table = -torch.log2(p.clamp_min(_BITS_FLOOR))
        if not bool((table[:, -1] == -math.log2(_BITS_FLOOR)).all()):
            raise ValueError("scale table too wide for the bits table")
        return table

    return cached(gc, "bits_table", (gc.scale_table,), build)


def code_gaussian(
    coder: SymbolCoder, codec: GaussianConditionalLatentCodec, y: torch.Tensor | None, params: torch.Tensor
) -> torch.Tensor:
    """Codes the values ``y`` (C, K) with the Gaussians ``params`` ((2C, K): scales and means at the same K
    positions) predicts, using ``codec``'s Gaussian conditional; -> the decoded values, (C, K).

    Values whose scale is at the table's floor (index 0: about 1e-5 bits each) are left out when all of them round
    to their mean, which one flag says: then both sides take the means. Otherwise everything is coded, so decoding
    is exact either way. Fixed-point ``params`` (float64 integers, what real coding uses) give fixed-point decoded
    values, in one compiled step per side; ``code_gaussian_reference`` is the same as tensor operations."""
    gc = codec.gaussian_conditional
    compiled = compiled_tables(gc) if params.dtype == torch.float64 else None
    if compiled is None or params.device.type != "cpu":
        return code_gaussian_reference(coder, codec, y, params)
    scales, means = split_params(codec, params)
    shape, out = means.shape, torch.empty(means.numel(), dtype=torch.float64)
    s, m, o = (t.reshape(-1).contiguous().numpy() for t in (scales, means, out))
    table, tables = compiled
    if isinstance(coder, SymbolReader):
        coder.run(_decode_fixed, s, m, table, *tables, *FLAT_FLAG_TABLES, o)
    else:
        values = y.reshape(-1).double().contiguous().numpy()
        flag, symbols, indexes = _encode_fixed(values, s, m, table, o)
        if flag >= 0:
            coder.flag(bool(flag))
        coder.add(tables, symbols, indexes)
    return out.view(shape)


def code_gaussian_at(
    coder: SymbolCoder, codec: GaussianConditionalLatentCodec, y: torch.Tensor | None, acc: torch.Tensor,
    out: torch.Tensor, at: torch.Tensor,
) -> None:  # fmt: skip
    """``code_gaussian`` of the Gaussians a last exact layer gives as its accumulator ``acc`` (2C, K) (bias
    included, not yet floored: ``exact.floor_activations`` is applied here), the decoded values written to the
    columns ``at`` of ``out`` (C, N) in place: one compiled step per side for the floor, the coding and the
    scatter, the same symbols and values as the separate steps."""
    gc = codec.gaussian_conditional
    compiled = compiled_tables(gc) if acc.dtype == torch.float64 else None
    if compiled is None or acc.device.type != "cpu" or out.device.type != "cpu" or not out.is_contiguous():
        out[:, at] = code_gaussian(coder, codec, y, exact.floor_activations(acc.clone()))
        return
    (table, tables), first, a = compiled, scales_first(codec), acc.contiguous().numpy()
    if isinstance(coder, SymbolReader):
        coder.run(decode_at, a, first, table, *tables, *FLAT_FLAG_TABLES, out.numpy(), at.numpy())
    else:
        values = y.double().contiguous().numpy()
        flag, symbols, indexes = encode_at(values, a, first, table, out.numpy(), at.numpy())
        if flag >= 0:
            coder.flag(bool(flag))
        coder.add(tables, symbols, indexes)


def code_gaussian_reference(
    coder: SymbolCoder, codec: GaussianConditionalLatentCodec, y: torch.Tensor | None, params: torch.Tensor
) -> torch.Tensor:
    """``code_gaussian`` as tensor operations, for float or fixed-point ``params``."""
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


_LIMIT = exact.ACT_LIMIT
_STEP = float(2**exact.ACT_BITS)
_INV_STEP = 2.0**-exact.ACT_BITS


@kernel()
def _scale_indexes(scales, table):  # pragma: no cover - compiled
    idx = np.empty(scales.shape[0], np.int32)
    top = table.shape[0] - 1
    floor = False
    for i in range(scales.shape[0]):
        idx[i] = table[int(min(max(scales[i], 0.0), top))]  # ``index_table``: the thresholds below the scale
        floor = floor or idx[i] == 0
    return idx, floor


@kernel()
def _decode_fixed(
    words, pos, x, scales, means, indexes, cdf, start, length, offset, fcdf, fstart, flength, foffset, out
):  # pragma: no cover - compiled
    """``code_gaussian_reference``'s decoding for fixed-point parameters; -> (pos, state, symbols read)."""
    idx, floor = _scale_indexes(scales, indexes)
    every, count = True, 0
    if floor:
        flag, pos, x = decode_symbol(words, pos, x, 0, fcdf, fstart, flength, foffset)
        every, count = flag == 1, 1
    coded = idx if every else idx[idx != 0]  # the tables of the symbols sent, in order
    symbols = np.empty(coded.shape[0], np.int32)
    pos, x = decode_symbols(words, pos, x, coded, cdf, start, length, offset, symbols)
    j = 0
    for i in range(scales.shape[0]):
        if every or idx[i] != 0:
            out[i] = min(max(symbols[j] * _STEP + means[i], -_LIMIT), _LIMIT)
            j += 1
        else:
            out[i] = means[i]
    return pos, x, count + j


@kernel()
def _encode_fixed(values, scales, means, indexes, out):  # pragma: no cover - compiled
    """``code_gaussian_reference``'s coding for fixed-point parameters -> (the flag: -1 when none is sent, the
    symbols to code, their table indexes); the decoded values go to ``out``."""
    idx, floor = _scale_indexes(scales, indexes)
    n = scales.shape[0]
    symbols = np.empty(n, np.int32)
    off = False
    for i in range(n):
        symbols[i] = np.int32(np.rint(values[i] - means[i] * _INV_STEP))
        off = off or (idx[i] == 0 and symbols[i] != 0)
    every = off or not floor
    coded = 0
    for i in range(n):
        if every or idx[i] != 0:
            out[i] = min(max(symbols[i] * _STEP + means[i], -_LIMIT), _LIMIT)
            symbols[coded], idx[coded] = symbols[i], idx[i]
            coded += 1
        else:
            out[i] = means[i]
    return (np.int64(off) if floor else np.int64(-1)), symbols[:coded], idx[:coded]


@kernel()
def _params_from_acc(acc, scales_first):  # pragma: no cover - compiled
    """Accumulator (2C, K) -> floored, clamped scales and means, each (C K,) in ``code_gaussian``'s order."""
    c, k = acc.shape[0] // 2, acc.shape[1]
    s_row, m_row = (0, c) if scales_first else (c, 0)
    scales, means = np.empty(c * k), np.empty(c * k)
    for ch in range(c):
        for i in range(k):
            scales[ch * k + i] = min(max(np.floor(acc[s_row + ch, i]), -_LIMIT), _LIMIT)
            means[ch * k + i] = min(max(np.floor(acc[m_row + ch, i]), -_LIMIT), _LIMIT)
    return scales, means


@kernel()
def _scatter(values, out, at):  # pragma: no cover - compiled
    """``values`` (C K,) channel by channel -> the columns ``at`` of ``out`` (C, N)."""
    k = at.shape[0]
    for ch in range(out.shape[0]):
        for i in range(k):
            out[ch, at[i]] = values[ch * k + i]


@kernel()
def decode_at(
    words, pos, x, acc, scales_first, indexes, cdf, start, length, offset, fcdf, fstart, flength, foffset, out, at
):  # pragma: no cover - compiled
    """``code_gaussian_at``'s decoding: ``_decode_fixed`` of the floored accumulator, scattered to ``out``."""
    scales, means = _params_from_acc(acc, scales_first)
    values = np.empty(scales.shape[0])
    pos, x, count = _decode_fixed(
        words, pos, x, scales, means, indexes, cdf, start, length, offset, fcdf, fstart, flength, foffset, values
    )
    _scatter(values, out, at)
    return pos, x, count


@kernel()
def encode_at(y, acc, scales_first, indexes, out, at):  # pragma: no cover - compiled
    """``code_gaussian_at``'s coding: ``_encode_fixed`` of the values ``y`` (C, K) with the floored accumulator."""
    scales, means = _params_from_acc(acc, scales_first)
    values = np.empty(scales.shape[0])
    flag, symbols, idx = _encode_fixed(y.reshape(-1), scales, means, indexes, values)
    _scatter(values, out, at)
    return flag, symbols, idx


def _decoded(symbols: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Symbols (int32) around ``means`` -> decoded values: ``symbols + means`` for real means; for fixed-point ones
    ``symbols * 2**ACT_BITS + means``, clamped, which is ``to_fixed(symbols + means * 2**-ACT_BITS)`` exactly (both
    terms are integers far below 2**53) in two passes fewer."""
    if means.dtype != torch.float64:
        return symbols.to(means.dtype).add_(means)
    out = symbols.double().mul_(2**exact.ACT_BITS).add_(means)
    return out.clamp_(-exact.ACT_LIMIT, exact.ACT_LIMIT)
