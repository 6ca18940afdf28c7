"""Paired speed comparison of two source trees of mutualfc: this checkout against a baseline (another commit's
``src``), run at the same time, each pinned to its own core, cores swapped between pairs.

On a shared machine single runs move by ±20% with the neighbours' load; two processes that run side by side see the
same load, so their ratio measures the code. Each side encodes and decodes the same images at one quality on one
thread, ``--passes`` times, and reports the fastest pass in CPU time per image. Needs two cores that nothing else
of yours uses (a third busy process shares one side's core only). Prints one JSON line per pair and the median
ratio; writes nothing. The two sides may also run two models (``--checkpoint``, ``--baseline-checkpoint``: files
from ``mutualfc train export``), e.g. a retrained model against the zoo's. ``--pipeline`` times each image's encode
and decode between the detector's front and back halves, as a split pipeline (and ``benchmarks/speed.py``) runs
them: the codec then meets the caches the detector leaves, and runs slower than back to back.

    git worktree add /tmp/base 4482ff3
    python benchmarks/speed_pair.py --baseline-src /tmp/base/src --pairs 4
    python benchmarks/speed_pair.py --baseline-src src --codec mutual-fast --checkpoint new.pt --quality 7.75
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One side: fastest of ``passes`` CPU-time passes of encode and decode, per image, in ms."""
    import torch

    from mutualfc.codecs import create_codec
    from mutualfc.eval.coco import CocoDataset
    from mutualfc.images import load_image
    from mutualfc.tasks import create_task

    torch.set_num_threads(1)
    codec = create_codec(args.codec, create_task(args.task), checkpoint=args.checkpoint)
    ds = CocoDataset(Path(args.data) / "images").subset(args.images)
    images = [load_image(r.path) for r in ds.records]
    xs = [codec.prepare(im) for im in images]
    datas = [codec.encode(x, args.quality) for x in xs]
    for d in datas:
        codec.decode(d)
    enc = dec = float("inf")
    for _ in range(args.passes):
        if args.pipeline:  # each image as a split pipeline runs it: front half, encode, decode, back half
            e = d = 0.0
            for im, data in zip(images, datas, strict=True):
                x = codec.prepare(im)
                t = time.process_time()
                codec.encode(x, args.quality)
                e += time.process_time() - t
                t = time.process_time()
                y = codec.decode(data)
                d += time.process_time() - t
                codec.detections(y)
            enc, dec = min(enc, 1000 * e / len(xs)), min(dec, 1000 * d / len(xs))
            continue
        t = time.process_time()
        for x in xs:
            codec.encode(x, args.quality)
        enc = min(enc, 1000 * (time.process_time() - t) / len(xs))
        t = time.process_time()
        for d in datas:
            codec.decode(d)
        dec = min(dec, 1000 * (time.process_time() - t) / len(xs))
    print(json.dumps({"src": str(Path(__import__("mutualfc").__file__).parents[1]), "encode_ms": round(enc, 2),
                      "decode_ms": round(dec, 2), "codec_ms": round(enc + dec, 2)}))  # fmt: skip


def _side(src: Path, cpu: int | None, args: argparse.Namespace, checkpoint: str | None) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", "--data", args.data, "--images", str(args.images), "--quality",
           str(args.quality), "--passes", str(args.passes), "--codec", args.codec, "--task", args.task,
           *(["--checkpoint", str(Path(checkpoint).resolve())] if checkpoint else []),
           *(["--pipeline"] if args.pipeline else [])]  # fmt: skip
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None and hasattr(os, "sched_setaffinity") else None
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, preexec_fn=pin)  # noqa: PLW1509


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-src", type=Path, help="the baseline's src/ folder (e.g. a git worktree of a commit)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder with images/")
    ap.add_argument("--images", type=int, default=10, help="images per pass (default: %(default)s)")
    ap.add_argument("--quality", type=float, default=4.0, help="the codec's quality (default: %(default)s)")
    ap.add_argument("--codec", default="mutual", help="learned codec both sides run (default: %(default)s)")
    ap.add_argument("--task", default="yolov5n-coco", help="task network both sides run (default: %(default)s)")
    ap.add_argument("--checkpoint", help="this side's model file instead of the codec's zoo model (train export)")
    ap.add_argument("--baseline-checkpoint", help="the baseline side's model file (default: the zoo model)")
    ap.add_argument("--passes", type=int, default=7, help="passes per side; the fastest counts (default: %(default)s)")
    ap.add_argument("--pairs", type=int, default=4, help="side-by-side runs, cores swapped each time (default: 4)")
    ap.add_argument(
        "--pipeline", action="store_true",
        help="time each image's encode and decode between the detector's front and back halves, as a split pipeline "
        "runs them (the codec then meets the caches the detector leaves), instead of back to back",
    )  # fmt: skip
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.baseline_src is None or not (args.baseline_src / "mutualfc").is_dir():
        print(f"error: --baseline-src {args.baseline_src}: not a src/ folder holding mutualfc", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    ratios = []
    for i in range(args.pairs):
        a, b = (cpus[i % 2], cpus[(i + 1) % 2]) if len(cpus) >= 2 else (None, None)
        procs = [_side(args.baseline_src.resolve(), a, args, args.baseline_checkpoint),
                 _side(ROOT / "src", b, args, args.checkpoint)]  # fmt: skip
        base, this = (json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs)
        ratios.append(this["codec_ms"] / base["codec_ms"])
        print(json.dumps({"pair": i + 1, "baseline": base, "this": this, "ratio": round(ratios[-1], 3)}), flush=True)
    print(f"this / baseline codec time: median {statistics.median(ratios):.3f} over {len(ratios)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
