"""``mutualfc complexity``: kMAC per original-image pixel of the four parts of a split pipeline (MPEG's units)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mutualfc.cli.options import add_codec_options, add_device, add_task, codec_options, load_task, parse_params
from mutualfc.errors import MutualFCError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "coco-mini" / "images"  # in a source checkout


def cmd_complexity(args) -> int:
    from mutualfc.codecs import create_codec
    from mutualfc.eval.complexity import PARTS, measure
    from mutualfc.images import image_files, load_image

    folder = Path(args.images) if args.images else EXAMPLES
    if not folder.is_dir():
        raise MutualFCError(f"image folder not found: {folder} (give one with --images)")
    files = image_files(folder)[: args.limit]
    if not files:
        raise MutualFCError(f"no images in {folder}")
    images = [load_image(p) for p in files]
    task = load_task(args)
    codec = None if args.codec == "none" else create_codec(args.codec, task, **codec_options(args))
    middle = None if codec is None else (codec.default_params[len(codec.default_params) // 2],)
    params = [None] if codec is None else parse_params(args.quality, middle)
    for q in params:
        c = measure(task, codec, q, images).to_dict()
        row = {"task": task.name, "codec": args.codec, "param": q, "kmac_per_pixel": c}
        if args.json:
            print(json.dumps(row))
            continue
        parts = "  ".join(f"{p} {'not counted' if c[p] is None else f'{c[p]:.3f}'}" for p in PARTS)
        sym = "-" if c["symbols_per_pixel"] is None else f"{c['symbols_per_pixel']:.4f}"
        print(f"{task.name} {args.codec} {'' if q is None else f'{q:g} '}kMAC/px: {parts}  total {c['total']:.3f}"
              f"  symbols/px {sym}  ({c['images']} images, {c['pixels']} px)")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "complexity",
        help="multiply-accumulates per original-image pixel (kMAC/px) of the network's front half, the codec's "
        "encoder and decoder, and the back half, and the entropy coder's symbols per pixel",
        description="Counts multiply-accumulates with torch.utils.flop_counter (the exact integer decoding path's "
        "products included) on real images, per pixel of the original images; external codecs (x265, VVenC, "
        "libjpeg, libwebp) are reported as not counted.",
    )
    add_task(p)
    p.add_argument("--codec", required=True, help="none (the network alone) or a codec ('mutualfc codecs')")
    p.add_argument("--quality", help="comma-separated qualities / QPs (default: the middle of the codec's sweep)")
    p.add_argument("--images", help="folder of images to count on (default: the bundled examples)")
    p.add_argument("--limit", type=int, default=5, help="count on the first N images (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON line per quality")
    add_codec_options(p)
    add_device(p)
    p.set_defaults(func=cmd_complexity)
