"""The entropy coder's speed on this machine: nanoseconds per symbol to encode and to decode a stream of Gaussian
symbols with the shipped mutual model's residual tables (the scale indexes and values spread as at high qualities),
checking that the decoded symbols are the encoded ones. Prints one JSON line; writes nothing.

    python benchmarks/rans.py --symbols 48000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _best(fn, repeat: int) -> float:
    """Fastest of ``repeat`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=48_000, help="symbols per stream (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs; the fastest counts (default: %(default)s)")
    ap.add_argument("--task", default="yolov5n-coco", help="whose mutual model's tables (default: %(default)s)")
    args = ap.parse_args()
    from mutualfc.codecs import create_codec
    from mutualfc.entropy import ans
    from mutualfc.entropy.rans import model_tables
    from mutualfc.tasks import create_task

    net = create_codec("mutual", create_task(args.task)).net
    tables = model_tables(net.bfc.latent_codec.latent_codec["y"].latent_codec["y0"].latent_codec["y"]
                          .gaussian_conditional)  # fmt: skip
    rng = np.random.default_rng(0)
    indexes = rng.integers(5, 40, args.symbols).astype(np.int32)
    symbols = np.rint(rng.normal(0, 1.5, args.symbols)).astype(np.int32)  # a few escapes at the small scales
    data = ans.encode(symbols, indexes, tables)
    if not np.array_equal(ans.Decoder(data).decode(indexes, tables), symbols):
        raise SystemExit("decoded symbols differ from the encoded ones")
    enc = _best(lambda: ans.encode(symbols, indexes, tables), args.repeat)
    dec = _best(lambda: ans.Decoder(data).decode(indexes, tables), args.repeat)
    n = args.symbols
    out = {"symbols": n, "bits_per_symbol": round(8 * len(data) / n, 3)}
    out |= {"encode_ns_per_symbol": round(1e9 * enc / n, 1), "decode_ns_per_symbol": round(1e9 * dec / n, 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
