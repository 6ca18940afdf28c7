"""rANS streams for real coding: CompressAI's coder behind a writer and a reader that share one calling sequence.

The encoder and the decoder run the same code with a ``SymbolWriter`` or a ``SymbolReader`` in hand, so the order
of the symbols and the tables they use match by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models.entropy_models import EntropyModel

from mutualfc.nn.caching import stamps

Tables = tuple[list[list[int]], list[int], list[int]]


class _Count:
    value = 0


_COUNTERS: list[_Count] = []


@contextlib.contextmanager
def count_symbols() -> Iterator[_Count]:
    """Counts the symbols every ``SymbolReader`` decodes inside the block (``.value``): the entropy decoder's work,
    which complexity figures report apart from multiply-accumulates."""
    c = _Count()
    _COUNTERS.append(c)
    try:
        yield c
    finally:
        _COUNTERS.remove(c)


def _counted(n: int) -> None:
    for c in _COUNTERS:
        c.value += n


@contextlib.contextmanager
def reproducible_threads() -> Iterator[None]:
    """For the encoder's float steps (analysis transforms, residual decisions): intra-op parallelism changes float
    summation order, so they run single-threaded, and what is coded does not depend on the caller's thread count.
    Everything that decides the entropy coder or the decoded values is exact integer arithmetic (``mutualfc.nn.exact``)
    and runs on any number of threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


_SHARED_TABLES: dict[bytes, Tables] = {}


def cdf_tables(model: EntropyModel) -> Tables:
    """The model's CDF tables as the Python lists CompressAI's rANS coder takes, each CDF cut to its length; cached
    on the model (CompressAI converts the whole padded table on every call) and rebuilt when the table tensors were
    replaced or changed in place (``update()``, ``load_state_dict``). Models with the same tables (every Gaussian
    conditional of a network has the same scale table) get the same list objects, so that a stream coding several
    of them passes each table once."""
    key = stamps((model.quantized_cdf, model.cdf_length, model.offset))
    cached = getattr(model, "_mutualfc_tables", None)
    if cached is None or cached[0] != key:
        lengths = model.cdf_length.reshape(-1).int().tolist()
        offsets = model.offset.reshape(-1).int().tolist()
        cdfs = [row[:n] for row, n in zip(model.quantized_cdf.tolist(), lengths, strict=True)]
        content = np.asarray([len(cdfs), *lengths, *offsets, *(v for c in cdfs for v in c)], np.int64).tobytes()
        if len(_SHARED_TABLES) > 64:
            _SHARED_TABLES.clear()
        cached = (key, _SHARED_TABLES.setdefault(content, (cdfs, lengths, offsets)))
        model._mutualfc_tables = cached
    return cached[1]


# A binary flag (CompressAI CDF: 16-bit precision, last entry the escape): 0 costs about 0.012 bits, 1 about 7.
FLAG_TABLES: Tables = ([[0, 65000, 65534, 65536]], [4], [0])


# CompressAI's ``BufferedRansEncoder.flush`` gives its output one 32-bit word per coded symbol and writes two for the
# final state: a stream of one symbol (a residual stream whose only symbol is its floor-scale flag) writes past the
# buffer and corrupts the heap. Streams this short are encoded by ``encode_short``: the same bytes, no overflow.
SHORT_STREAM = 8
_PRECISION, _BYPASS_BITS, _RANS_L = 16, 4, 1 << 31
_BYPASS_MAX = (1 << _BYPASS_BITS) - 1


