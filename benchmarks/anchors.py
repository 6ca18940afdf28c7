"""Anchor benchmark: uncompressed baseline + JPEG, WebP, HEVC image and HEVC feature anchor sweeps.

Writes results/anchors.jsonl (one line per rate point; resumable: finished points are skipped),
results/anchors_bdrate.json, results/rd_anchors.png and results/anchors.md (the README table).

    python benchmarks/anchors.py --data ../shared/data/coco-val212 [--limit N] [--codecs jpeg,webp,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mutualfc.errors import MutualFCError
from mutualfc.eval.bdrate import bd_rate, curve_from_records
from mutualfc.eval.plot import plot_rd
from mutualfc.io import atomic_write_text, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
CODECS = ["none", "jpeg", "webp", "hevc-image", "hevc-feature", "vvc-image", "vvc-feature"]
REFERENCES = ("hevc-feature", "hevc-image", "vvc-feature", "vvc-image")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder (images/ + instances.json)"
    )
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    ap.add_argument("--codecs", default=",".join(CODECS), help="comma-separated codecs to sweep")
    ap.add_argument("--limit", type=int, help="first N images only (quick check)")
    ap.add_argument("--jobs", type=int, default=1, help="processes per sweep (mutualfc eval --jobs)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the tables and plot")
    args = ap.parse_args()

    out = Path(args.out_dir)
    jsonl = out / "anchors.jsonl"
    data = Path(args.data)
    for codec in [] if args.report_only else args.codecs.split(","):
        cmd = [sys.executable, "-m", "mutualfc.cli.main", "eval", "--codec", codec, "--images", str(data / "images"),
               "--annotations", str(data / "instances.json"), "--out", str(jsonl), "--skip-existing",
               "--jobs", str(args.jobs)]  # fmt: skip
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        print("$", " ".join(cmd), flush=True)
        if subprocess.call(cmd) != 0:
            return 1
    report(jsonl, out)
    return 0


def report(jsonl: Path, out: Path) -> None:
    records = read_jsonl(jsonl)
    plot_rd(records, out / "rd_anchors.png", title="YOLOv5n split at P3/P4/P5, COCO val (212 images)")
    base = [r for r in records if r["codec"] == "none"][-1]
    codecs = sorted({r["codec"] for r in records if r["codec"] != "none"})
    refs = [c for c in REFERENCES if c in codecs]
    head = (
        "| codec | points | bpp range | mAP range (% of uncompressed) | " + " | ".join(f"vs {c}" for c in refs) + " |"
    )
    rows = [head, "|---" * (4 + len(refs)) + "|"]
    bd = {}
    for c in codecs:
        pts = [r for r in records if r["codec"] == c]
        cells = []
        for ref in refs:
            if ref == c:
                cells.append("—")
                continue
            try:
                res = bd_rate(curve_from_records(records, "map", c), curve_from_records(records, "map", ref))
            except MutualFCError as e:  # too few points yet, or curves that do not overlap
                cells.append(f"n/a ({str(e).splitlines()[0]})")
                continue
            bd[f"{c} vs {ref}"] = res
            cells.append(f"{res['bd_rate']:+.1f}%")
        bpps, maps = [p["bpp"] for p in pts], [p["map"] for p in pts]
        rows.append(
            f"| {c} | {len(pts)} | {min(bpps):.4f}–{max(bpps):.3f} | {min(maps):.3f}–{max(maps):.3f} "
            f"({100 * min(maps) / base['map']:.0f}–{100 * max(maps) / base['map']:.0f}%) | " + " | ".join(cells) + " |"
        )
    table = (f"Uncompressed: mAP@[.5:.95] = {base['map']:.4f}, mAP@.5 = {base['map50']:.4f} "
             f"({base['n_images']} images)\n\n" + "\n".join(rows) + "\n")  # fmt: skip
    atomic_write_text(out / "anchors.md", table)
    atomic_write_text(out / "anchors_bdrate.json", json.dumps(bd, indent=1) + "\n")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
