"""The exact layers' two product paths side by side on this machine: float64 (``F.linear`` on the patch matrix)
and int8 digit products (``mutualfc.nn.intgemm``), for the layer shapes the shipped codecs use, with the digit
counts real activations take. Checks that both give the same values (exactly) and prints the speed of each, so
that on another CPU (AVX2, ARM) one can see whether the digit path still pays where ``intgemm.usable`` takes it.
Writes results/intgemm.json and results/intgemm.md.

    python benchmarks/intgemm.py --threads 1
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mutualfc.eval.runner import cpu_model
from mutualfc.nn import exact, intgemm
from mutualfc.nn.sparse import patch_rows

ROOT = Path(__file__).resolve().parents[1]
# (name, in channels, out channels, kernel, cells K, largest |activation|): the codecs' large exact layers
SHAPES = [
    ("residual trunk 3x3", 128, 128, 3, 250, 30_000),
    ("hyper synthesis up-convolution", 128, 512, 3, 80, 30_000),
    ("hyper synthesis last convolution", 128, 256, 3, 200, 30_000),
    ("trunk 3x3, three-digit activations", 128, 128, 3, 250, 3_000_000),
    ("channel context 3x3 (float64 path)", 64, 64, 3, 200, 30_000),
    ("trunk input 1x1 (float64 path)", 768, 128, 1, 300, 30_000),
]


def _float64(conv: torch.nn.Conv2d, x: torch.Tensor, src: torch.Tensor | None, taps: int) -> torch.Tensor:
    """The float64 path: the patch matrix times the layer's scaled integer weights."""
    w, b = exact.scaled_params(conv)
    return F.linear(x.T if src is None else patch_rows(x, src, taps), w, b)


def _time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=30, help="timed runs per path; the fastest counts (default: 30)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "results", help="where results go (default: results/)")
    args = ap.parse_args()
    if args.threads < 1 or args.repeat < 1:
        ap.error("--threads and --repeat must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, c_in, c_out, k, cells, peak in SHAPES:
        conv = torch.nn.Conv2d(c_in, c_out, k, padding=k // 2)
        n = cells * 2  # source columns: the cells and their neighbourhood
        x = torch.randint(-peak, peak + 1, (c_in, n)).double()
        taps = k * k
        src = None if k == 1 else torch.randint(-1, n, (taps * cells,))
        float64 = functools.partial(_float64, conv, x, src, taps)
        digits = functools.partial(intgemm.linear_at, conv, x, src, taps)
        same = bool(torch.equal(float64(), digits()))
        taken = intgemm.usable(x, cells, c_in * taps, c_out, taps)
        f_ms, d_ms = _time(float64, args.repeat), _time(digits, args.repeat)
        rows.append({"layer": name, "in": c_in, "out": c_out, "kernel": k, "cells": cells, "peak": peak,
                     "float64_ms": round(f_ms, 3), "digits_ms": round(d_ms, 3), "speedup": round(f_ms / d_ms, 2),
                     "identical": same, "digit_path_taken": taken})  # fmt: skip
        print(json.dumps(rows[-1]))
        if not same:
            print(f"error: {name}: the two paths differ", flush=True)
            return 1
    setup = {"threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
             "processor": cpu_model()}  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "intgemm.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")
    lines = [
        f"# Exact products: float64 vs int8 digit products ({args.threads} thread(s), fastest of {args.repeat})",
        "",
        f"`python benchmarks/intgemm.py --threads {args.threads}`; torch {torch.__version__}. Every row's two paths "
        "give identical values; `taken`: whether the codec uses the digit path for this shape.",
        "",
        "| layer | in | out | kernel | cells | largest activation | float64 ms | digits ms | speed-up | taken |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['layer']} | {r['in']} | {r['out']} | {r['kernel']} | {r['cells']} | {r['peak']} | {r['float64_ms']} "
        f"| {r['digits_ms']} | {r['speedup']}x | {'yes' if r['digit_path_taken'] else 'no'} |"
        for r in rows
    ]
    (args.out_dir / "intgemm.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out_dir / 'intgemm.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
