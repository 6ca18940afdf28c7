"""The per-file commands: ``detect`` (images -> detections), ``encode`` (images -> .mfc), ``decode`` (.mfc ->
detections, features, drawings). Inputs are checked before torch and the task network are imported."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from mutualfc.cli.inputs import BITSTREAM_SUFFIXES, IMAGE_SUFFIXES, Batch, expand, image_ids, outputs
from mutualfc.cli.options import (
    add_batch,
    add_codec_options,
    add_decoder_options,
    add_device,
    add_exif,
    add_skip_errors,
    add_task,
    codec_options,
    load_task,
    progress,
)
from mutualfc.errors import MutualFCError


def load_chunk(args, batch: Batch, paths: list[Path]) -> list:
    """(path, image) for each of ``paths`` that loads (``batch`` reports or raises for the others)."""
    from mutualfc.images import load_image

    loaded = [(p, batch.run(p, lambda p=p: load_image(p, args.exif_transpose == "on"))) for p in paths]
    return [(p, im) for p, im in loaded if im is not None]


def cmd_detect(args) -> int:
    from tqdm import tqdm

    if args.annotations:  # COCO evaluation: the annotations' images and ids, stored pixel order
        if args.inputs or not args.images:
            raise MutualFCError("--annotations goes with --images FOLDER (the folder its file names refer to)")
        return _detect_coco(args)
    paths = expand(args.inputs + ([args.images] if args.images else []), IMAGE_SUFFIXES, "images")[: args.limit]
    batch, ids = Batch(args.skip_errors), dict(zip(paths, image_ids(paths), strict=True))
    good = batch.readable(paths)  # every unreadable file named now, before the detector is loaded
    from mutualfc.io import atomic_write_text, report_stream
    from mutualfc.tasks.batching import detect_many, in_chunks

    task, results = load_task(args), []
    with tqdm(total=len(good), desc="detect", unit="img", disable=not progress(args)) as bar:
        for chunk in in_chunks(good, args.batch):
            loaded = load_chunk(args, batch, chunk)
            for (path, _), det in zip(loaded, detect_many(task, [im for _, im in loaded], args.batch), strict=True):
                results += det.to_coco(ids[path], args.min_score, task.category_names, path.name)
            bar.update(len(chunk))
    atomic_write_text(args.out, json.dumps(results))
    print(
        f"{len(results)} detections (score >= {args.min_score:g}) on {len(paths) - batch.skipped} images -> {args.out}",
        file=report_stream(args.out),
    )
    return batch.exit_code


def _detect_coco(args) -> int:
    from mutualfc.eval.coco import CocoDataset
    from mutualfc.eval.runner import run_detection
    from mutualfc.io import atomic_write_text, report_stream

    ds = CocoDataset(args.images, args.annotations).subset(args.limit)
    task = load_task(args)
    results = run_detection(task, ds, progress(args))  # every box: mAP needs them all
    s = ds.evaluate(results)
    kept = [r for r in results if r["score"] >= args.min_score]
    atomic_write_text(args.out, json.dumps(kept))
    print(
        f"{len(kept)} detections (score >= {args.min_score:g}) on {len(ds)} images -> {args.out}  "
        f"mAP={s['map']:.4f} mAP50={s['map50']:.4f} (all {len(results)} boxes)",
        file=report_stream(args.out),
    )
    return 0


def check_rate_options(args) -> None:
    """--quality or --target-bpp, not both (checked before anything is loaded)."""
    if args.target_bpp is not None and args.quality is not None:
        raise MutualFCError("give --quality or --target-bpp, not both")
    if args.target_bpp is not None and args.target_bpp <= 0:
        raise MutualFCError("--target-bpp must be positive")


def load_encoder(args):
    """-> the task network, the codec and the parameter an encoding command asked for."""
    from mutualfc.codecs import LearnedFeatureCodec, create_codec

    task = load_task(args)
    codec = create_codec(args.codec, task, **codec_options(args))
    if args.target_bpp is not None and not isinstance(codec, LearnedFeatureCodec):
        raise MutualFCError(f"--target-bpp needs a learned codec (mutual, separate), not {codec.name}")
    param = args.quality if args.quality is not None else codec.default_params[len(codec.default_params) // 2]
    return task, codec, param


def encode_file(args, codec, param: float, path: Path) -> tuple[bytes, float, int]:
    """One image file -> ``encode_prepared``'s (container, parameter used, original pixels)."""
    from mutualfc.images import load_image

    image = load_image(path, args.exif_transpose == "on")
    return encode_prepared(args, codec, param, path, codec.prepare(image), image.shape[0] * image.shape[1])


