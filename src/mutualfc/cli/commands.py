"""The ``mutualfc`` commands (detect, eval, encode, decode, anchor, bdrate, plot). Heavy modules (torch, the task
network, the codecs) are imported inside each command, so that ``mutualfc --help`` starts fast."""

from __future__ import annotations

import json
from pathlib import Path

from mutualfc.cli.options import codec_options, parse_params, progress
from mutualfc.errors import MutualFCError


# ---------------------------------------------------------------------------------------------------------
def cmd_detect(args) -> int:
    from mutualfc.eval.coco import CocoDataset
    from mutualfc.eval.runner import run_detection
    from mutualfc.io import atomic_write_text
    from mutualfc.tasks import create_task

    ds = CocoDataset(args.images, args.annotations).subset(args.limit)
    task = create_task(args.task, weights=args.weights)
    results = run_detection(task, ds, progress(args))
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
    from mutualfc.eval.runner import CodecSpec, evaluate_point
    from mutualfc.io import append_jsonl, read_jsonl
    from mutualfc.tasks import create_task

    ds = CocoDataset(args.images, args.annotations).subset(args.limit)
    task = create_task(args.task, weights=args.weights)
    if args.jobs < 1:
        raise MutualFCError(f"--jobs must be at least 1, got {args.jobs}")
    options = {k: v for k, v in codec_options(args).items() if v is not None}
    codec = None if args.codec == "none" else create_codec(args.codec, task, **options)
    spec = CodecSpec(args.task, args.codec, args.weights, options)
    params = [None] if codec is None else parse_params(args.param, codec.default_params)
    done = set()
    if args.skip_existing and Path(args.out).is_file():
        done = {(r["codec"], r["param"], r["n_images"]) for r in read_jsonl(args.out)}
    label = args.label or args.codec
    for p in params:
        if (label, p, len(ds)) in done:
            print(f"skip {label} {p} (already in {args.out})")
            continue
        bdir = Path(args.bitstreams) / f"{label}-{p:g}" if (args.bitstreams and p is not None) else None
        rec = evaluate_point(task, codec, p, ds, bdir, progress(args), label=args.label, jobs=args.jobs, spec=spec)
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
    from mutualfc.codecs.anchors import measure_range
    from mutualfc.eval.coco import CocoDataset, load_image
    from mutualfc.io import atomic_write_text
    from mutualfc.tasks import create_task

    ds = CocoDataset(args.images).subset(args.limit)
    task = create_task(args.task, weights=args.weights)
    stats = measure_range(task, (load_image(r.path) for r in ds.records), progress(args))
    stats["source"] = str(args.images)
    atomic_write_text(args.out, json.dumps(stats, indent=1) + "\n")
    print(f"min={stats['min']:.6f} max={stats['max']:.6f} over {stats['n_images']} images -> {args.out}")
    return 0


def cmd_anchor_list(args) -> int:
    from mutualfc.codecs import CODECS

    for name, cls in CODECS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:14s} {cls.domain:9s} {cls.param_name}={','.join(f'{p:g}' for p in cls.default_params)}  {doc}")
    return 0


def cmd_encode(args) -> int:
    from mutualfc.codecs import LearnedFeatureCodec, create_codec
    from mutualfc.eval.coco import load_image
    from mutualfc.io import atomic_write_bytes
    from mutualfc.tasks import create_task

    task = create_task(args.task, weights=args.weights)
    codec = create_codec(args.codec, task, **codec_options(args))
    param = args.quality if args.quality is not None else codec.default_params[len(codec.default_params) // 2]
    if args.target_bpp is not None and not isinstance(codec, LearnedFeatureCodec):
        raise MutualFCError(f"--target-bpp needs a learned codec (mutual, separate), not {codec.name}")
    if args.target_bpp is not None and args.target_bpp <= 0:
        raise MutualFCError("--target-bpp must be positive")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    total_bits = total_px = 0
    for f in args.images:
        image = load_image(f)
        x = codec.prepare(image)
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
    from mutualfc.errors import BitstreamError
    from mutualfc.io import atomic_write_bytes, atomic_write_text
    from mutualfc.pipeline import Decoder
    from mutualfc.tasks import create_task

    task = create_task(args.task, weights=args.weights)
    decoder = Decoder(task, **codec_options(args))
    results = []
    for f in args.files:
        p = Path(f)
        if not p.is_file():
            raise MutualFCError(f"bitstream file not found: {p}")
        try:
            out = decoder.decode(p.read_bytes())
        except BitstreamError as e:
            raise BitstreamError(f"{p}: {e}") from None
        header, codec, det = out.header, out.codec, out.detections
        if args.draw:
            _draw(args, p, header, out.image, det)
        image_id = int(p.stem) if p.stem.isdigit() else len(results)
        results += det.to_coco(image_id)
        if args.features and out.features is not None:
            import io

            import numpy as np

            buf = io.BytesIO()
            np.savez(buf, **{k: v.numpy() for k, v in out.features.levels.items()})
            atomic_write_bytes(Path(args.features) / f"{p.stem}.npz", buf.getvalue())
        print(f"{p}: {codec.name} {codec.param_name}={header.param:g} {header.width}x{header.height} "
              f"-> {len(det)} detections")  # fmt: skip
    if args.detections:
        atomic_write_text(args.detections, json.dumps(results))
    return 0
