"""The rANS layer: our compiled coder (``mutualfc.entropy.ans``) must give CompressAI's bytes and read CompressAI's
symbols back, from valid streams and from damaged ones alike; every length round-trips and none corrupts memory."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import GaussianConditional

from mutualfc.entropy import ans
from mutualfc.entropy.rans import FLAG_TABLES, SymbolReader, SymbolWriter, cdf_tables

SHORT_STREAM = 8  # CompressAI's encoder buffer overflows below about this many symbols


@pytest.fixture(scope="module")
def gaussian_tables():
    gc = GaussianConditional(None)
    gc.update_scale_table(torch.exp(torch.linspace(np.log(0.11), np.log(256), 64)))
    return gc, cdf_tables(gc)


def _with_flag(tables):
    cdfs, lengths, offsets = tables
    return [*cdfs, *FLAG_TABLES[0]], [*lengths, *FLAG_TABLES[1]], [*offsets, *FLAG_TABLES[2]]


@pytest.mark.parametrize("n", [8, 9, 31, 200, 2000])
def test_the_coder_gives_compressais_bytes_and_symbols(gaussian_tables, n):
    """At lengths CompressAI's buffer holds, both encoders agree byte for byte and both decoders read the same
    symbols back (read in two calls: the state carries over), values far outside the tables (escapes, both signs)
    and the flag's table included."""
    cdfs, lengths, offsets = _with_flag(gaussian_tables[1])
    flat = ans.flat_tables(cdfs, lengths, offsets)
    rng = np.random.RandomState(n)
    for trial in range(20):
        indexes = rng.randint(0, len(cdfs), n).tolist()
        spread = [1, 3, 40, 5000][trial % 4]  # the largest ones leave every table
        symbols = [int(v) if i < len(cdfs) - 1 else int(abs(v) % 2)
                   for v, i in zip(rng.randint(-spread, spread + 1, n), indexes, strict=True)]  # fmt: skip
        enc = BufferedRansEncoder()
        enc.encode_with_indexes(symbols, indexes, cdfs, lengths, offsets)
        data = enc.flush()
        idx = np.asarray(indexes, np.int32)
        assert ans.encode(np.asarray(symbols, np.int32), idx, flat) == data
        dec, cut = ans.Decoder(data), n // 3
        assert np.concatenate([dec.decode(idx[:cut], flat), dec.decode(idx[cut:], flat)]).tolist() == symbols


def test_damaged_streams_read_as_compressai_reads_them_zero_padded(gaussian_tables):
    """Random bytes read as CompressAI's decoder reads them followed by zeros (what decoders padded streams with
    before: ours reads zeros past the end), escapes with absurd lengths included."""
    cdfs, lengths, offsets = _with_flag(gaussian_tables[1])
    flat = ans.flat_tables(cdfs, lengths, offsets)
    rng = np.random.RandomState(7)
    for _ in range(400):
        data = rng.bytes(rng.randint(0, 120))
        idx = rng.randint(0, len(cdfs), 150).astype(np.int32)
        ref = RansDecoder()
        ref.set_stream(data + b"\0" * (4096 + 16 * len(data)))
        assert ans.Decoder(data).decode(idx, flat).tolist() == ref.decode_stream(idx.tolist(), cdfs, lengths, offsets)


def test_tables_that_are_not_cdfs_are_refused():
    with pytest.raises(ValueError, match="table 1"):
        ans.flat_tables([[0, 65536], [0, 70000, 65536]], [2, 3], [0, 0])


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
        r = SymbolReader(data)
        assert r.flag() and torch.equal(r.code(gc, None, indexes, torch.zeros(n, dtype=torch.float64)), values)


def test_a_one_symbol_stream_does_not_corrupt_memory():
    """The case that corrupted the heap through CompressAI's encoder (a residual stream of one flag), many times
    over in a fresh interpreter: it must exit cleanly."""
    code = ("from mutualfc.entropy.rans import SymbolWriter\n"
            "for _ in range(20000):\n"
            "    w = SymbolWriter(); w.flag(False); assert len(w.finish()) == 8\n")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_kernels_compile_in_memory_where_no_cache_directory_is_writable():
    """A read-only install (numba finds no cache directory it may write): the package still imports and codes, the
    kernels compiled in memory instead of refusing the module."""
    code = (
        "import numba.core.caching as c\n"
        "c.CacheImpl._locator_classes = []\n"  # what numba sees when neither the sources nor the home are writable
        "import torch\n"
        "import mutualfc.codecs\n"
        "from compressai.entropy_models import GaussianConditional\n"
        "from compressai.latent_codecs import GaussianConditionalLatentCodec\n"
        "from compressai.models.base import get_scale_table\n"
        "from mutualfc.entropy import SymbolReader, SymbolWriter, code_gaussian\n"
        "from mutualfc.nn.exact import gelu\n"
        "gc = GaussianConditional(None)\n"
        "gc.update_scale_table(get_scale_table(), force=True)\n"
        "codec = GaussianConditionalLatentCodec(gaussian_conditional=gc)\n"
        "params = torch.cat([torch.full((4, 9), 700.0), torch.arange(36.0).view(4, 9) * 64]).double()\n"
        "y = torch.randn(4, 9, generator=torch.Generator().manual_seed(0)).double() * 3\n"
        "w = SymbolWriter()\n"
        "enc = code_gaussian(w, codec, y, params)\n"
        "assert torch.equal(code_gaussian(SymbolReader(w.finish()), codec, None, params), enc)\n"
        "assert gelu(torch.tensor([[-4096.0, 0.0, 4096.0]], dtype=torch.float64)).tolist() == [[0.0, 0.0, 4096.0]]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