def encode_short(symbols: list[int], indexes: list[int], cdfs: list[list[int]], lengths: list[int],
                 offsets: list[int]) -> bytes:  # fmt: skip
    """CompressAI's ``BufferedRansEncoder`` (``encode_with_indexes`` then ``flush``: 64-bit rANS, 16-bit
    probabilities, 4-bit bypass coding of values outside a table) in Python integers, with an output of any length.
    ``tests/test_bitstream.py`` checks that it gives CompressAI's bytes."""
    syms: list[tuple[int, int, bool]] = []  # (start, range, bypass), in coding order
    for symbol, i in zip(symbols, indexes, strict=True):
        cdf, top = cdfs[i], lengths[i] - 2
        value, raw = symbol - offsets[i], 0
        if value < 0:
            raw, value = (-2 * value - 1) & 0xFFFFFFFF, top
        elif value >= top:
            raw, value = (2 * (value - top)) & 0xFFFFFFFF, top
        syms.append((cdf[value] & 0xFFFF, (cdf[value + 1] - cdf[value]) & 0xFFFF, False))
        if value == top:
            n = 0
            while raw >> (n * _BYPASS_BITS):
                n += 1
            count = n
            while count >= _BYPASS_MAX:
                syms.append((_BYPASS_MAX, 0, True))
                count -= _BYPASS_MAX
            syms.append((count, 0, True))
            syms += [((raw >> (j * _BYPASS_BITS)) & _BYPASS_MAX, 0, True) for j in range(n)]
    x, emitted = _RANS_L, []
    for start, freq, bypass in reversed(syms):  # rANS codes last-in first-out
        limit = ((_RANS_L >> _PRECISION) << 32) * (1 << (_PRECISION - _BYPASS_BITS) if bypass else freq)
        if x >= limit:
            emitted.append(x & 0xFFFFFFFF)
            x >>= 32
        x = (x << _BYPASS_BITS) | start if bypass else ((x // freq) << _PRECISION) + x % freq + start
    words = [x & 0xFFFFFFFF, x >> 32, *reversed(emitted)]  # the buffer from the final state to its end
    return np.asarray(words, dtype="<u4").tobytes()


class SymbolWriter:
    """Encoder side of one rANS stream (CompressAI's ``BufferedRansEncoder``): the symbols of every coding step are
    collected in decoding order and handed to the coder in one call at ``finish`` (each call converts the CDF tables
    it is given, so one call per stream instead of one per step)."""

    def __init__(self):
        self._parts: list[tuple[Tables, torch.Tensor, torch.Tensor]] = []

    def code(self, model: EntropyModel, values: torch.Tensor, indexes: torch.Tensor, means: torch.Tensor):
        """-> the decoded values (``round(values - means) + means``, exactly what the reader returns)."""
        return self.symbols(model, values, indexes, means).to(means.dtype) + means

    def symbols(
        self, model: EntropyModel, values: torch.Tensor, indexes: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        """Codes ``round(values - means)`` with the tables ``indexes`` -> those symbols (int32)."""
        symbols = torch.round(values - means).int()
        self._parts.append((cdf_tables(model), symbols, indexes.int()))
        return symbols

    def flag(self, value: bool) -> bool:
        self._parts.append(
            (FLAG_TABLES, torch.tensor([int(value)], dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
        )
        return value

    @property
    def symbol_count(self) -> int:
        """Symbols collected so far (flags included)."""
        return sum(symbols.numel() for _, symbols, _ in self._parts)

    def finish(self) -> bytes:
        if not self._parts:
            return b""
        used: dict[int, int] = {}  # table set (by identity) -> how many of its tables the symbols use
        for tables, _, idx in self._parts:
            used[id(tables)] = max(used.get(id(tables), 0), int(idx.max()) + 1 if idx.numel() else 0)
        start: dict[int, int] = {}  # table set -> its first index in the combined tables
        cdfs, lengths, offsets = [], [], []
        for tables, _, _ in self._parts:  # only the tables used: the coder converts every table it is given
            if id(tables) not in start:
                start[id(tables)], n = len(cdfs), used[id(tables)]
                cdfs, lengths, offsets = cdfs + tables[0][:n], lengths + tables[1][:n], offsets + tables[2][:n]
        symbols = torch.cat([s for _, s, _ in self._parts]).tolist()
        indexes = torch.cat([i + start[id(t)] for t, _, i in self._parts]).tolist()
        if len(symbols) < SHORT_STREAM:
            return encode_short(symbols, indexes, cdfs, lengths, offsets)
        enc = BufferedRansEncoder()
        enc.encode_with_indexes(symbols, indexes, cdfs, lengths, offsets)
        return enc.flush()


class SymbolReader:
    """Decoder side: the same calls, in the same order, read the symbols back (``values`` is ignored). Each call
    passes the CDF tables only up to the highest index its symbols use (the coder converts every table it is given
    on every call, and the tables grow with the index: scale tables are sorted by scale)."""

    def __init__(self, data: bytes):
        self._dec = RansDecoder()
        self._dec.set_stream(data)

    def code(self, model: EntropyModel, values, indexes: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        return self.symbols(model, values, indexes).to(means.dtype) + means

    def symbols(self, model: EntropyModel, values, indexes: torch.Tensor, means=None) -> torch.Tensor:
        """The next symbols, one per table index (int32); ``values`` and ``means`` are the writer's."""
        cdfs, lengths, offsets = cdf_tables(model)
        n = int(indexes.max()) + 1 if indexes.numel() else 0
        symbols = self._dec.decode_stream(indexes.tolist(), cdfs[:n], lengths[:n], offsets[:n])
        _counted(len(symbols))
        return torch.from_numpy(np.fromiter(symbols, np.int32, len(symbols)))

    def flag(self, value=None) -> bool:
        _counted(1)
        return self._dec.decode_stream([0], *FLAG_TABLES)[0] == 1


SymbolCoder = SymbolWriter | SymbolReader
