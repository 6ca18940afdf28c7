"""Learned-codec benchmark: mutual and separate-scale codecs (and ablation checkpoints) on COCO val, against the
anchors in results/anchors.jsonl.

Each run is ``LABEL=CODEC[:CHECKPOINT][:RESIDUAL]`` (zoo checkpoint when none is given; RESIDUAL is auto, on or
off). Results are appended to results/learned.jsonl (resumable: finished points are skipped); the report writes
results/learned.md (BD-rate table), results/learned_bdrate.json and results/rd_all.png (all curves).

    python benchmarks/learned.py --data ../shared/data/coco-val212
    python benchmarks/learned.py --runs p5base=mutual:runs/p5/export.pt --param 0,2,4,6,7
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mutualfc.eval.bdrate import bd_rate, curve_from_records
from mutualfc.eval.plot import plot_rd
from mutualfc.io import atomic_write_text, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
RUNS = ["mutual=mutual", "separate=separate"]
REFERENCES = (
    "hevc-feature",
    "hevc-image",
    "vvc-feature",
    "vvc-image",
    "separate",
    "mutual",  # the zoo model: its variants (mutual-fast) against it
    "mutual (previous schedule)",  # the same model before its schedule capped the model quality (YOLOX-Nano)
    "mutual (previous zoo)",  # the zoo model before the 2,006-image retraining and the residual from quality 6
    "mutual (predicted P3)",  # the zoo model before stop 22: uncorrected kept cells took MFCNet's prediction
    "mutual (residual cells by objectness)",  # before the per-cell rate-distortion choice of the residual's cells
)
ABLATION_REFERENCES = ("abl-ref", "abl-separate", "abl-scratch")  # used when the results hold ablation runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated LABEL=CODEC[:CHECKPOINT][:auto|on|off]")
    ap.add_argument("--param", default="0,1,2,3,4,5,6,7,8", help="qualities; 8 = fidelity (default: %(default)s)")
    ap.add_argument("--limit", type=int, help="first N images only")
    ap.add_argument("--task", default="yolov5n-coco", help="task network (default: %(default)s)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the tables and plot")
    args = ap.parse_args()
    out = Path(args.out_dir)
    jsonl = out / "learned.jsonl"
    data = Path(args.data)
    if not args.report_only:
        for spec in args.runs.split(","):
            label, _, rest = spec.partition("=")
            parts = rest.split(":")
            cmd = [sys.executable, "-m", "mutualfc.cli.main", "eval", "--task", args.task, "--codec", parts[0],
                   "--label", label,
                   "--param", args.param, "--images", str(data / "images"), "--annotations",
                   str(data / "instances.json"), "--out", str(jsonl), "--skip-existing"]  # fmt: skip
            modes = {"res": "on", "on": "on", "off": "off", "auto": "auto"}
            if len(parts) > 1 and parts[1] and parts[1] not in modes:
                cmd += ["--checkpoint", parts[1]]
            for p in parts[1:]:
                if p in modes:
                    cmd += ["--residual", modes[p]]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            print("$", " ".join(cmd), flush=True)
            if subprocess.call(cmd) != 0:
                return 1
    report(jsonl, out / "anchors.jsonl", out, args.task)
    return 0


def report(jsonl: Path, anchors: Path, out: Path, task: str = "yolov5n-coco") -> None:
    own = read_jsonl(jsonl)
    learned = [r for r in own if r["codec"] != "none"]
    records = own + (read_jsonl(anchors) if anchors.is_file() else [])
    n = learned[0]["n_images"]
    nones = [r for r in records if r["codec"] == "none" and r["n_images"] == n]
    base = nones[-1] if nones else {"map": float("nan"), "n_images": n}
    keep = {"none", "hevc-feature", "hevc-image", "vvc-feature", "vvc-image", "webp", "jpeg"}
    shown = [r for r in records if (r["codec"] in keep or r in learned) and r["n_images"] == n]
    plot_rd(shown, out / "rd_all.png", title=f"{task} split at P3/P4/P5, COCO val ({n} images)")
    labels = list(dict.fromkeys(r["codec"] for r in learned))
    codecs = {r["codec"] for r in records}
    refs = ABLATION_REFERENCES if ABLATION_REFERENCES[0] in codecs else REFERENCES
    refs = tuple(r for r in refs if r in codecs)  # a column per reference these results hold
    head = "| codec | points | bpp range | mAP range (% of uncompressed) | " + " | ".join(
        f"BD-rate vs {c}" for c in refs
    )
    rows = [head + " |", "|---" * (4 + len(refs)) + "|"]
    bd = {}
    for c in labels:
        pts = [r for r in records if r["codec"] == c]
        cells = []
        for ref in refs:
            if ref == c or ref not in codecs:
                cells.append("—")
                continue
            try:
                res = bd_rate(curve_from_records(records, "map", c), curve_from_records(records, "map", ref))
            except Exception as e:  # noqa: BLE001 - e.g. curves that do not overlap in mAP
                cells.append(f"n/a ({type(e).__name__})")
                continue
            bd[f"{c} vs {ref}"] = res
            cells.append(f"{res['bd_rate']:+.1f}% ({100 * res['overlap_fraction']:.0f}% overlap)")
        bpps, maps = [p["bpp"] for p in pts], [p["map"] for p in pts]
        rows.append(
            f"| {c} | {len(pts)} | {min(bpps):.4f}–{max(bpps):.3f} | {min(maps):.3f}–{max(maps):.3f} "
            f"({100 * min(maps) / base['map']:.0f}–{100 * max(maps) / base['map']:.1f}%) | " + " | ".join(cells) + " |"
        )
    points = ["", "| codec | quality | bpp | mAP | mAP50 | % of uncompressed | enc ms | dec ms |", "|---" * 8 + "|"]
    for r in sorted(learned, key=lambda r: (labels.index(r["codec"]), r["param"])):  # each label's points by quality
        points.append(f"| {r['codec']} | {r['param']:g} | {r['bpp']:.4f} | {r['map']:.4f} | {r['map50']:.4f} | "
                      f"{100 * r['map'] / base['map']:.1f}% | {1000 * r['encode_s_per_image']:.0f} | "
                      f"{1000 * r['decode_s_per_image']:.0f} |")  # fmt: skip
    table = (f"Uncompressed: mAP@[.5:.95] = {base['map']:.4f} ({base['n_images']} images)\n\n" + "\n".join(rows)
             + "\n" + "\n".join(points) + "\n")  # fmt: skip
    atomic_write_text(out / "learned.md", table)
    atomic_write_text(out / "learned_bdrate.json", json.dumps(bd, indent=1) + "\n")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
