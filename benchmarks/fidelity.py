"""Where the mutual codec's top operating points should spend their bits: codes a fold of coco-train (scored
against pseudo ground truth, ``mutualfc pseudo-labels``) at the model's top quality (or ``q``) with the residual
stream on (unless ``res=off``), for settings of comma-separated ``key=value``: the skip threshold ``tau``, the
residual stream's gain ``boost`` (2 ** (boost / 2), a finer P3 residual; ``inf``: the original P3, an oracle), the
objectness ``tau_r`` from which a cell carries the residual (``rd``: only where it removes that much squared error
per bit), and a second tier (cells below ``tau_hi`` coded at quality ``q_lo``). Prints and appends one JSON line per
setting (bpp split into the mask, base and residual streams; mAP against each annotation file), then (``--report``)
a Markdown table of every setting in the file (without ``--settings``: only the table).

    mutualfc pseudo-labels --images ../shared/data/coco-train --fold 0/8 --min-score 0.02 \\
        --out cache/tune-pseudo-002.json                                 # and at 0.1: cache/tune-pseudo-010.json
    python benchmarks/fidelity.py --images ../shared/data/coco-train \\
        --annotations cache/tune-pseudo-010.json,cache/tune-pseudo-002.json \\
        --limit 160 --feature-cache cache/fid-feats.pt --out results/fidelity.jsonl --report results/fidelity.md \\
        --settings "tau=0.1;tau=0.02;tau=0.0447,tau_hi=0.1,q_lo=5.5,tau_r=0.1;tau=0.1,boost=inf"
    python benchmarks/fidelity.py ... --settings "q=6,tau=0.1;q=6,tau=0.1,rd=0.25;q=5,tau=0.1,res=off"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from mutualfc import bitstream
from mutualfc.codecs import create_codec
from mutualfc.eval.coco import CocoDataset
from mutualfc.images import load_image
from mutualfc.io import atomic_write_text, read_jsonl
from mutualfc.tasks import create_task
from mutualfc.tasks.base import FeatureSet


def features(task, ds: CocoDataset, cache: Path | None) -> list[tuple[int, FeatureSet, int]]:
    """(image id, features, original pixels) of every image, from ``cache`` when it holds them."""
    if cache is not None and cache.exists():
        return torch.load(cache, weights_only=False)
    out = []
    for r in tqdm(ds.records, desc="features"):
        image = load_image(r.path)
        out.append((r.image_id, task.front(image), image.shape[0] * image.shape[1]))
    if cache is not None:
        torch.save(out, cache)
    return out


def report(rows: list[dict], names: list[str], images: int) -> str:
    """Markdown: every setting by rate, with the points on each metric's Pareto front in bold (the P3 oracles,
    ``boost=inf``, are not codecs: shown, never on the front)."""
    rows = sorted(rows, key=lambda r: r["bpp"])
    front = [set() for _ in names]
    for j in range(len(names)):
        best = -1.0
        for i, r in enumerate(rows):
            if "boost=inf" not in r["setting"] and r["maps"][j] > best:
                best = r["maps"][j]
                front[j].add(i)
    lines = [
        f"{images} images of a coco-train fold at the mutual codec's top quality, residual stream on; mAP@[.5:.95]"
        " against pseudo ground truth (the uncompressed detector's boxes scoring at least the file's cut-off). "
        "Settings: `tau` skip threshold, `tau_r` objectness from which a cell carries the residual (default: "
        "`tau`), `tau_hi` / `q_lo` the second tier (cells below `tau_hi` coded at quality `q_lo`), `boost` the "
        "residual's gain boost (`inf`: the original P3 in every cell, an oracle), `rd` a per-cell rate-distortion "
        "choice of the residual's cells (a cell carries it where it removes at least `rd` squared error per bit; the "
        "codec uses `codecs.learned.RESIDUAL_RD` wherever it sends the residual). Bold: on that metric's Pareto front. "
        "`python benchmarks/fidelity.py --help`.",
        "",
        "| setting | bpp | base | residual | " + " | ".join(f"mAP vs {n}" for n in names) + " |",
        "|---" * (4 + len(names)) + "|",
    ]
    for i, r in enumerate(rows):
        maps = [f"**{m:.4f}**" if i in front[j] else f"{m:.4f}" for j, m in enumerate(r["maps"])]
        lines.append(f"| {r['setting']} | {r['bpp']:.4f} | {r['bpp_base']:.4f} | {r['bpp_residual']:.4f} | "
                     + " | ".join(maps) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="image folder")
    ap.add_argument(
        "--annotations",
        required=True,
        help="COCO annotations (pseudo ground truth); several, comma-separated: mAP against each",
    )
    ap.add_argument("--limit", type=int, help="first N images only")
    ap.add_argument(
        "--settings",
        default="",
        help="settings separated by ';', each comma-separated key=value: tau (skip below), boost (residual gain "
        "boost; inf: the original P3), tau_r (residual from), tau_hi (below it: the low tier), q_lo (its quality), "
        "rd (a cell carries the residual only where it removes this much squared error per bit), q (the model "
        "quality, default: the top), res (on or off: the residual stream)",
    )
    ap.add_argument("--checkpoint", help="mutual checkpoint (default: the zoo's)")
    ap.add_argument("--feature-cache", help="file keeping the images' features between runs")
    ap.add_argument("--out", required=True, help="JSON lines file to append to")
    ap.add_argument("--report", metavar="MD", help="then write a Markdown table of every setting in --out to MD")
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = create_task("yolov5n-coco")
    sets = [CocoDataset(args.images, a).subset(args.limit) for a in args.annotations.split(",")]
    ds = sets[0]
    codec = create_codec("mutual", task, checkpoint=args.checkpoint)
    net = codec.net
    settings = list(filter(None, args.settings.split(";")))
    feats = features(task, ds, Path(args.feature_cache) if args.feature_cache else None) if settings else []
    pixels = sum(p for _, _, p in feats)
    top = net.cfg.qualities - 1
    for setting in settings:
        opts = {"tau": "0.1", "boost": "0"} | dict(kv.split("=") for kv in setting.split(","))
        tau = float(opts["tau"])
        tau_r = float(opts.get("tau_r", tau))
        tau_hi = float(opts.get("tau_hi", 0))
        q = float(opts.get("q", top))
        step = round((q - float(opts.get("q_lo", q))) * 8)
        oracle = opts["boost"] == "inf"
        rd = float(opts.get("rd", 0))
        boost = 0 if oracle else int(opts["boost"])
        residual = opts.get("res", "on") == "on"
        bits = {"container": 0, "mask": 0, "base": 0, "residual": 0}
        dets = []
        for i, fs, _ in tqdm(feats, desc=setting):
            obj = task.objectness_map(fs.levels)
            strings, meta = net.compress(fs.levels, q, residual=residual, keep=obj >= tau, residual_keep=obj >= tau_r,
                                         boost=boost, low_keep=obj < tau_hi, low_step=step,
                                         residual_rd=rd)  # fmt: skip
            header = bitstream.Header(codec.codec_id, codec.task_id, q, codec.model_tag, 640, 480)
            size = 8 * len(bitstream.pack(header, strings))
            parts = [8 * len(s) for s in strings]
            bits["container"] += size - sum(parts)
            bits["mask"] += parts[0]
            bits["base"] += parts[1]
            bits["residual"] += sum(parts[2:])
            levels = meta["levels"] | ({net.finest: fs.levels[net.finest]} if oracle else {})
            dets += task.back(FeatureSet(levels, fs.geometry)).to_coco(i)
        maps = [d.evaluate(dets)["map"] for d in sets]
        row = {"setting": setting, "bpp": sum(bits.values()) / pixels, "map": maps[0], "maps": maps,
               "images": len(feats), **{f"bpp_{k}": v / pixels for k, v in bits.items()}}  # fmt: skip
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    if args.report:
        names = [Path(a).name for a in args.annotations.split(",")]
        rows = [r for r in read_jsonl(args.out) if len(r.get("maps", ())) == len(names)]
        counts = {r.get("images", args.limit or len(ds.records)) for r in rows}  # rows before the count: --limit
        if len(counts) > 1:
            raise SystemExit(f"{args.out} mixes settings measured on {sorted(counts)} images: report them apart")
        atomic_write_text(Path(args.report), report(rows, names, counts.pop() if counts else 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
