"""Which feature space should a detector's feature codec work in? A transform-coding experiment without training.

For each feature space, every level gets a KLT (PCA) fitted on cached training features, its coefficients are
quantised uniformly with step D, the rate is the static (per-component, empirical) entropy of the quantised
coefficients on the val images, and the detector runs on the reconstruction. Spaces:

- ``std``: per-channel mean removed, each level divided by its standard deviation (the codec's old space);
- ``channel-std``: every channel divided by its own standard deviation;
- ``task``: whitened by the square root of the detector's sensitivity (``level_sensitivity``, the codec's space).

Prints bpp / mAP per step and the BD-rates, writes results/metric.json and results/metric.md.

    python benchmarks/metric.py --cache cache/train --images 40
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from mutualfc.eval.bdrate import bd_rate, curve_from_records
from mutualfc.eval.coco import CocoDataset
from mutualfc.images import load_image
from mutualfc.io import atomic_write_text
from mutualfc.tasks import create_task
from mutualfc.tasks.base import FeatureSet

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"std": (0.1, 0.2, 0.4, 0.8, 1.6), "channel-std": (0.1, 0.2, 0.4, 0.8, 1.6),
         "task": (0.001, 0.002, 0.004, 0.008, 0.016)}  # fmt: skip


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (H*W, C) float64."""
    return t[0].double().reshape(t.shape[1], -1).T


def fit(task, cache: Path, files: int, eps: float = 1e-5) -> dict[str, dict[str, tuple]]:
    """-> space -> level -> (mean, forward matrix, inverse matrix) with the KLT folded in."""
    items = [torch.load(p, weights_only=True) for p in sorted(cache.glob("*.pt"))[:files]]
    if not items:
        raise SystemExit(f"no cached features in {cache} (run 'mutualfc train cache')")
    levels = {k: torch.cat([_rows(d[k][None]) for d in items]) for k in task.level_names}
    sens = task.level_sensitivity({k: v.T.reshape(1, v.shape[1], -1, 1) for k, v in levels.items()})
    out: dict[str, dict[str, tuple]] = {s: {} for s in STEPS}
    for k, x in levels.items():
        mu = x.mean(0)
        cov = (x - mu).T @ (x - mu) / len(x)
        c = cov.shape[0]
        eye = torch.eye(c, dtype=torch.float64)
        e, v = torch.linalg.eigh(sens[k])
        e = e.clamp_min(0) + eps * e.max()
        d = cov.diag().sqrt().clamp_min(1e-9)
        spaces = {
            "std": (eye / cov.trace().div(c).sqrt(), eye * cov.trace().div(c).sqrt()),
            "channel-std": (torch.diag(1 / d), torch.diag(d)),
            "task": ((v * e.sqrt()) @ v.T, (v / e.sqrt()) @ v.T),
        }
        for name, (a, ai) in spaces.items():
            _, basis = torch.linalg.eigh(a @ cov @ a.T)
            out[name][k] = (mu, a.T @ basis, basis.T @ ai.T)  # rows @ fwd -> coefficients; coefficients @ inv -> rows
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(ROOT / "cache/train"), help="feature cache of training images")
    ap.add_argument("--fit-images", type=int, default=150, help="cached images used to fit (default: %(default)s)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder")
    ap.add_argument("--images", type=int, default=40, help="first N val images (default: %(default)s)")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    task = create_task("yolov5n-coco")
    spaces = fit(task, Path(args.cache), args.fit_images)
    data = Path(args.data)
    ds = CocoDataset(data / "images", data / "instances.json").subset(args.images)
    feats = [(r.image_id, task.front(load_image(r.path))) for r in tqdm(ds.records, desc="front", unit="img")]
    pixels = sum(fs.geometry.orig_hw[0] * fs.geometry.orig_hw[1] for _, fs in feats)
    orig = ds.evaluate([d for i, fs in feats for d in task.back(fs).to_coco(i)])["map"]
    print(f"uncompressed mAP {orig:.4f} on {len(ds)} images")
    rows = []
    for name, steps in STEPS.items():
        for step in steps:
            coeffs = {k: [torch.round((_rows(fs.levels[k]) - m) @ fwd / step) for _, fs in feats]
                      for k, (m, fwd, _) in spaces[name].items()}  # fmt: skip
            bits = 0.0
            for q in coeffs.values():
                allq = torch.cat(q).long()
                for j in range(allq.shape[1]):
                    _, cnt = torch.unique(allq[:, j], return_counts=True)
                    bits += float(-(cnt * (cnt.double() / cnt.sum()).log2()).sum())
            dets = []
            for n, (image_id, fs) in enumerate(feats):
                rec = {}
                for k, (m, _, inv) in spaces[name].items():
                    t = fs.levels[k]
                    rec[k] = ((coeffs[k][n] * step) @ inv + m).T.reshape(t.shape).float()
                dets += task.back(FeatureSet(rec, fs.geometry)).to_coco(image_id)
            r = {"codec": name, "space": name, "step": step, "bpp": bits / pixels, "map": ds.evaluate(dets)["map"]}
            rows.append(r)
            print(f"{name:12s} step {step:<6g} bpp {r['bpp']:.4f} mAP {r['map']:.4f} ({100 * r['map'] / orig:.1f}%)")
    curves = {s: curve_from_records(rows, "map", s) for s in STEPS}
    bd = {s: bd_rate(curves[s], curves["std"]) for s in STEPS if s != "std"}
    out = Path(args.out_dir)
    atomic_write_text(out / "metric.json", json.dumps({"uncompressed_map": orig, "images": len(ds), "points": rows,
                                                       "bd_rate_vs_std": bd}, indent=1) + "\n")  # fmt: skip
    lines = [f"Uncompressed mAP {orig:.4f} ({len(ds)} images). PCA + uniform quantisation + static entropy per space.",
             "", "| space | step | bpp | mAP (% of uncompressed) |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['space']} | {r['step']:g} | {r['bpp']:.3f} | {r['map']:.4f} ({100 * r['map'] / orig:.1f}%) |"
              for r in rows]  # fmt: skip
    lines += ["", "| space | BD-rate vs std |", "|---|---|"]
    lines += [f"| {s} | {b.get('bd_rate', float('nan')):+.1f}% |" for s, b in bd.items()]
    atomic_write_text(out / "metric.md", "\n".join(lines) + "\n")
    print("\n".join(lines[-len(bd) - 2 :]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