def encode_prepared(args, codec, param: float, path: Path, x, pixels: int) -> tuple[bytes, float, int]:
    """One prepared image (``codec.prepare_many``) -> (container, the parameter used, original pixels); with
    --target-bpp, the highest quality within budget, and a warning (or with --strict-budget an error) when even
    quality 0 is over it."""
    if args.target_bpp is None:
        return codec.encode(x, param), param, pixels
    q, data = codec.quality_for_bpp(x, args.target_bpp, pixels)
    bpp = 8 * len(data) / pixels
    if bpp > args.target_bpp:
        msg = (f"{path}: even the lowest quality needs {bpp:.4f} bpp, over the --target-bpp {args.target_bpp:g} "
               f"({bpp / args.target_bpp:.1f}x)")  # fmt: skip
        if getattr(args, "strict_budget", False):
            raise MutualFCError(msg)
        print(f"mutualfc: warning: {msg}", file=sys.stderr)
    return data, q, pixels


def cmd_encode(args) -> int:
    check_rate_options(args)
    paths = expand(args.inputs, IMAGE_SUFFIXES, "images")
    targets = dict(zip(paths, outputs(paths, args.out_dir, ".mfc"), strict=True))
    batch, coded = Batch(args.skip_errors), []
    good = batch.readable(paths)  # every unreadable file named now, before the codec is loaded
    from mutualfc.io import atomic_write_bytes
    from mutualfc.tasks.batching import in_chunks

    _, codec, param = load_encoder(args)
    for chunk in in_chunks(good, args.batch):  # everything is coded before anything is written
        loaded = load_chunk(args, batch, chunk)
        prepared = codec.prepare_many([im for _, im in loaded], args.batch)
        for (path, image), x in zip(loaded, prepared, strict=True):
            pixels = image.shape[0] * image.shape[1]
            result = batch.run(path, lambda p=path, x=x, n=pixels: encode_prepared(args, codec, param, p, x, n))
            if result is not None:
                coded.append((path, targets[path], *result))
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    total_bits = total_px = 0
    for path, out, data, q, pixels in coded:
        atomic_write_bytes(out, data)
        total_bits, total_px = total_bits + 8 * len(data), total_px + pixels
        print(f"{path} -> {out}  {codec.param_name}={q:g}  {len(data)} bytes  {8 * len(data) / pixels:.5f} bpp")
    if total_px:
        files = f"{len(coded)} file" + "s" * (len(coded) != 1)
        print(f"total {total_bits} bits / {total_px} pixels = {total_bits / total_px:.5f} bpp ({files})")
    return batch.exit_code


def _draw(args, path: Path, out, names: dict[int, str]) -> None:
    """Boxes on the decoded image (image codecs), else on the original from --images, else on a grey canvas."""
    import numpy as np

    from mutualfc.eval.draw import draw_detections
    from mutualfc.images import load_image
    from mutualfc.io import atomic_write_bytes

    canvas, why = out.image, "no --images folder with the originals"
    if canvas is None and args.images:
        found = [f for f in Path(args.images).glob(path.stem + ".*") if f.suffix.lower() in IMAGE_SUFFIXES]
        canvas = load_image(found[0], args.exif_transpose == "on") if found else None
        why = f"no {path.stem}.* in {args.images}" if not found else f"{found[0]} is not the coded image's size"
    if canvas is None or canvas.shape[:2] != (out.header.height, out.header.width):
        print(f"mutualfc: warning: {path}: boxes drawn on a grey canvas ({why})", file=sys.stderr)
        canvas = np.full((out.header.height, out.header.width, 3), 114, np.uint8)
    buf = io.BytesIO()
    draw_detections(canvas, out.detections, args.min_score, names).save(buf, format="PNG")
    atomic_write_bytes(Path(args.draw) / f"{path.stem}.png", buf.getvalue())


def tasks_named_by(paths: list[Path]) -> set[str]:
    """The registered task networks the containers' headers name (unreadable files are left to the decoder)."""
    from mutualfc import bitstream
    from mutualfc.errors import BitstreamError
    from mutualfc.registry import task_name

    names = set()
    for p in paths:
        try:
            names.add(task_name(bitstream.unpack(p.read_bytes())[0].task_id))
        except (BitstreamError, OSError):
            pass
    return names - {None}


