"""The rANS layer: short streams (fewer symbols than CompressAI's encoder buffer can hold) are written by our own
port of its encoder, which must give CompressAI's bytes; every length round-trips and none corrupts memory."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from compressai.ans import BufferedRansEncoder
from compressai.entropy_models import GaussianConditional

from mutualfc.entropy.rans import FLAG_TABLES, SHORT_STREAM, SymbolReader, SymbolWriter, cdf_tables, encode_short


@pytest.fixture(scope="module")
def gaussian_tables():
    gc = GaussianConditional(None)
    gc.update_scale_table(torch.exp(torch.linspace(np.log(0.11), np.log(256), 64)))
    return gc, cdf_tables(gc)


@pytest.mark.parametrize("n", [8, 9, 31, 200, 2000])
def test_the_short_stream_encoder_gives_compressais_bytes(gaussian_tables, n):
    """At lengths CompressAI's buffer holds, both encoders agree byte for byte, values far outside the tables (bypass
    coding, both signs) and the flag's table included."""
    _, (cdfs, lengths, offsets) = gaussian_tables
    cdfs, lengths, offsets = [*cdfs, *FLAG_TABLES[0]], [*lengths, *FLAG_TABLES[1]], [*offsets, *FLAG_TABLES[2]]
    rng = np.random.RandomState(n)
    for trial in range(20):
        indexes = rng.randint(0, len(cdfs), n).tolist()
        spread = [1, 3, 40, 5000][trial % 4]  # the largest ones leave every table
        symbols = [int(v) if i < len(cdfs) - 1 else int(abs(v) % 2)
                   for v, i in zip(rng.randint(-spread, spread + 1, n), indexes, strict=True)]  # fmt: skip
        enc = BufferedRansEncoder()
        enc.encode_with_indexes(symbols, indexes, cdfs, lengths, offsets)
        assert encode_short(symbols, indexes, cdfs, lengths, offsets) == enc.flush()


def test_streams_of_every_short_length_round_trip(gaussian_tables):
    """0 to SHORT_STREAM symbols (a lone floor-scale flag first): written without overflowing anything, read back."""
    gc, _ = gaussian_tables
    for n in range(SHORT_STREAM + 2):
        w = SymbolWriter()
        w.flag(True)
        values = torch.arange(n, dtype=torch.float64) * 7 - 20  # some beyond the small scales' tables
        indexes = torch.arange(n) % 64
        w.code(gc, values, indexes, torch.zeros(n, dtype=torch.float64))
        data = w.finish()
        r = SymbolReader(data + b"\0" * 16)
        assert r.flag() and torch.equal(r.code(gc, None, indexes, torch.zeros(n, dtype=torch.float64)), values)


def test_a_one_symbol_stream_does_not_corrupt_memory():
    """The case that corrupted the heap through CompressAI's encoder (a residual stream of one flag), many times
    over in a fresh interpreter: it must exit cleanly."""
    code = ("from mutualfc.entropy.rans import SymbolWriter\n"
            "for _ in range(20000):\n"
            "    w = SymbolWriter(); w.flag(False); assert len(w.finish()) == 8\n")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
