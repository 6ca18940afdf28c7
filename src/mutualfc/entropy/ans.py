"""rANS in CompressAI's stream format (64-bit state, 32-bit words, 16-bit probabilities, 4-bit escapes for values
outside a table), compiled with numba.

CompressAI's coder converts every CDF table it is handed, as Python lists, on every call; a decoder calls it once
per coding step and the tables of a Gaussian model hold about 27,000 entries, so most of the entropy coder's time went
into that conversion. Here the tables are flat arrays built once per model (``FlatTables``), and the coder is the same
algorithm (ryg_rans' ``rans64.h`` as CompressAI drives it), so the bytes and the symbols are CompressAI's: tests
compare both ways. Reads past the end of a stream give zero words: a damaged stream reads as CompressAI's decoder
reads it zero-padded, and never outside its buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mutualfc.nn.kernels import kernel

PRECISION = 16  # probabilities in 1/2**16
BYPASS_BITS = 4  # escape values are sent 4 bits at a time
_BYPASS_MAX = (1 << BYPASS_BITS) - 1
_L = np.uint64(1 << 31)  # the state's lower bound (RANS64_L)
_MASK = np.uint64((1 << PRECISION) - 1)
_P = np.uint64(PRECISION)
_B = np.uint64(BYPASS_BITS)
_BMASK = np.uint64(_BYPASS_MAX)
_W = np.uint64(32)
_WORD = np.uint64(0xFFFFFFFF)


class FlatTables(NamedTuple):
    """A model's CDF tables one after another: table ``i`` is ``cdf[start[i] : start[i] + length[i]]`` (its last
    entry 2**16, its last symbol the escape), its first symbol is ``offset[i]``."""

    cdf: np.ndarray  # int32
    start: np.ndarray  # int64
    length: np.ndarray  # int32
    offset: np.ndarray  # int32


def flat_tables(cdfs: list[list[int]], lengths: list[int], offsets: list[int]) -> FlatTables:
    """CompressAI's table lists (each CDF cut to its length) -> ``FlatTables``; ValueError for a CDF that is not
    non-decreasing from 0 to 2**16 (the decoder's binary search finds CompressAI's linear search's symbol only
    there)."""
    length = np.asarray(lengths, np.int32)
    start = np.zeros(len(lengths), np.int64)
    if len(lengths) > 1:
        start[1:] = np.cumsum(length[:-1])
    cdf = np.asarray([v for c in cdfs for v in c], np.int32)
    for i, n in enumerate(lengths):
        c = cdf[start[i] : start[i] + n]
        if n < 2 or c[0] != 0 or c[-1] != 1 << PRECISION or bool(np.any(np.diff(c) < 0)):
            raise ValueError(f"CDF table {i} is not a non-decreasing CDF from 0 to 2**{PRECISION}")
    return FlatTables(cdf, start, length, np.asarray(offsets, np.int32))


def join_tables(tables: list[FlatTables]) -> tuple[FlatTables, list[int]]:
    """Several table sets as one -> (the joined set, the index of each set's first table in it)."""
    firsts = np.cumsum([0] + [len(t.length) for t in tables[:-1]]).tolist()
    shifts = np.cumsum([0] + [len(t.cdf) for t in tables[:-1]])
    joined = FlatTables(
        np.concatenate([t.cdf for t in tables]),
        np.concatenate([t.start + s for t, s in zip(tables, shifts, strict=True)]),
        np.concatenate([t.length for t in tables]),
        np.concatenate([t.offset for t in tables]),
    )
    return joined, firsts


@kernel()
def _escape_count(raw: int) -> int:
    n = 0
    while (raw >> (n * BYPASS_BITS)) != 0:
        n += 1
    return n


@kernel()
def _encode(symbols, indexes, cdf, start, length, offset):  # pragma: no cover - compiled
    # the coding steps (start, frequency or 0 for an escape nibble) in decoding order, as CompressAI buffers them
    n_steps = 0
    for i in range(symbols.shape[0]):
        k = indexes[i]
        top = length[k] - 2
        value = np.int64(symbols[i]) - offset[k]
        n_steps += 1
        if value < 0 or value >= top:
            raw = (-2 * value - 1) & 0xFFFFFFFF if value < 0 else (2 * (value - top)) & 0xFFFFFFFF
            nb = _escape_count(raw)
            n_steps += nb // _BYPASS_MAX + 1 + nb
    starts = np.empty(n_steps, np.int64)
    freqs = np.empty(n_steps, np.int64)  # 0: an escape nibble
    j = 0
    for i in range(symbols.shape[0]):
        k = indexes[i]
        top = length[k] - 2
        value = np.int64(symbols[i]) - offset[k]
        raw = 0
        if value < 0:
            raw, value = (-2 * value - 1) & 0xFFFFFFFF, top
        elif value >= top:
            raw, value = (2 * (value - top)) & 0xFFFFFFFF, top
        base = start[k]
        starts[j] = cdf[base + value] & 0xFFFF
        freqs[j] = (cdf[base + value + 1] - cdf[base + value]) & 0xFFFF
        j += 1
        if value == top:
            nb = _escape_count(raw)
            count = nb
            while count >= _BYPASS_MAX:
                starts[j], freqs[j] = _BYPASS_MAX, 0
                j += 1
                count -= _BYPASS_MAX
            starts[j], freqs[j] = count, 0
            j += 1
            for b in range(nb):
                starts[j], freqs[j] = (raw >> (b * BYPASS_BITS)) & _BYPASS_MAX, 0
                j += 1
    out = np.empty(n_steps + 2, np.uint32)  # at most one word per step, then the final state's two
    ptr = out.shape[0]
    x = _L
    escape_limit = ((_L >> _P) << _W) * np.uint64(1 << (PRECISION - BYPASS_BITS))
    for i in range(n_steps - 1, -1, -1):  # rANS codes last-in first-out
        f = freqs[i]
        limit = escape_limit if f == 0 else ((_L >> _P) << _W) * np.uint64(f)
        if x >= limit:
            ptr -= 1
            out[ptr] = np.uint32(x & _WORD)
            x = x >> _W
        s = np.uint64(starts[i])
        if f == 0:
            x = (x << _B) | s
        else:
            uf = np.uint64(f)
            x = ((x // uf) << _P) + (x % uf) + s
    ptr -= 2
    out[ptr] = np.uint32(x & _WORD)
    out[ptr + 1] = np.uint32(x >> _W)
    return out[ptr:]


def encode(symbols: np.ndarray, indexes: np.ndarray, tables: FlatTables) -> bytes:
    """The rANS stream of ``symbols`` (int32), each with the table ``indexes[i]`` (int32): CompressAI's
    ``BufferedRansEncoder.encode_with_indexes`` then ``flush``, for any number of symbols."""
    if not symbols.size:
        return b""
    return _encode(symbols, indexes, *tables).astype("<u4").tobytes()


@kernel()
def _word(words, pos):
    return np.uint64(words[pos]) if pos < words.shape[0] else np.uint64(0)


@kernel()
def _refill(words, pos, x):
    if x < _L:
        x = (x << _W) | _word(words, pos)
        pos += 1
    return pos, x


@kernel(inline=True)
def _symbol_at(cdf, base, n, s0, cum):  # pragma: no cover - compiled
    """The last entry of the table at ``base`` (``n`` entries) at or below ``cum`` (CompressAI searches linearly
    from the table's start for the entry after it): galloping out from ``s0``, the symbol 0, where most symbols
    are, then bisecting; cdf[0] = 0 <= cum < cdf[n - 1]."""
    step = 1
    if cdf[base + s0] <= cum:
        lo, hi = s0, s0 + 1
        while cdf[base + hi] <= cum:
            lo, step = hi, step * 2
            hi = min(s0 + step, n - 1)
    else:
        lo, hi = s0 - 1, s0
        while cdf[base + lo] > cum:
            hi, step = lo, step * 2
            lo = max(s0 - step, 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cdf[base + mid] > cum:
            hi = mid
        else:
            lo = mid
    return lo


@kernel()
def _escaped_value(words, pos, x, top):  # pragma: no cover - compiled
    """After an escape symbol: its value, sent 4 bits at a time, its length first -> (value, pos, x). A call of
    its own, out of the decoding loops (rare)."""
    val = np.int64(x & _BMASK)
    x = x >> _B
    pos, x = _refill(words, pos, x)
    count = val
    while val == _BYPASS_MAX:
        val = np.int64(x & _BMASK)
        x = x >> _B
        pos, x = _refill(words, pos, x)
        count += val
    raw = np.int64(0)
    for b in range(count):
        val = np.int64(x & _BMASK)
        x = x >> _B
        pos, x = _refill(words, pos, x)
        # a 32-bit value: CompressAI's shift by 32 and more is x86's, which takes the count modulo 32
        raw |= (val << ((b * BYPASS_BITS) & 31)) & 0xFFFFFFFF
    raw = raw - (1 << 32) if raw >= 1 << 31 else raw  # as int32
    value = raw >> 1
    return (-value - 1 if raw & 1 else value + top), pos, x


@kernel(inline=True)
def decode_symbol(words, pos, x, k, cdf, start, length, offset):  # pragma: no cover - compiled
    """One symbol with table ``k`` from the state ``x`` reading ``words`` at ``pos`` -> (symbol, pos, x), for
    compiled callers that decode one symbol (a flag); ``decode_symbols`` decodes many, faster."""
    base, n = start[k], length[k]
    s = _symbol_at(cdf, base, n, min(max(-offset[k], 0), n - 2), np.int64(x & _MASK))
    x = np.uint64(cdf[base + s + 1] - cdf[base + s]) * (x >> _P) + (x & _MASK) - np.uint64(cdf[base + s])
    pos, x = _refill(words, pos, x)
    value = np.int64(s)
    if value == n - 2:  # an escape
        value, pos, x = _escaped_value(words, pos, x, n - 2)
    return np.int32(value + offset[k]), pos, x


@kernel()
def decode_symbols(words, pos, x, indexes, cdf, start, length, offset, out):  # pragma: no cover - compiled
    """``decode_symbol`` with each table of ``indexes`` in turn into ``out`` -> (pos, x): its steps written out in
    the loop, the refill inline and the escape a call (numba's inlining of the tuple-returning ``decode_symbol``
    runs about half as fast)."""
    words_n = words.shape[0]
    for i in range(indexes.shape[0]):
        k = indexes[i]
        base, n = start[k], length[k]
        s = _symbol_at(cdf, base, n, min(max(-offset[k], 0), n - 2), np.int64(x & _MASK))
        x = np.uint64(cdf[base + s + 1] - cdf[base + s]) * (x >> _P) + (x & _MASK) - np.uint64(cdf[base + s])
        if x < _L:
            x = (x << _W) | (np.uint64(words[pos]) if pos < words_n else np.uint64(0))
            pos += 1
        value = np.int64(s)
        if value == n - 2:  # an escape
            value, pos, x = _escaped_value(words, pos, x, n - 2)
        out[i] = np.int32(value + offset[k])
    return pos, x


class Decoder:
    """The reading side of one stream: ``decode`` may be called once per coding step, the state carries over."""

    def __init__(self, data: bytes):
        data = bytes(data)
        pad = -len(data) % 4
        self._words = np.frombuffer(data + b"\0" * pad, dtype="<u4").astype(np.uint32)
        w = self._words
        self._pos = 2
        self._x = np.uint64((int(w[1]) if w.size > 1 else 0) << 32 | (int(w[0]) if w.size else 0))

    def decode(self, indexes: np.ndarray, tables: FlatTables) -> np.ndarray:
        """The next symbols, one per table index (int32 array) -> int32 array."""
        out = np.empty(indexes.shape[0], np.int32)
        self._pos, self._x = decode_symbols(self._words, self._pos, self._x, indexes, *tables, out)
        return out

    def run(self, kernel, *args):
        """``kernel(words, pos, state, *args)`` -> ``(pos, state, result)``, a compiled step that decodes with
        ``decode_symbol``: the stream's position and state carry over -> result."""
        self._pos, self._x, result = kernel(self._words, self._pos, self._x, *args)
        return result
