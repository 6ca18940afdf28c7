"""Where the mutual codec loses accuracy: the detector's mAP when only one part of the decoded pyramid is replaced.

At each quality, on the first N val images, the detector runs on:

- ``decoded``: everything as decoded (what ``eval`` measures);
- ``no-residual``: decoded without the residual stream;
- ``decoded-base+true-P3``: decoded P4/P5 with the original P3 (loss due to the base codec alone);
- ``true-base+coded-P3``: original P4/P5 with P3 as decoded (prediction + residual from the *decoded* base);
- ``true-base+linear-P3``: original P4/P5 with P3 from MFCNet's linear predictor applied to the *original* base
  (what prediction alone can reach);

and prints mAP (and % of uncompressed) with the normalised MSE of every level. Writes results/ceiling.json.

    python benchmarks/ceiling.py --data ../shared/data/coco-val212 --images 40 --quality 1,3,5,7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from mutualfc.eval.coco import CocoDataset
from mutualfc.images import load_image
from mutualfc.io import atomic_write_text
from mutualfc.nn import crop_levels, pad_levels
from mutualfc.tasks import create_task
from mutualfc.tasks.base import FeatureSet
from mutualfc.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("decoded", "no-residual", "decoded-base+true-P3", "true-base+coded-P3", "true-base+linear-P3")


def linear_prediction(net, levels: dict[str, torch.Tensor]) -> torch.Tensor:
    """MFCNet's linear predictor applied to the original (not decoded) base."""
    x, size = pad_levels(levels, net.cfg.levels, net.pad_multiple)
    with torch.no_grad():
        pred = net.mfc(net.bfc.pack.pack({k: x[k] for k in net.cfg.base}))
    return crop_levels(pred | {k: x[k] for k in net.cfg.base}, net.cfg.levels, size)[net.finest]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder")
    ap.add_argument("--images", type=int, default=40, help="first N images (default: %(default)s)")
    ap.add_argument("--quality", default="1,3,5,7", help="qualities (default: %(default)s)")
    ap.add_argument("--checkpoint", help="mutual checkpoint (default: the zoo's)")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where ceiling.json goes (default: results/)")
    args = ap.parse_args()
    data = Path(args.data)
    task = create_task("yolov5n-coco")
    ds = CocoDataset(data / "images", data / "instances.json").subset(args.images)
    net = load_model("mutual", task.name, args.checkpoint).net
    net.update()
    feats = [(r.image_id, task.front(load_image(r.path))) for r in tqdm(ds.records, desc="front", unit="img")]
    orig = ds.evaluate([d for i, fs in feats for d in task.back(fs).to_coco(i)])["map"]
    print(f"uncompressed mAP {orig:.4f} on {len(ds)} images")
    rows = []
    for q in (float(s) for s in args.quality.split(",")):
        dets = {v: [] for v in VARIANTS}
        nmse = {k: 0.0 for k in net.cfg.levels}
        for image_id, fs in tqdm(feats, desc=f"quality {q:g}", unit="img"):
            x = fs.levels
            full = net.compress(x, q, residual=True)[1]["levels"]
            plain = net.compress(x, q, residual=False)[1]["levels"]
            base = {k: x[k] for k in net.cfg.base}
            variants = {
                "decoded": full,
                "no-residual": plain,
                "decoded-base+true-P3": full | {net.finest: x[net.finest]},
                "true-base+coded-P3": {net.finest: full[net.finest]} | base,
                "true-base+linear-P3": {net.finest: linear_prediction(net, x)} | base,
            }
            for v, levels in variants.items():
                dets[v] += task.back(FeatureSet(levels, fs.geometry)).to_coco(image_id)
            for k in nmse:
                nmse[k] += float(((full[k] - x[k]) ** 2).mean() / x[k].var()) / len(feats)
        row = {"quality": q, "images": len(ds), "uncompressed_map": round(orig, 4)}
        row |= {f"map[{v}]": round(ds.evaluate(dets[v])["map"], 4) for v in VARIANTS}
        row |= {f"nmse[{k}]": round(v, 5) for k, v in nmse.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out_dir)
    atomic_write_text(out / "ceiling.json", json.dumps(rows, indent=1) + "\n")
    head = "| quality | " + " | ".join(VARIANTS) + " | NMSE " + " / ".join(net.cfg.levels) + " |"
    lines = [head, "|---" * (len(VARIANTS) + 2) + "|"]
    for r in rows:
        cells = [f"{r[f'map[{v}]']:.4f} ({100 * r[f'map[{v}]'] / orig:.1f}%)" for v in VARIANTS]
        nm = " / ".join(f"{r[f'nmse[{k}]']:.4f}" for k in net.cfg.levels)
        lines.append(f"| {r['quality']:g} | " + " | ".join(cells) + f" | {nm} |")
    text = f"Uncompressed mAP {orig:.4f} ({len(ds)} images)\n\n" + "\n".join(lines) + "\n"
    atomic_write_text(out / "ceiling.md", text)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
