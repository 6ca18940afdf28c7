"""Batch benchmark: images per second of ``Encoder.encode_many`` (front half + codec encoder) and
``Decoder.decode_many`` (codec decoder + back half) at several batch sizes, on the CPU.

The images are the first ``--images`` of the COCO folder, in file order (so batches hold the shapes as they come:
what a folder on disk gives the CLI). Each batch size runs ``--repeat`` times over all the images and the fastest
pass counts. The containers and detections of every batch size are checked to equal batch 1's. Writes
results/batch.json and results/batch.md.

    python benchmarks/batch.py --images 64 --batches 1,8,32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mutualfc.codecs import create_codec
from mutualfc.eval.coco import CocoDataset
from mutualfc.eval.runner import cpu_model
from mutualfc.images import load_image
from mutualfc.io import atomic_write_text
from mutualfc.pipeline import Decoder, Encoder
from mutualfc.tasks import create_task

ROOT = Path(__file__).resolve().parents[1]


def fastest(f, repeat: int):
    """-> f()'s result and its fastest time in seconds over ``repeat`` runs."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder with images/")
    ap.add_argument("--images", type=int, default=64, help="number of images (default: %(default)s)")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes (default: %(default)s)")
    ap.add_argument("--codec", default="mutual", help="codec (default: %(default)s)")
    ap.add_argument("--param", type=float, default=4, help="its quality / QP (default: %(default)s)")
    ap.add_argument("--tasks", default="yolov5n-coco", help="comma-separated task networks (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=2, help="passes per batch size; the fastest counts")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = CocoDataset(Path(args.data) / "images").subset(args.images)
    images = [load_image(r.path) for r in ds.records]
    shapes = len({im.shape for im in images})
    rows = []
    for task_name in args.tasks.split(","):
        task = create_task(task_name)
        codec = create_codec(args.codec, task)
        encoder, decoder = Encoder(task, codec), Decoder(task)
        reference = None
        for b in (int(x) for x in args.batches.split(",")):
            data, enc_s = fastest(lambda b=b, e=encoder: e.encode_many(images, args.param, b), args.repeat)
            decoded, dec_s = fastest(lambda b=b, d=data, e=decoder: e.decode_many(d, b), args.repeat)
            dets = [(d.detections.boxes, d.detections.scores) for d in decoded]
            if reference is None:
                reference = (data, dets)
            same = data == reference[0] and all(
                np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])
                for a, c in zip(dets, reference[1], strict=True)
            )
            rows.append({"task": task_name, "codec": args.codec, "param": args.param, "batch": b,
                         "encode_img_s": len(images) / enc_s, "decode_img_s": len(images) / dec_s,
                         "end_to_end_img_s": len(images) / (enc_s + dec_s), "identical_to_batch_1": same})  # fmt: skip
            r = rows[-1]
            print(f"{task_name} batch {b}: encode {r['encode_img_s']:.1f} img/s, decode {r['decode_img_s']:.1f} "
                  f"img/s, both {r['end_to_end_img_s']:.1f} img/s, identical to batch 1: {same}")  # fmt: skip
    meta = {"images": len(images), "input_shapes": shapes, "threads": args.threads, "repeat": args.repeat,
            "machine": cpu_model(), "torch": torch.__version__}  # fmt: skip
    out = Path(args.out_dir)
    atomic_write_text(out / "batch.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    cmd = f"python benchmarks/batch.py --images {args.images} --batches {args.batches} --tasks {args.tasks}"
    lines = [
        f"# Batches: images per second on the CPU ({len(images)} images, {shapes} image shapes, "
        f"{args.threads} threads)",
        "",
        f"`{cmd}`; encode = task front half + codec encoder (`Encoder.encode_many`), decode = codec decoder + back "
        "half (`Decoder.decode_many`); fastest of "
        f"{args.repeat} passes. Every batch size's containers and detections equal batch 1's (last column).",
        "",
        "| task | codec | param | batch | encode img/s | decode img/s | encode + decode img/s | identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["task"], r["codec"], f"{r['param']:g}", r["batch"], f"{r['encode_img_s']:.1f}",
                 f"{r['decode_img_s']:.1f}", f"{r['end_to_end_img_s']:.1f}", r["identical_to_batch_1"]]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    atomic_write_text(out / "batch.md", "\n".join(lines) + "\n")
    return 0 if all(r["identical_to_batch_1"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
