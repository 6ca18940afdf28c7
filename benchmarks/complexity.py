"""Complexity table: kMAC per original-image pixel of the four parts (front half, codec encoder, codec decoder, back
half) and entropy-coded symbols per pixel, for every shipped task and codec (``mutualfc.eval.complexity``), on the
first ``--images`` images of a folder. Writes results/complexity.jsonl and results/complexity.md.

    python benchmarks/complexity.py --data ../shared/data/coco-val212 --images 20
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mutualfc.codecs import LearnedFeatureCodec, codec_class, create_codec
from mutualfc.eval.complexity import PARTS, measure
from mutualfc.images import image_files, load_image
from mutualfc.io import atomic_write_text
from mutualfc.tasks import create_task
from mutualfc.zoo import ZOO

ROOT = Path(__file__).resolve().parents[1]
POINTS = [("none", None), ("mutual", 0), ("mutual", 4), ("mutual", 7.75), ("mutual-fast", 0), ("mutual-fast", 4),
          ("mutual-fast", 7.75), ("separate", 4), ("hevc-feature", 22),
          ("vvc-feature", 22), ("hevc-image", 37), ("vvc-image", 37), ("jpeg", 50), ("webp", 50)]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder with images/")
    ap.add_argument("--images", type=int, default=20, help="count on the first N images (default: %(default)s)")
    ap.add_argument("--tasks", default="yolov5n-coco,yolox-nano-coco", help="comma-separated task networks")
    ap.add_argument("--vvc-encoder", default=str(ROOT.parent / "shared/tools/vvenc/vvencapp"), help="vvencapp")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()
    images = [load_image(p) for p in image_files(Path(args.data) / "images")[: args.images]]
    rows = []
    for name in args.tasks.split(","):
        task = create_task(name)
        for codec_name, q in POINTS:
            opts = {"vvc_encoder": args.vvc_encoder} if codec_name.startswith("vvc") else {}
            if codec_name.startswith("vvc") and not Path(args.vvc_encoder).is_file():
                continue
            learned = codec_name != "none" and issubclass(codec_class(codec_name), LearnedFeatureCodec)
            if learned and (codec_name, name) not in ZOO:
                continue  # no zoo model of this codec for this task
            codec = None if codec_name == "none" else create_codec(codec_name, task, **opts)
            c = measure(task, codec, q, images).to_dict()
            rows.append({"task": name, "codec": codec_name, "param": q, "kmac_per_pixel": c})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out_dir)
    atomic_write_text(out / "complexity.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    lines = [f"# Complexity (kMAC per original-image pixel; {len(images)} images of {args.data})", "",
             f"`python benchmarks/complexity.py --images {args.images}`; MACs counted by `torch.utils.flop_counter` "
             "(the exact integer decoding path's products included); external codecs (x265, VVenC, libjpeg, "
             "libwebp) are not counted (-); symbols: entropy-decoded symbols per pixel.", "",
             "| task | codec | param | front | encoder | decoder | back | total counted | symbols/px |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        c = r["kmac_per_pixel"]
        cells = ["-" if c[p] is None else f"{c[p]:.3f}" for p in (*PARTS, "total")]
        sym = "-" if c["symbols_per_pixel"] is None else f"{c['symbols_per_pixel']:.4f}"
        lines.append(f"| {r['task']} | {r['codec']} | {'' if r['param'] is None else r['param']} | "
                     + " | ".join(cells) + f" | {sym} |")  # fmt: skip
    atomic_write_text(out / "complexity.md", "\n".join(lines) + "\n")
    print(f"wrote {out / 'complexity.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
