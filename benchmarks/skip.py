"""Background skipping: how the encoder's objectness threshold (``--skip-below``) trades rate for accuracy.

For each threshold, ``mutualfc eval --codec mutual --skip-below T`` on the first N val images at a few qualities
(results appended to results/skip.jsonl, resumable), then the BD-rate of every threshold against 0 (no skipping)
and the share of stride-32 cells each threshold skips. Writes results/skip.md.

    python benchmarks/skip.py --data ../shared/data/coco-val212 --limit 40
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder")
    ap.add_argument("--limit", type=int, default=40, help="first N val images (default: %(default)s)")
    ap.add_argument("--thresholds", default="0,0.005,0.01,0.02,0.05,0.1", help="objectness thresholds")
    ap.add_argument("--param", default="1,3,5,7", help="qualities (default: %(default)s)")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out_dir)
    jsonl = out / "skip.jsonl"
    thresholds = [float(t) for t in args.thresholds.split(",")]
    for t in thresholds:
        cmd = [sys.executable, "-m", "mutualfc.cli.main", "-q", "eval", "--codec", "mutual", "--skip-below", f"{t:g}",
               "--label", f"skip {t:g}", "--param", args.param, "--limit", str(args.limit), "--images",
               str(data / "images"), "--annotations", str(data / "instances.json"), "--out", str(jsonl),
               "--skip-existing"]  # fmt: skip
        print("$", " ".join(cmd), flush=True)
        if subprocess.call(cmd) != 0:
            return 1
    task = create_task("yolov5n-coco")
    ds = CocoDataset(data / "images", data / "instances.json").subset(args.limit)
    with torch.no_grad():
        obj = torch.cat([task.objectness_map(task.front(load_image(r.path)).levels).flatten() for r in ds.records])
    records = read_jsonl(jsonl)
    ref = curve_from_records(records, "map", "skip 0")
    lines = [f"First {args.limit} val images, qualities {args.param}; BD-rate (mAP@[.5:.95] vs bpp, pchip) against no "
             "skipping.", "", "| threshold | cells skipped | BD-rate vs 0 | mAP at the highest quality |",
             "|---|---|---|---|"]  # fmt: skip
    for t in thresholds:
        label = f"skip {t:g}"
        pts = sorted((r for r in records if r["codec"] == label), key=lambda r: r["param"])
        bd = "—" if t == 0 else f"{bd_rate(curve_from_records(records, 'map', label), ref)['bd_rate']:+.1f}%"
        top = pts[-1]
        lines.append(f"| {t:g} | {100 * float((obj < t).float().mean()):.0f}% | {bd} | "
                     f"{top['map']:.4f} at {top['bpp']:.3f} bpp |")  # fmt: skip
    atomic_write_text(out / "skip.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
