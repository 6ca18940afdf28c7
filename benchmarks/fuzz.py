"""Fuzz the container parser and every codec's payload decoder: N deterministic mutated containers (most with a
recomputed CRC, so that the payload decoders see the damage), each decoded with the codec its header names.

Counts clean decodes, clean refusals (mutualfc's own errors), crashes (any other exception), hangs (a case over
--timeout seconds: the watching parent kills the worker and goes on after it) and non-finite outputs, and the
worker's peak memory. Crashing cases are written to --out-dir/fuzz_failures/ so that they can become regression
tests. Writes results/fuzz.json and results/fuzz.md.

    python benchmarks/fuzz.py --cases 100000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import resource
import shutil
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(start: int, n: int, seed: int, progress, out: mp.Queue, vvenc: str | None) -> None:
    import torch

    from mutualfc.images import load_image
    from mutualfc.tasks import create_task
    from mutualfc.testing.fuzz import build_seeds, cases, decode_case

    torch.set_num_threads(1)
    task = create_task("yolov5n-coco")
    images = [load_image(p)[:256, :256] for p in sorted((ROOT / "examples/coco-mini/images").glob("*.jpg"))]
    seeds, decoders = build_seeds(task, images, vvenc)
    try:
        for case in cases(seeds, n - start, start=start, seed=seed):
            progress.value = case.index
            outcome, detail = decode_case(decoders, case.data)
            keep = case.data if outcome not in ("decoded", "refused") else b""
            out.put((case.index, case.seed, outcome, detail, keep))
    except Exception:  # noqa: BLE001 - a bug of the harness itself, not a decoder's: stop and say so
        out.put(("harness error", traceback.format_exc()))
        return
    out.put(("done", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000, help="mutated containers (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="case generator seed (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    ap.add_argument("--vvc-encoder", default=str(ROOT.parent / "shared/tools/vvenc/vvencapp"),
                    help="vvencapp for VVC seeds (skipped if absent; default: %(default)s)")  # fmt: skip
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()
    vvenc = args.vvc_encoder if Path(args.vvc_encoder).is_file() or shutil.which(args.vvc_encoder) else None
    out_dir = Path(args.out_dir)
    failures = out_dir / "fuzz_failures"
    ctx = mp.get_context("spawn")
    counts, by_seed, examples, peak_kib, start = Counter(), Counter(), [], 0, 0
    t0 = time.time()
    while start < args.cases:
        progress, q = ctx.Value("q", start), ctx.Queue()
        proc = ctx.Process(target=worker, args=(start, args.cases, args.seed, progress, q, vvenc), daemon=True)
        proc.start()
        last, last_change, started, received = start, time.time(), False, start - 1
        while True:
            try:
                msg = q.get(timeout=1.0)
            except queue.Empty:
                msg = None
            if msg is not None and msg[0] == "harness error":
                raise SystemExit(f"fuzz harness failed (not a decoder): {msg[1]}")
            if msg is not None and msg[0] == "done":
                peak_kib = max(peak_kib, msg[1])
                start = args.cases
                break
            if msg is not None:
                index, seed, outcome, detail, data = msg
                started, received = True, index
                counts[outcome] += 1
                by_seed[(seed.split("#")[0], outcome)] += 1
                if data:
                    failures.mkdir(parents=True, exist_ok=True)
                    (failures / f"case{index}-{outcome}.mfc").write_bytes(data)
                    examples.append({"index": index, "seed": seed, "outcome": outcome, "detail": detail[:2000]})
                if index + 1 >= args.cases:
                    continue
            now = time.time()
            if progress.value != last:
                last, last_change = progress.value, now
            elif started and now - last_change > args.timeout:  # the current case hangs: record it, go on after it
                proc.kill()
                counts["hang"] += 1
                examples.append({"index": int(progress.value), "outcome": "hang"})
                start = int(progress.value) + 1
                break
            if not proc.is_alive() and q.empty():
                if received >= progress.value:  # died between cases: not a decoder's doing
                    raise SystemExit(f"fuzz worker died after case {received} (exit code {proc.exitcode})")
                counts["crash"] += 1  # the worker died while decoding (a signal, an abort in native code)
                examples.append({"index": int(progress.value), "outcome": "crash", "detail": "worker process died"})
                start = int(progress.value) + 1
                break
            if sum(counts.values()) and sum(counts.values()) % 5000 == 0:
                print(f"{sum(counts.values())} cases, {dict(counts)}, {time.time() - t0:.0f} s", flush=True)
        proc.join(timeout=5)
    wall = time.time() - t0
    res = {"cases": sum(counts.values()), "seconds": round(wall, 1), "outcomes": {k: counts.get(k, 0) for k in
           ("decoded", "refused", "crash", "hang", "non_finite")}, "peak_rss_mib": round(peak_kib / 1024, 1),
           "seed": args.seed, "timeout_s": args.timeout, "vvc_seeds": vvenc is not None,
           "by_seed": {f"{s} {o}": c for (s, o), c in sorted(by_seed.items())}, "failures": examples[:50]}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fuzz.json").write_text(json.dumps(res, indent=1) + "\n")
    o = res["outcomes"]
    md = (f"{res['cases']} fuzzed containers in {res['seconds']} s (`python benchmarks/fuzz.py --cases {args.cases} "
          f"--seed {args.seed}`): decoded {o['decoded']}, refused {o['refused']}, **crashes {o['crash']}, hangs "
          f"{o['hang']} (> {args.timeout:g} s), non-finite outputs {o['non_finite']}**; worker peak memory "
          f"{res['peak_rss_mib']} MiB. VVC seeds: {'yes' if vvenc else 'no'}.\n")  # fmt: skip
    (out_dir / "fuzz.md").write_text(md)
    print(md)
    return 0 if o["crash"] == o["hang"] == o["non_finite"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
