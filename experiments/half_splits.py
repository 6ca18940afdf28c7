"""How firm is "99% of the uncompressed mAP at <= 0.35 bpp" on images we do not have: code the 212 val images at
the fidelity qualities once (the encoder's reconstruction, which is what the decoder yields), then score random
halves of the images (COCOeval on 106 images each) and report, per quality, how often the half reaches 99% of its own
uncompressed mAP and at what bpp. Halves vary more than a 212-image set would, so this over-states the spread.

    python experiments/half_splits.py --qualities 7.5,7.75,8 --splits 100 --out results/half-splits.json
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from mutualfc import bitstream
from mutualfc.codecs import create_codec
from mutualfc.eval.coco import CocoDataset
from mutualfc.tasks import create_task

VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco-val212"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", default="cache/val-feats.pt", help="(id, FeatureSet, pixels) of the val images")
    ap.add_argument("--qualities", default="7.5,7.75,8")
    ap.add_argument("--splits", type=int, default=100)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = create_task("yolov5n-coco")
    codec = create_codec("mutual", task)
    feats = torch.load(args.features, weights_only=False)
    qualities = [float(q) for q in args.qualities.split(",")]
    dets = {"none": {}} | {q: {} for q in qualities}
    bits = {q: {} for q in qualities}
    for i, fs, _ in tqdm(feats, desc="coding"):
        dets["none"][i] = task.back(fs).to_coco(i)
        for q in qualities:
            strings, rec = codec.reconstruct(fs, q)
            h, w = fs.geometry.orig_hw
            bits[q][i] = 8 * len(bitstream.pack(bitstream.Header(codec.codec_id, codec.task_id, q, codec.model_tag,
                                                                  w, h), strings))  # fmt: skip
            dets[q][i] = task.back(rec).to_coco(i)
    pixels = {i: p for i, _, p in feats}
    ids = sorted(pixels)
    rng = random.Random(0)
    full = CocoDataset(str(VAL / "images"), str(VAL / "instances.json"))
    rows = []
    for s in tqdm(range(args.splits + 1), desc="halves"):
        half = ids if s == 0 else sorted(rng.sample(ids, len(ids) // 2))  # split 0: all the images
        ds = copy.copy(full)
        ds.records = [r for r in full.records if r.image_id in set(half)]
        base = ds.evaluate([d for i in half for d in dets["none"][i]])["map"]
        row = {"split": s, "images": len(half), "map_none": base}
        for q in qualities:
            m = ds.evaluate([d for i in half for d in dets[q][i]])["map"]
            row[f"q{q:g}"] = {"bpp": sum(bits[q][i] for i in half) / sum(pixels[i] for i in half),
                              "ratio": m / base}  # fmt: skip
        rows.append(row)
    summary = {}
    for q in qualities:
        r = [row[f"q{q:g}"] for row in rows[1:]]
        summary[f"q{q:g}"] = {
            "all_images": rows[0][f"q{q:g}"],
            "halves_reaching_99": sum(x["ratio"] >= 0.99 for x in r) / len(r),
            "halves_reaching_99_at_or_below_0.35": sum(x["ratio"] >= 0.99 and x["bpp"] <= 0.35 for x in r) / len(r),
            "ratio_5_50_95": [sorted(x["ratio"] for x in r)[int(p * (len(r) - 1))] for p in (0.05, 0.5, 0.95)],
            "bpp_5_50_95": [sorted(x["bpp"] for x in r)[int(p * (len(r) - 1))] for p in (0.05, 0.5, 0.95)],
        }
    Path(args.out).write_text(json.dumps({"summary": summary, "splits": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
