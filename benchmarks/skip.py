"""Background skipping: how the encoder's objectness threshold (``--skip-below``) trades rate for accuracy.

For each threshold, ``mutualfc eval --codec mutual --skip-below T`` at the given qualities (results appended to
results/<tag>.jsonl, resumable), then the BD-rate of every threshold against a reference threshold, the share of
stride-32 cells each threshold skips, every (quality, threshold) point, and which of them lie on the Pareto front of
all of them (no other point has both fewer bits and more mAP): the operating points worth having. Writes
results/<tag>.md.

Tune on training images against pseudo ground truth, not on the evaluation set (docs/learned-codecs.md):

    mutualfc pseudo-labels --images ../shared/data/coco-train --fold 0/8 --out cache/tune-pseudo.json
    python benchmarks/skip.py --images ../shared/data/coco-train --annotations cache/tune-pseudo.json --tag skip-tune
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from mutualfc.eval.bdrate import bd_rate, curve_from_records
from mutualfc.eval.coco import CocoDataset
from mutualfc.images import load_image
from mutualfc.io import atomic_write_text, read_jsonl
from mutualfc.tasks import create_task

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared/data/coco-val212"


def pareto(points: list[dict]) -> list[dict]:
    """The points no other point beats in both bits and mAP, by rising rate."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p["bpp"], -p["map"])):
        if p["map"] > best:
            front.append(p)
            best = p["map"]
    return front


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(VAL / "images"), help="image folder (default: coco-val212)")
    ap.add_argument("--annotations", default=str(VAL / "instances.json"), help="COCO instances (or pseudo) JSON")
    ap.add_argument("--limit", type=int, help="first N images (default: all the annotations list)")
    ap.add_argument(
        "--thresholds", default="0.02,0.05,0.1,0.2,0.3", help="objectness thresholds (default: %(default)s)"
    )
    ap.add_argument("--param", default="0,1,2,3,4,5,6,7", help="qualities (default: %(default)s)")
    ap.add_argument("--reference", type=float, default=0.05, help="BD-rate reference threshold (default: %(default)s)")
    ap.add_argument("--jobs", type=int, default=2, help="eval processes (default: %(default)s)")
    ap.add_argument(
        "--schedule", action="store_true", help="also the codecs' default (the threshold schedule), label 'schedule'"
    )
    ap.add_argument("--tag", default="skip", help="results/<tag>.jsonl and .md (default: %(default)s)")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()
    out = Path(args.out_dir)
    jsonl = out / f"{args.tag}.jsonl"
    thresholds = sorted({float(t) for t in args.thresholds.split(",")} | {args.reference})
    limit = ["--limit", str(args.limit)] if args.limit else []
    for t in thresholds + ([-1.0] if args.schedule else []):
        cmd = [sys.executable, "-m", "mutualfc.cli.main", "-q", "eval", "--codec", "mutual", "--skip-below", f"{t:g}",
               "--label", f"skip {t:g}", "--param", args.param, *limit, "--images", args.images, "--annotations",
               args.annotations, "--out", str(jsonl), "--skip-existing", "--jobs", str(args.jobs)]  # fmt: skip
        if t < 0:  # the schedule: no --skip-below
            cmd = [c for c in cmd if c not in ("--skip-below", f"{t:g}")]
            cmd[cmd.index("--label") + 1] = "schedule"
        print("$", " ".join(cmd), flush=True)
        if subprocess.call(cmd) != 0:
            return 1
    task = create_task("yolov5n-coco")
    ds = CocoDataset(args.images, args.annotations).subset(args.limit)
    with torch.no_grad():
        obj = torch.cat([task.objectness_map(task.front(load_image(r.path)).levels).flatten() for r in ds.records])
    params = {float(q) for q in args.param.split(",")}
    records = [r for r in read_jsonl(jsonl) if r["param"] in params and r["n_images"] == len(ds)]
    ref_label = f"skip {args.reference:g}"
    ref = curve_from_records(records, "map", ref_label)
    lines = [f"{len(ds)} images of {args.images} against {args.annotations}; qualities {args.param}; BD-rate "
             f"(mAP@[.5:.95] vs bpp, pchip on monotone envelopes) against threshold {args.reference:g}.", "",
             "| threshold | cells skipped | BD-rate | mAP at the highest quality |", "|---|---|---|---|"]  # fmt: skip
    labels = [f"skip {t:g}" for t in thresholds] + (["schedule"] if args.schedule else [])
    for t, label in zip(thresholds + [None], labels, strict=False):
        pts = sorted((r for r in records if r["codec"] == label), key=lambda r: r["param"])
        bd = (
            "—" if label == ref_label else f"{bd_rate(curve_from_records(records, 'map', label), ref)['bd_rate']:+.1f}%"
        )
        skipped = "by quality" if t is None else f"{100 * float((obj < t).float().mean()):.0f}%"
        lines.append(f"| {label.removeprefix('skip ')} | {skipped} | {bd} | "
                     f"{pts[-1]['map']:.4f} at {pts[-1]['bpp']:.4f} bpp |")  # fmt: skip
    front = {(r["bpp"], r["map"]) for r in pareto(records)}  # by value: the schedule repeats threshold points
    lines += ["", "Every point (bpp / mAP; **bold**: on the Pareto front of all points):", "",
              "| quality | " + " | ".join(labels) + " |",
              "|---|" + "---|" * len(labels)]  # fmt: skip
    for q in sorted(params):
        cells = []
        for label in labels:
            r = next((r for r in records if r["codec"] == label and r["param"] == q), None)
            cell = "—" if r is None else f"{r['bpp']:.4f} / {r['map']:.4f}"
            cells.append(f"**{cell}**" if r is not None and (r["bpp"], r["map"]) in front else cell)
        lines.append(f"| {q:g} | " + " | ".join(cells) + " |")
    atomic_write_text(out / f"{args.tag}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
