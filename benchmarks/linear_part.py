"""Are the trained non-linear branches of a ``transform="nonlinear"`` checkpoint worth having? Decode the same
checkpoint as it is and with only its closed-form linear part (non-linear branch outputs zeroed, inverse gains tied
to 1 / gain), with real bits, on the first N val images; no skipping (every cell coded).

    git show cab0bb1:src/mutualfc/zoo/checkpoints/mutual_yolov5n-coco.pt > nonlinear.pt
    python benchmarks/linear_part.py --checkpoint nonlinear.pt --images 40 --quality 0,2,4,5,7

Writes results/linear_part.md.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from tqdm import tqdm

from mutualfc.eval.coco import CocoDataset, load_image
from mutualfc.io import atomic_write_text
from mutualfc.tasks import create_task
from mutualfc.tasks.base import FeatureSet
from mutualfc.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]


def linear_part(net: torch.nn.Module) -> torch.nn.Module:
    """A copy whose non-linear branches output zero and whose inverse gains are 1 / gain."""
    net = copy.deepcopy(net)
    branches = [net.bfc.g_a[-1], net.bfc.out_s, *net.mfc.heads.values()]
    if net.res is not None:
        branches += [net.res.g_a[-1], net.res.g_s[-1]]
    with torch.no_grad():
        for conv in branches:
            conv.weight.zero_()
            conv.bias.zero_()
        for unit in (net.bfc.gain, *([net.res.gain] if net.res is not None else [])):
            unit.inv_gain.copy_(1 / unit.gain.abs())
    return net


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a mutual checkpoint with transform='nonlinear'")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder")
    ap.add_argument("--images", type=int, default=40, help="first N val images (default: %(default)s)")
    ap.add_argument("--quality", default="0,2,4,5,7", help="qualities (default: %(default)s)")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()
    data = Path(args.data)
    task = create_task("yolov5n-coco")
    ds = CocoDataset(data / "images", data / "instances.json").subset(args.images)
    full = load_model("mutual", task.name, args.checkpoint).net
    if full.cfg.transform != "nonlinear":
        raise SystemExit("this checkpoint has no non-linear branches")
    nets = {"as trained": full, "linear part": linear_part(full)}
    feats = [(r.image_id, task.front(load_image(r.path))) for r in tqdm(ds.records, desc="front", unit="img")]
    pixels = sum(fs.geometry.orig_hw[0] * fs.geometry.orig_hw[1] for _, fs in feats)
    orig = ds.evaluate([d for i, fs in feats for d in task.back(fs).to_coco(i)])["map"]
    lines = [f"First {len(ds)} val images, uncompressed mAP {orig:.4f}; checkpoint {Path(args.checkpoint).name}.", "",
             "| quality | decoder | residual | bpp | mAP (% of uncompressed) |", "|---|---|---|---|---|"]  # fmt: skip
    for q in (float(x) for x in args.quality.split(",")):
        for name, net in nets.items():
            net.update()
            for residual in (False, True):
                bits, dets = 0, []
                for image_id, fs in feats:
                    strings, meta = net.compress(fs.levels, q, residual=residual)
                    bits += 8 * sum(map(len, strings))
                    dets += task.back(FeatureSet(meta["levels"], fs.geometry)).to_coco(image_id)
                m = ds.evaluate(dets)["map"]
                lines.append(f"| {q:g} | {name} | {'on' if residual else 'off'} | {bits / pixels:.3f} | "
                             f"{m:.4f} ({100 * m / orig:.1f}%) |")  # fmt: skip
                print(lines[-1], flush=True)
    atomic_write_text(Path(args.out_dir) / "linear_part.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
