"""Entropy coding: rANS streams (CompressAI's coder) written and read by one calling sequence, Gaussian coding of
latent columns, and the single-threaded context that keeps the encoder's float steps reproducible."""

from mutualfc.entropy.gaussian import code_gaussian, gaussian_bits, medians, scale_indexes, split_params
from mutualfc.entropy.rans import (
    FLAG_TABLES,
    SymbolCoder,
    SymbolReader,
    SymbolWriter,
    cdf_tables,
    count_symbols,
    reproducible_threads,  # fmt: skip
)

__all__ = ["FLAG_TABLES", "SymbolCoder", "SymbolReader", "SymbolWriter", "cdf_tables", "code_gaussian", "count_symbols",
           "gaussian_bits", "medians", "reproducible_threads", "scale_indexes", "split_params"]  # fmt: skip
