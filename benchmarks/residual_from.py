"""From which quality should the mutual codec send its P3 residual stream? Tuning on unlabelled images.

Codes a fold of coco-train (scored against pseudo ground truth, ``mutualfc pseudo-labels``) with the residual stream
off at every quality 0..7 and on at qualities 5..7 (the skip threshold as the codec's schedule), plus the fidelity
point 8, then builds the curve each candidate ``RESIDUAL_FROM`` would give (off below it, on from it) and its BD-rate
against never sending it below 8. Writes results/<tag>.jsonl and results/<tag>.md.

    mutualfc pseudo-labels --images ../shared/data/coco-train --fold 0/8 --out cache/tune-pseudo-010.json
    python benchmarks/residual_from.py --images ../shared/data/coco-train --annotations cache/tune-pseudo-010.json \\
        --limit 160 --label zoo --jobs 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from mutualfc.eval.bdrate import Curve, bd_rate, monotone_envelope
from mutualfc.io import atomic_write_text, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = (5, 6, 7, 8)  # 8: the residual only at the fidelity point


def run(args: argparse.Namespace, out: Path) -> None:
    common = ["--images", args.images, "--annotations", args.annotations, "--limit", str(args.limit),
              "--out", str(out), "--skip-existing", "--jobs", str(args.jobs)]  # fmt: skip
    if args.checkpoint:
        common += ["--checkpoint", args.checkpoint]
    for suffix, params, extra in (("off", "0,1,2,3,4,5,6,7", ["--residual", "off"]),
                                  ("on", "5,6,7", ["--residual", "on"]), ("", "8", [])):  # fmt: skip
        label = f"{args.label} {suffix}".strip()
        cmd = [sys.executable, "-m", "mutualfc.cli.main", "eval", "--codec", "mutual", "--param", params,
               "--label", label, *extra, *common]  # fmt: skip
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def report(label: str, records: list[dict]) -> str:
    pts = {(r["codec"], float(r["param"])): (r["bpp"], r["map"]) for r in records}
    fid = pts[(label, 8.0)]

    def curve(start: int) -> Curve:
        c = [pts[(f"{label} {'on' if q >= start else 'off'}", float(q))] for q in range(8)] + [fid]
        return Curve(f"from {start}", *monotone_envelope([p[0] for p in c], [p[1] for p in c]))

    ref = curve(8)
    lines = [f"### {label}", "", "| quality | residual off (bpp / mAP) | residual on |", "|---|---|---|"]
    for q in range(8):
        on = pts.get((f"{label} on", float(q)))
        off = pts[(f"{label} off", float(q))]
        lines.append(f"| {q} | {off[0]:.4f} / {off[1]:.4f} | " + (f"{on[0]:.4f} / {on[1]:.4f} |" if on else "— |"))
    lines += [f"| 8 (fidelity) | — | {fid[0]:.4f} / {fid[1]:.4f} |", "",
              "| residual from quality | BD-rate vs only at 8 |", "|---|---|"]  # fmt: skip
    for start in CANDIDATES:
        bd = bd_rate(curve(start), ref)
        lines.append(f"| {start} | {bd['bd_rate']:+.1f}% ({100 * bd['overlap_fraction']:.0f}% overlap) |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="folder of tuning images (not the evaluation set)")
    ap.add_argument("--annotations", required=True, help="pseudo ground truth (mutualfc pseudo-labels)")
    ap.add_argument("--limit", type=int, default=160, help="first N images of the annotations (default: 160)")
    ap.add_argument("--checkpoint", help="mutual checkpoint (default: the zoo's)")
    ap.add_argument("--label", default="zoo", help="name of this checkpoint's rows (default: zoo)")
    ap.add_argument("--jobs", type=int, default=1, help="processes for mutualfc eval (default: 1)")
    ap.add_argument("--tag", default="residual-tune", help="results/<tag>.jsonl and .md (default: residual-tune)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from the .jsonl")
    args = ap.parse_args()
    out = ROOT / "results" / f"{args.tag}.jsonl"
    if not args.report_only:
        run(args, out)
    records = read_jsonl(out)
    labels = list(dict.fromkeys(r["codec"] for r in records if r["param"] == 8))
    head = (f"{records[0]['n_images']} images of {args.images} against {args.annotations}; mAP@[.5:.95] vs bpp, "
            "BD-rate pchip on monotone envelopes. Skip threshold: the codec's schedule.\n\n")  # fmt: skip
    text = head + "\n".join(report(label, records) for label in labels)
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