def cmd_decode(args) -> int:
    paths = expand(args.inputs, BITSTREAM_SUFFIXES, "bitstream files")
    for flag, folder in (("--features", args.features), ("--draw", args.draw)):
        if folder and Path(folder).is_file():
            raise MutualFCError(f"{flag} {folder}: is a file, not a folder")
    from mutualfc.io import atomic_write_text
    from mutualfc.pipeline import Decoder
    from mutualfc.tasks.batching import in_chunks

    task = load_task(args)
    others = {n: load_task(args, n) for n in tasks_named_by(paths) if n != task.name}  # containers name their task
    decoder, batch, results = Decoder(task, tasks=others, **codec_options(args)), Batch(args.skip_errors), []
    ids = dict(zip(paths, image_ids(paths), strict=True))
    for chunk in in_chunks(paths, args.batch):
        payloads = [(p, batch.run(p, lambda p=p: decoder.decode_payload(p.read_bytes()))) for p in chunk]
        payloads = [(p, d) for p, d in payloads if d is not None]
        for (path, _), out in zip(payloads, decoder.finish([d for _, d in payloads], args.batch), strict=True):
            results += _report_decoded(args, path, ids[path], out)
    if args.detections:
        atomic_write_text(args.detections, json.dumps(results))
    return batch.exit_code


def _report_decoded(args, path: Path, image_id: int, out) -> list[dict]:
    """One decoded file's outputs (drawing, features, a line) -> its COCO results."""
    import numpy as np

    from mutualfc.io import atomic_write_bytes, report_stream

    names = out.codec.task.category_names
    if args.draw:
        _draw(args, path, out, names)
    if args.features and out.features is not None:
        buf = io.BytesIO()
        np.savez(buf, **{k: v.numpy() for k, v in out.features.levels.items()})
        atomic_write_bytes(Path(args.features) / f"{path.stem}.npz", buf.getvalue())
    h = out.header
    kept = int((out.detections.scores >= args.min_score).sum())
    print(
        f"{path}: {out.codec.name} {out.codec.param_name}={h.param:g} {h.width}x{h.height} -> {kept} "
        f"detections (score >= {args.min_score:g})",
        file=report_stream(args.detections),
    )
    return out.detections.to_coco(image_id, args.min_score, names, path.name)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="run the detector on images, write detections (COCO results JSON)")
    add_task(p)
    p.add_argument("inputs", nargs="*", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--images", help="a folder of images (with --annotations: the folder its file names refer to)")
    p.add_argument(
        "--annotations",
        help="COCO instances JSON: its images and ids are used and the mAP is printed "
        "(stored pixel order; the mAP counts every box, --min-score only filters what is written)",
    )
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument(
        "--out", required=True, help="output detections (COCO results JSON, with file_name and category; '-': stdout)"
    )
    p.add_argument(
        "--min-score",
        type=float,
        default=0.25,
        help="lowest score written (default: %(default)s; 0 keeps every box, as COCO mAP tools expect)",
    )
    add_exif(p)
    add_skip_errors(p)
    add_batch(p)
    add_device(p)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("encode", help="encode images to mutualfc bitstream files (one .mfc per image)")
    add_task(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--codec", required=True, help="codec name ('mutualfc codecs' lists them)")
    p.add_argument(
        "--quality",
        type=float,
        help="quality / QP (default: middle of the codec's sweep); learned codecs: 0..7 are the model's "
        "rate points (fractions interpolate; the residual stream is sent from 6 by default), 7..8 raise fidelity: "
        "the skip threshold falls to 0.02 at 8 and the cells it adds are coded at a lower quality that rises "
        "to 7's at 8 (unless --residual / --skip-below are given)",
    )
    p.add_argument(
        "--target-bpp",
        type=float,
        help="learned codecs, instead of --quality: per image, the highest (fractional) quality whose file "
        "fits this many bits per pixel; an image that does not fit even at quality 0 is warned about",
    )
    p.add_argument(
        "--strict-budget",
        action="store_true",
        help="with --target-bpp: an image over budget at quality 0 is an error, and nothing is written",
    )
    p.add_argument("--out-dir", required=True, help="folder for the .mfc files (<image stem>.mfc)")
    add_codec_options(p)
    add_exif(p)
    add_skip_errors(p)
    add_batch(p)
    add_device(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode .mfc files and run the rest of the task network")
    add_task(p)
    p.add_argument("inputs", nargs="+", metavar="FILE", help=".mfc files or folders of them")
    p.add_argument(
        "--detections",
        help="write detections here (COCO results JSON with file_name and category; '-': stdout; "
        "image_id = the file stems when all are distinct numbers, else 1..N in the order given)",
    )
    p.add_argument("--features", help="write decoded feature levels here as .npz (feature codecs)")
    p.add_argument("--draw", help="write a PNG per file with the detected boxes drawn here")
    p.add_argument("--images", help="with --draw: folder of the originals to draw on (feature codecs; matched by name)")
    p.add_argument(
        "--min-score",
        type=float,
        default=0.25,
        help="lowest score written to --detections and drawn (default: %(default)s; 0 keeps every box, "
        "as COCO mAP tools expect)",
    )
    add_decoder_options(p)
    add_exif(p)
    add_skip_errors(p)
    add_batch(p)
    add_device(p)
    p.set_defaults(func=cmd_decode)
