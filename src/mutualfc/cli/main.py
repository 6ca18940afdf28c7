"""``mutualfc``: detect, evaluate codecs on COCO, encode/decode files, BD-rate and RD plots."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mutualfc.errors import MutualFCError


# ---------------------------------------------------------------------------------------------------------
# shared options
# ---------------------------------------------------------------------------------------------------------
def _add_task(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="yolov5n-coco", help="split task network (default: %(default)s)")
    p.add_argument(
        "--weights",
        help="detector weights file (state dict or upstream .pt); default: $MUTUALFC_WEIGHTS, $MUTUALFC_WEIGHTS_DIR, "
        "~/.cache/mutualfc/weights, then download",
    )


def _add_dataset(p: argparse.ArgumentParser, annotations_required: bool = False) -> None:
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument(
        "--annotations",
        required=annotations_required,
        help="COCO instances JSON; only its listed images are used and image ids are taken from it",
    )
    p.add_argument("--limit", type=int, help="use only the first N images (sorted by image id)")


def _add_codec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", help="learned codecs: use this checkpoint instead of the zoo's (mutualfc train export)"
    )
    p.add_argument(
        "--residual",
        choices=["auto", "on", "off"],
        help="mutual codec: the P3 residual stream; 'off' (default up to quality 7: P3 is predicted from the decoded "
        "base alone, the best trade-off measured; above 7 the default is 'on'), 'auto' sends it for an image only when "
        "its bits buy more accuracy than the rate-distortion trade-off the model was trained for, 'on' always (the "
        "highest accuracy); given explicitly, it holds at every quality",
    )
    p.add_argument(
        "--skip-below",
        type=float,
        metavar="OBJECTNESS",
        help="learned codecs: stride-32 cells where the detector, run on the original features, predicts no "
        "objectness above this value are skipped: they cost one mask bit each and decode to the mean features; "
        "0 codes every cell (default: 0.05, falling to 0.01 from quality 7 to 8; given explicitly, it holds at every "
        "quality)",
    )
    p.add_argument("--preset", help="x265 preset for the HEVC anchors (default: medium)")
    p.add_argument("--vvc-encoder", help="path to vvencapp or VTM EncoderApp for the VVC anchors (default: PATH)")
    p.add_argument("--vvc-config", help="VTM encoder config file (e.g. cfg/encoder_intra_vtm.cfg); VTM only")


def _codec_options(args) -> dict:
    return {
        "preset": args.preset,
        "vvc_encoder": args.vvc_encoder,
        "vvc_config": args.vvc_config,
        "checkpoint": args.checkpoint,
        "residual": getattr(args, "residual", None),
        "skip_below": getattr(args, "skip_below", None),
    }


def _params(text: str | None, default: tuple) -> list[float]:
    if not text:
        return [float(x) for x in default]
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MutualFCError(f"--param must be a comma-separated list of numbers, got {text!r}") from None


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


# ---------------------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------------------
def cmd_detect(args) -> int:
    from mutualfc.eval.coco import CocoDataset
    from mutualfc.eval.runner import run_detection
    from mutualfc.io import atomic_write_text
    from mutualfc.tasks import create_task

    ds = CocoDataset(args.images, args.annotations).subset(args.limit)
    task = create_task(args.task, weights=args.weights)
    results = run_detection(task, ds, _progress(args))
    atomic_write_text(args.out, json.dumps(results))
    msg = f"{len(results)} detections on {len(ds)} images -> {args.out}"
    if ds.gt is not None:
        s = ds.evaluate(results)
        msg += f"  mAP={s['map']:.4f} mAP50={s['map50']:.4f}"
    print(msg)
    return 0


def cmd_eval(args) -> int:
    from mutualfc.codecs import create_codec
    from mutualfc.eval.coco import CocoDataset
    from mutualfc.eval.runner import evaluate_point
    from mutualfc.io import append_jsonl, read_jsonl
    from mutualfc.tasks import create_task

    ds = CocoDataset(args.images, args.annotations).subset(args.limit)
    task = create_task(args.task, weights=args.weights)
    codec = None if args.codec == "none" else create_codec(args.codec, task, **_codec_options(args))
    params = [None] if codec is None else _params(args.param, codec.default_params)
    done = set()
    if args.skip_existing and Path(args.out).is_file():
        done = {(r["codec"], r["param"], r["n_images"]) for r in read_jsonl(args.out)}
    label = args.label or args.codec
    for p in params:
        if (label, p, len(ds)) in done:
            print(f"skip {label} {p} (already in {args.out})")
            continue
        bdir = Path(args.bitstreams) / f"{label}-{p:g}" if (args.bitstreams and p is not None) else None
        rec = evaluate_point(task, codec, p, ds, bdir, _progress(args), label=args.label)
        append_jsonl(args.out, rec)
        bpp = "-" if rec["bpp"] is None else f"{rec['bpp']:.5f}"
        print(f"{rec['codec']} param={p} bpp={bpp} mAP={rec['map']:.4f} mAP50={rec['map50']:.4f}", flush=True)
    if args.plot:
        from mutualfc.eval.plot import plot_rd

        plot_rd(read_jsonl(args.out), args.plot)
    return 0


def cmd_bdrate(args) -> int:
    from mutualfc.eval.bdrate import bd_rate, curve_from_records
    from mutualfc.io import read_jsonl

    test = curve_from_records(read_jsonl(args.test), args.metric, args.test_codec)
    ref = curve_from_records(read_jsonl(args.reference), args.metric, args.ref_codec)
    res = bd_rate(test, ref, args.method)
    lo, hi = res["overlap"]
    for c in (test, ref):
        if c.dropped:
            print(f"note: {c.name}: {c.dropped} point(s) dropped to keep the curve monotone (upper envelope)")
    print(
        f"test={res['test']} ({res['test_points']} pts)  reference={res['reference']} ({res['reference_points']} pts)"
    )
    share = 100 * res["overlap_fraction"]
    print(f"method={res['method']}  metric={args.metric}  mAP overlap used={lo:.4f}..{hi:.4f} ({share:.0f}% of span)")
    if args.json:
        print(json.dumps(res))
    print(f"BD-rate: {res['bd_rate']:.2f} %")
    return 0


def cmd_plot(args) -> int:
    from mutualfc.eval.plot import plot_rd
    from mutualfc.io import read_jsonl

    records = [r for f in args.results for r in read_jsonl(f)]
    plot_rd(records, args.out, args.metric, args.title)
    print(f"wrote {args.out}")
    return 0


def cmd_anchor_stats(args) -> int:
    from mutualfc.anchors.feature import measure_range
    from mutualfc.eval.coco import CocoDataset, load_image
    from mutualfc.io import atomic_write_text
    from mutualfc.tasks import create_task

    ds = CocoDataset(args.images).subset(args.limit)
    task = create_task(args.task, weights=args.weights)
    stats = measure_range(task, (load_image(r.path) for r in ds.records), _progress(args))
    stats["source"] = str(args.images)
    atomic_write_text(args.out, json.dumps(stats, indent=1) + "\n")
    print(f"min={stats['min']:.6f} max={stats['max']:.6f} over {stats['n_images']} images -> {args.out}")
    return 0


def cmd_anchor_list(args) -> int:
    from mutualfc.codecs import _registry

    for name, cls in _registry().items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:14s} {cls.domain:9s} {cls.param_name}={','.join(f'{p:g}' for p in cls.default_params)}  {doc}")
    return 0


def cmd_encode(args) -> int:
    from mutualfc.codecs import create_codec
    from mutualfc.eval.coco import load_image
    from mutualfc.io import atomic_write_bytes
    from mutualfc.tasks import create_task

    task = create_task(args.task, weights=args.weights)
    codec = create_codec(args.codec, task, **_codec_options(args))
    param = args.quality if args.quality is not None else codec.default_params[len(codec.default_params) // 2]
    if args.target_bpp is not None and not hasattr(codec, "quality_for_bpp"):
        raise MutualFCError(f"--target-bpp needs a learned codec (mutual, separate), not {codec.name}")
    if args.target_bpp is not None and args.target_bpp <= 0:
        raise MutualFCError("--target-bpp must be positive")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    total_bits = total_px = 0
    for f in args.images:
        image = load_image(f)
        x = task.front(image) if codec.domain == "features" else image
        if args.target_bpp is not None:
            param, data = codec.quality_for_bpp(x, args.target_bpp, image.shape[0] * image.shape[1])
        else:
            data = codec.encode(x, param)
        out = Path(args.out_dir) / (Path(f).stem + ".mfc")
        atomic_write_bytes(out, data)
        total_bits += 8 * len(data)
        total_px += image.shape[0] * image.shape[1]
        bpp = 8 * len(data) / (image.shape[0] * image.shape[1])
        print(f"{f} -> {out}  {codec.param_name}={param:g}  {len(data)} bytes  {bpp:.5f} bpp")
    print(f"total {total_bits} bits / {total_px} pixels = {total_bits / total_px:.5f} bpp")
    return 0


def _draw(args, path: Path, header, decoded_image, det) -> None:
    """Boxes on the decoded image (image codecs), else on the original from --images, else on a grey canvas."""
    import io

    import numpy as np

    from mutualfc.eval.coco import IMAGE_SUFFIXES, load_image
    from mutualfc.eval.draw import draw_detections
    from mutualfc.io import atomic_write_bytes

    canvas = decoded_image
    if canvas is None and args.images:
        found = [f for f in Path(args.images).glob(path.stem + ".*") if f.suffix.lower() in IMAGE_SUFFIXES]
        canvas = load_image(found[0]) if found else None
    if canvas is None:
        canvas = np.full((header.height, header.width, 3), 114, np.uint8)
    buf = io.BytesIO()
    draw_detections(canvas, det, args.min_score).save(buf, format="PNG")
    atomic_write_bytes(Path(args.draw) / f"{path.stem}.png", buf.getvalue())


def cmd_decode(args) -> int:
    from mutualfc import bitstream
    from mutualfc.codecs import _registry, create_codec
    from mutualfc.errors import BitstreamError
    from mutualfc.io import atomic_write_bytes, atomic_write_text
    from mutualfc.tasks import create_task

    task = create_task(args.task, weights=args.weights)
    by_id = {cls.codec_id: name for name, cls in _registry().items()}
    codecs: dict[int, object] = {}
    results = []
    for f in args.files:
        p = Path(f)
        if not p.is_file():
            raise MutualFCError(f"bitstream file not found: {p}")
        data = p.read_bytes()
        header, _ = bitstream.unpack(data)
        if header.codec_id not in by_id:
            raise BitstreamError(f"{p}: unknown codec id {header.codec_id}")
        if header.codec_id not in codecs:
            codecs[header.codec_id] = create_codec(by_id[header.codec_id], task, **_codec_options(args))
        codec = codecs[header.codec_id]
        try:
            y = codec.decode(data)
        except BitstreamError as e:
            raise BitstreamError(f"{p}: {e}") from None
        det = task.back(y) if codec.domain == "features" else task.detect(y)
        if args.draw:
            _draw(args, p, header, y if codec.domain == "image" else None, det)
        image_id = int(p.stem) if p.stem.isdigit() else len(results)
        results += det.to_coco(image_id)
        if args.features and codec.domain == "features":
            import io

            import numpy as np

            buf = io.BytesIO()
            np.savez(buf, **{k: v.numpy() for k, v in y.levels.items()})
            atomic_write_bytes(Path(args.features) / f"{p.stem}.npz", buf.getvalue())
        print(f"{p}: {codec.name} {codec.param_name}={header.param:g} {header.width}x{header.height} "
              f"-> {len(det)} detections")  # fmt: skip
    if args.detections:
        atomic_write_text(args.detections, json.dumps(results))
    return 0


def cmd_train_cache(args) -> int:
    from mutualfc.tasks import create_task
    from mutualfc.train.cache import build_feature_cache

    task = create_task(args.task, weights=args.weights)
    n = build_feature_cache(task, args.images, args.cache, _progress(args))
    print(f"{n} images cached in {args.cache}")
    return 0


def cmd_train_run(args) -> int:
    import torch

    from mutualfc.train.trainer import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    model = {"arch": args.arch}
    if args.base:
        model["base"] = [x.strip() for x in args.base.split(",")]
    if args.residual is not None:
        model["residual"] = args.residual
    model["metric"] = args.metric
    model["transform"] = args.transform
    cfg = TrainConfig(cache=args.cache, task=args.task, model=model, steps=args.steps, batch=args.batch, crop=args.crop,
                      lr=args.lr, lambda_min=args.lambda_min, lambda_max=args.lambda_max, task_weight=args.task_weight,
                      seed=args.seed, snapshot_every=args.snapshot_every, init_from=args.init_from or "",
                      skip_below=args.skip_below,
                      train_only=tuple(x.strip() for x in args.train_only.split(",") if x.strip()))  # fmt: skip
    last = train(cfg, args.run_dir, device=args.device, progress=_progress(args))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process returns here
        print(f"checkpoint: {last}")
    return 0


def cmd_train_export(args) -> int:
    from mutualfc.train.trainer import export_checkpoint

    meta = export_checkpoint(args.run_dir, args.out, args.name or Path(args.out).stem, args.checkpoint)
    print(f"exported {meta['model_cfg']['arch']} (step {meta['step']}, task {meta['task']}) -> {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mutualfc",
        description="Feature coding for machines: evaluate codecs for split detection on COCO (mAP vs bpp).",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("detect", help="run the detector, write COCO results JSON")
    _add_task(p)
    _add_dataset(p)
    p.add_argument("--out", required=True, help="output detections (COCO results format JSON)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("eval", help="evaluate a codec at one or more rate points (one JSON line each)")
    _add_task(p)
    _add_dataset(p, annotations_required=True)
    p.add_argument(
        "--codec",
        required=True,
        help="none, mutual, separate, jpeg, webp, hevc-image, hevc-feature, vvc-image, vvc-feature",
    )
    p.add_argument("--param", help="comma-separated qualities / QPs (default: the codec's own sweep)")
    p.add_argument("--out", required=True, help="JSON-lines results file; one line is appended per rate point")
    p.add_argument("--bitstreams", help="keep the bitstream files here (default: a temporary folder)")
    p.add_argument("--skip-existing", action="store_true", help="skip rate points already in --out (resume a sweep)")
    p.add_argument("--label", help="name written as 'codec' in the results (default: the codec name)")
    p.add_argument("--plot", help="also draw all curves in --out to this PNG")
    _add_codec_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("encode", help="encode images to mutualfc bitstream files (one .mfc per image)")
    _add_task(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--codec", required=True, help="codec name (see 'mutualfc anchor list')")
    p.add_argument("--quality", type=float,
                   help="quality / QP (default: middle of the codec's sweep); learned codecs: 0..7 are the model's "
                   "rate points (fractions interpolate), 7..8 raise fidelity: the P3 residual stream is sent and "
                   "the skip threshold falls to 0.01 at 8 (unless --residual / --skip-below are given)")  # fmt: skip
    p.add_argument(
        "--target-bpp",
        type=float,
        help="learned codecs: per image, the highest (fractional) quality whose file fits this many bits per pixel",
    )
    p.add_argument("--out-dir", required=True, help="folder for the .mfc files")
    _add_codec_options(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode .mfc files and run the rest of the task network")
    _add_task(p)
    p.add_argument("files", nargs="+", help=".mfc bitstream files")
    p.add_argument("--detections", help="write detections here (COCO results; image_id from the file name)")
    p.add_argument("--features", help="write decoded feature levels here as .npz (feature codecs)")
    p.add_argument("--draw", help="write a PNG per file with the detected boxes drawn here")
    p.add_argument("--images", help="with --draw: folder of the originals to draw on (feature codecs; matched by name)")
    p.add_argument("--min-score", type=float, default=0.25, help="with --draw: lowest score drawn (default: 0.25)")
    _add_codec_options(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("anchor", help="anchor utilities: list anchors, measure the feature-anchor range")
    asub = p.add_subparsers(dest="anchor_command", required=True, metavar="ACTION")
    q = asub.add_parser("list", help="list codecs with their default sweeps")
    q.set_defaults(func=cmd_anchor_list)
    q = asub.add_parser("stats", help="measure the global min/max of the split features (10-bit anchor range)")
    _add_task(q)
    q.add_argument("--images", required=True, help="folder of training images")
    q.add_argument("--limit", type=int, help="use only the first N images")
    q.add_argument("--out", required=True, help="output JSON")
    q.set_defaults(func=cmd_anchor_stats)

    p = sub.add_parser("train", help="train learned codecs: cache features, run (resumable, DDP), export")
    tsub = p.add_subparsers(dest="train_command", required=True, metavar="ACTION")
    q = tsub.add_parser("cache", help="cache the task network's split features of a training image folder (fp16)")
    _add_task(q)
    q.add_argument("--images", required=True, help="folder of training images")
    q.add_argument("--cache", required=True, help="feature cache folder (resumable)")
    q.set_defaults(func=cmd_train_cache)
    q = tsub.add_parser(
        "run",
        help="train a codec on cached features; resumes from RUN_DIR/last.pt; multi-GPU with "
        "'torchrun --nproc-per-node N -m mutualfc.cli.main train run ... --device cuda'",
    )
    _add_task(q)
    q.add_argument("--cache", required=True, help="feature cache folder (from 'train cache')")
    q.add_argument("--run-dir", required=True, help="checkpoints (last.pt), log.csv and config.json go here")
    q.add_argument("--arch", default="mutual", choices=["mutual", "separate"], help="network (default: mutual)")
    q.add_argument("--base", help="mutual: comma-separated base levels coded by BFCNet (default: p4,p5)")
    q.add_argument("--residual", type=int, help="mutual: residual latent channels, 0 = no residual (default: 128)")
    q.add_argument("--transform", choices=["linear", "nonlinear"], default="linear",
                   help="'linear': closed-form transforms, learned entropy models and gains; 'nonlinear': adds "
                   "trained non-linear branches to the transforms (default: %(default)s)")  # fmt: skip
    q.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from the matching weights of a trained checkpoint (zoo file or a run's last.pt), "
                   "e.g. to fine-tune; parts that do not match start as usual (default: none)")  # fmt: skip
    q.add_argument("--train-only", default="", metavar="PREFIXES",
                   help="comma-separated parameter-name prefixes to train, the rest stays as initialised, e.g. 'res.' "
                   "to fit a new residual stream to a --init-from model whose base bitstreams must not change "
                   "(default: everything)")  # fmt: skip
    q.add_argument("--steps", type=int, default=4000, help="training steps (default: %(default)s)")
    q.add_argument("--batch", type=int, default=8, help="crops per step and process (default: %(default)s)")
    q.add_argument("--crop", type=int, default=8, help="crop size at the coarsest level (default: %(default)s)")
    q.add_argument("--lr", type=float, default=2e-4, help="peak learning rate, cosine decay (default: %(default)s)")
    q.add_argument("--lambda-min", type=float, default=9.0, help="lambda of quality 0 (default: %(default)s)")
    q.add_argument("--lambda-max", type=float, default=9000.0, help="lambda of the top quality (default: %(default)s)")
    q.add_argument("--task-weight", type=float, default=1.0,
                   help="weight of the task-aware term (the weighted change of the detection head's outputs, in the "
                   "task metric's units), 0 = off (default: %(default)s)")  # fmt: skip
    q.add_argument("--skip-below", type=float, default=0.05, metavar="OBJECTNESS",
                   help="train with the encoder's background skipping: crop cells where the detector's objectness "
                   "is below this are not coded (match the --skip-below you encode with), 0 = code every cell "
                   "(default: %(default)s)")  # fmt: skip
    q.add_argument("--metric", choices=["task", "std"], default="task",
                   help="feature space of the codec: 'task' whitens each level by the detector's sensitivity, 'std' "
                   "only scales it by its standard deviation (default: %(default)s)")  # fmt: skip
    q.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    q.add_argument("--snapshot-every", type=int, default=0, help="keep stepN.pt every N steps (default: never)")
    q.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    q.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    q.set_defaults(func=cmd_train_run)
    q = tsub.add_parser("export", help="strip a run's checkpoint to a small zoo checkpoint (fp16, entropy tables)")
    q.add_argument("--run-dir", required=True, help="training run folder")
    q.add_argument("--checkpoint", help="checkpoint file in the run folder (default: last.pt)")
    q.add_argument("--out", required=True, help="output checkpoint file")
    q.add_argument("--name", help="name recorded in the checkpoint (default: file stem)")
    q.set_defaults(func=cmd_train_export)

    p = sub.add_parser("bdrate", help="BD-rate of a test curve against a reference curve (JSON-lines results)")
    p.add_argument("test", help="test results (JSON lines)")
    p.add_argument("reference", help="reference results (JSON lines)")
    p.add_argument("--metric", default="map", choices=["map", "map50"], help="accuracy metric (default: map)")
    p.add_argument("--method", default="pchip", choices=["pchip", "cubic", "akima"], help="interpolation")
    p.add_argument("--test-codec", help="codec to take from the test file when it holds several")
    p.add_argument("--ref-codec", help="codec to take from the reference file when it holds several")
    p.add_argument("--json", action="store_true", help="also print the full result as one JSON line")
    p.set_defaults(func=cmd_bdrate)

    p = sub.add_parser("plot", help="draw RD curves (mAP vs bpp, log x) to a PNG")
    p.add_argument("results", nargs="+", help="JSON-lines results files")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--metric", default="map", choices=["map", "map50"], help="accuracy metric (default: map)")
    p.add_argument("--title", help="plot title")
    p.set_defaults(func=cmd_plot)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MutualFCError as e:
        print(f"mutualfc: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"mutualfc: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mutualfc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
