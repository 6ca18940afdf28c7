"""rANS streams for real coding (CompressAI's format, ``mutualfc.entropy.ans``'s coder): a writer and a reader that
share one calling sequence.

The encoder and the decoder run the same code with a ``SymbolWriter`` or a ``SymbolReader`` in hand, so the order
of the symbols and the tables they use match by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from compressai.entropy_models.entropy_models import EntropyModel

from mutualfc.entropy.ans import Decoder, FlatTables, encode, flat_tables, join_tables
from mutualfc.nn.caching import cached, stamps

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


FLAT_FLAG_TABLES = flat_tables(*FLAG_TABLES)


def model_tables(model: EntropyModel) -> FlatTables:
    """``cdf_tables`` as the flat arrays the coder takes, cached on the model like them; models with the same tables
    share one object (a stream joins each set of tables once)."""

    def build() -> FlatTables:
        tables = cdf_tables(model)
        hit = _FLAT.get(id(tables))
        if hit is None or hit[0] is not tables:
            if len(_FLAT) > 64:
                _FLAT.clear()
            hit = _FLAT[id(tables)] = (tables, flat_tables(*tables))
        return hit[1]

    return cached(model, "flat_tables", (model.quantized_cdf, model.cdf_length, model.offset), build)


_FLAT: dict[int, tuple[Tables, FlatTables]] = {}
_JOINED: dict[tuple[int, ...], tuple[list[FlatTables], FlatTables, list[int]]] = {}


def _joined(sets: list[FlatTables]) -> tuple[FlatTables, list[int]]:
    """``join_tables`` of these table sets, kept for the next stream that uses the same sets in the same order (every
    image of a model: the sets are the model's cached ``model_tables``, held here so that their ids stay theirs)."""
    key = tuple(id(t) for t in sets)
    hit = _JOINED.get(key)
    if hit is None or any(a is not b for a, b in zip(hit[0], sets, strict=True)):
        if len(_JOINED) > 64:
            _JOINED.clear()
        hit = _JOINED[key] = (list(sets), *join_tables(sets))
    return hit[1], hit[2]


class SymbolWriter:
    """Encoder side of one rANS stream: the symbols of every coding step are collected in decoding order and coded
    in one pass at ``finish``."""

    def __init__(self):
        self._parts: list[tuple[FlatTables, np.ndarray, np.ndarray]] = []

    def code(self, model: EntropyModel, values: torch.Tensor, indexes: torch.Tensor, means: torch.Tensor):
        """-> the decoded values (``round(values - means) + means``, exactly what the reader returns)."""
        return self.symbols(model, values, indexes, means).to(means.dtype) + means

    def symbols(
        self, model: EntropyModel, values: torch.Tensor, indexes: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        """Codes ``round(values - means)`` with the tables ``indexes`` -> those symbols (int32)."""
        symbols = torch.round(values - means).int()
        self.add(model_tables(model), symbols.numpy(), indexes.int().numpy())
        return symbols

    def add(self, tables: FlatTables, symbols: np.ndarray, indexes: np.ndarray) -> None:
        """Codes ``symbols`` (int32) with the tables ``indexes`` (int32) of ``tables`` (for compiled coding steps)."""
        self._parts.append((tables, symbols, indexes))

    def flag(self, value: bool) -> bool:
        self.add(FLAT_FLAG_TABLES, np.asarray([int(value)], np.int32), np.zeros(1, np.int32))
        return value

    @property
    def symbol_count(self) -> int:
        """Symbols collected so far (flags included)."""
        return sum(symbols.size for _, symbols, _ in self._parts)

    def finish(self) -> bytes:
        if not self._parts:
            return b""
        sets = list({id(t): t for t, _, _ in self._parts}.values())  # each table set once, in order of first use
        tables, firsts = _joined(sets)
        first = {id(t): f for t, f in zip(sets, firsts, strict=True)}
        symbols = np.concatenate([s for _, s, _ in self._parts])
        indexes = np.concatenate([i + np.int32(first[id(t)]) for t, _, i in self._parts])
        return encode(symbols, indexes, tables)


class SymbolReader:
    """Decoder side: the same calls, in the same order, read the symbols back (``values`` is ignored)."""

    def __init__(self, data: bytes):
        self._dec = Decoder(data)

    def code(self, model: EntropyModel, values, indexes: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        return self.symbols(model, values, indexes).to(means.dtype) + means

    def symbols(self, model: EntropyModel, values, indexes: torch.Tensor, means=None) -> torch.Tensor:
        """The next symbols, one per table index (int32); ``values`` and ``means`` are the writer's."""
        symbols = self._dec.decode(indexes.int().contiguous().numpy(), model_tables(model))
        _counted(symbols.size)
        return torch.from_numpy(symbols)

    def run(self, kernel, *args) -> None:
        """A compiled decoding step (``Decoder.run``) whose result is the number of symbols it read."""
        _counted(self._dec.run(kernel, *args))

    def flag(self, value=None) -> bool:
        _counted(1)
        return int(self._dec.decode(np.zeros(1, np.int32), FLAT_FLAG_TABLES)[0]) == 1


SymbolCoder = SymbolWriter | SymbolReader
