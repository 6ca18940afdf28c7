"""Where the mutual codec's last points of mAP go at the top: the detector on the zoo codec's quality-7 decoding with
P3 replaced by (a) the original P3 (an oracle), at skip thresholds T, and (b) the P3 prediction plus the
unquantised projection of its error on the first R principal components at the kept cells (the most a residual
stream of R components can give). Writes results/top_point.md and results/top_point.json.

    python benchmarks/top_point.py --data ../shared/data/coco-val212 --cache cache/train
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from mutualfc.codecs import create_codec
from mutualfc.eval.coco import CocoDataset
from mutualfc.images import load_image
from mutualfc.io import atomic_write_text
from mutualfc.nn import pad_levels, pca
from mutualfc.tasks import create_task
from mutualfc.tasks.base import FeatureSet
from mutualfc.train.cache import AlignedCropDataset

ROOT = Path(__file__).resolve().parents[1]


def residual_basis(net, task, cache: str, crops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA (mean, directions) of the P3 prediction error of the linear transforms, from training crops."""
    data = AlignedCropDataset(cache, task.name, crop=8, strides=tuple(task.level_strides), seed=5)
    batch = [data[i % len(data)] for i in range(crops)]
    levels = {k: torch.stack([b[j] for b in batch]) for j, k in enumerate(net.cfg.levels)}
    with torch.no_grad():
        lv, _ = pad_levels(levels, net.cfg.levels, net.pad_multiple)
        base = net.bfc.lin_s(net.bfc.lin_a(net.bfc.pack.pack({k: lv[k] for k in net.cfg.base})))
        pred = net.mfc(base)[net.finest]
        d = net.res.pack.pack({net.finest: lv[net.finest]}) - net.res.pack.pack({net.finest: pred})
        mu, v = pca(d.permute(0, 2, 3, 1).reshape(-1, d.shape[1]).double(), d.shape[1])
    return mu.float(), v.float()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder")
    ap.add_argument("--cache", required=True, help="training feature cache (for the residual's principal components)")
    ap.add_argument("--limit", type=int, help="first N images only")
    ap.add_argument("--thresholds", default="0.05,0.01", help="skip thresholds of the P3 oracle (default: %(default)s)")
    ap.add_argument("--ranks", default="128,256,512", help="residual components (default: %(default)s)")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = Path(args.data)
    task = create_task("yolov5n-coco")
    ds = CocoDataset(data / "images", data / "instances.json").subset(args.limit)
    net = create_codec("mutual", task).net
    feats = [(r.image_id, task.front(load_image(r.path))) for r in tqdm(ds.records, desc="features")]
    objectness = {i: task.objectness_map(fs.levels) for i, fs in feats}
    original = ds.evaluate([d for i, fs in feats for d in task.back(fs).to_coco(i)])["map"]
    rows = []

    def record(setting: str, dets: list) -> None:
        m = ds.evaluate(dets)["map"]
        rows.append({"setting": setting, "map": round(m, 6), "percent": round(100 * m / original, 2)})
        print(json.dumps(rows[-1]), flush=True)

    mu, v = residual_basis(net, task, args.cache, 256)
    decoded = {}
    for tau in (float(t) for t in args.thresholds.split(",")):
        dets = []
        for i, fs in tqdm(feats, desc=f"oracle P3, skip below {tau:g}"):
            _, info = net.compress(fs.levels, 7, residual=False, keep=objectness[i] >= tau)
            decoded[(tau, i)] = info["levels"]
            dets += task.back(FeatureSet(info["levels"] | {net.finest: fs.levels[net.finest]}, fs.geometry)).to_coco(i)
        record(f"quality 7, skip below {tau:g}, original P3", dets)
    tau = min(float(t) for t in args.thresholds.split(","))
    pack = net.res.pack
    for rank in (int(r) for r in args.ranks.split(",")):
        vr = v[:, :rank]
        dets = []
        for i, fs in tqdm(feats, desc=f"{rank} residual components"):
            lv = decoded[(tau, i)]
            u_pred = pack.pack({net.finest: lv[net.finest]})
            err = (pack.pack({net.finest: fs.levels[net.finest].float()}) - u_pred).permute(0, 2, 3, 1)
            proj = ((err - mu) @ vr) @ vr.T + mu
            kept = (objectness[i] >= tau).float().permute(0, 2, 3, 1)
            p3 = pack.unpack(u_pred + (proj * kept).permute(0, 3, 1, 2))[net.finest]
            dets += task.back(FeatureSet(lv | {net.finest: p3}, fs.geometry)).to_coco(i)
        record(f"quality 7, skip below {tau:g}, P3 prediction + {rank} unquantised residual components", dets)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "top_point.json", json.dumps({"original_map": original, "rows": rows}, indent=1) + "\n")
    lines = [f"Uncompressed mAP: {original:.4f} ({len(feats)} images)", "", "| setting | mAP | % of uncompressed |",
             "|---|---|---|"]  # fmt: skip
    lines += [f"| {r['setting']} | {r['map']:.4f} | {r['percent']:.1f}% |" for r in rows]
    atomic_write_text(out / "top_point.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
