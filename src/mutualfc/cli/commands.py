"""The ``mutualfc`` evaluation commands (eval, bdrate, plot, codecs, anchor stats). Heavy modules (torch, the task
network, the codecs) are imported inside each command, so that ``mutualfc --help`` starts fast."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mutualfc.cli.options import (
    add_codec_options,
    add_dataset,
    add_device,
    add_task,
    codec_options,
    load_task,
    parse_params,
    progress,
)
from mutualfc.errors import MutualFCError


def cmd_eval(args) -> int:
    from mutualfc.eval.coco import CocoDataset  # light: the dataset is checked before torch is imported
    from mutualfc.io import append_jsonl, read_jsonl, report_stream

    if args.jobs < 1:
        raise MutualFCError(f"--jobs must be at least 1, got {args.jobs}")
    if args.out == "-" and (args.plot or args.skip_existing):
        raise MutualFCError("--out - (standard output) cannot be read back: --plot and --skip-existing need a file")
    ds = CocoDataset(args.images, args.annotations).subset(args.limit)
    from mutualfc.codecs import create_codec
    from mutualfc.eval.executors import CodecSpec
    from mutualfc.eval.runner import evaluate_point

    task = load_task(args)
    options = codec_options(args)
    codec = None if args.codec == "none" else create_codec(args.codec, task, **options)
    spec = CodecSpec(args.task, args.codec, args.weights, options, args.device)
    params = [None] if codec is None else parse_params(args.param, codec.default_params)
    done = set()
    if args.skip_existing and Path(args.out).is_file():
        done = {(r["codec"], r["param"], r["n_images"]) for r in read_jsonl(args.out)}
    label = args.label or args.codec
    for p in params:
        if (label, p, len(ds)) in done:
            print(f"skip {label} {p} (already in {args.out})", file=report_stream(args.out))
            continue
        bdir = Path(args.bitstreams) / f"{label}-{p:g}" if (args.bitstreams and p is not None) else None
        rec = evaluate_point(
            task, codec, p, ds, bdir, progress(args), label=args.label, jobs=args.jobs, spec=spec, ray_address=args.ray
        )
        append_jsonl(args.out, rec)
        bpp = "-" if rec["bpp"] is None else f"{rec['bpp']:.5f}"
        print(f"{rec['codec']} param={p} bpp={bpp} mAP={rec['map']:.4f} mAP50={rec['map50']:.4f}", flush=True,
              file=report_stream(args.out))  # fmt: skip
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

    records = []
    for f in args.results:
        for i, r in enumerate(read_jsonl(f), 1):
            if not isinstance(r, dict) or not {"codec", "bpp", args.metric} <= r.keys():
                raise MutualFCError(
                    f"{f}:{i}: not a results record (needs codec, bpp and {args.metric}: eval writes them)"
                )
            records.append(r)
    if str(args.out) == "-":
        raise MutualFCError("--out -: a plot is a PNG file; give a file name")
    plot_rd(records, args.out, args.metric, args.title)
    print(f"wrote {args.out}")
    return 0


def cmd_anchor_stats(args) -> int:
    from mutualfc.codecs.anchors import measure_range
    from mutualfc.eval.coco import CocoDataset
    from mutualfc.images import load_image
    from mutualfc.io import atomic_write_text
    from mutualfc.tasks import create_task

    ds = CocoDataset(args.images).subset(args.limit)
    task = create_task(args.task, weights=args.weights)
    stats = measure_range(task, (load_image(r.path) for r in ds.records), progress(args))
    stats["source"] = str(args.images)
    atomic_write_text(args.out, json.dumps(stats, indent=1) + "\n")
    print(f"min={stats['min']:.6f} max={stats['max']:.6f} over {stats['n_images']} images -> {args.out}")
    return 0


def cmd_pseudo_labels(args) -> int:
    """The uncompressed detector's boxes on unlabelled images as a COCO instances file (see eval.pseudo)."""
    from mutualfc.images import image_files, parse_fold

    files = image_files(args.images, parse_fold(args.fold) if args.fold else None)  # checked before torch loads
    if not 0 <= args.min_score < 1:
        raise MutualFCError(f"--min-score must be in [0, 1), got {args.min_score}")
    from mutualfc.eval.pseudo import pseudo_instances
    from mutualfc.io import atomic_write_text

    gt = pseudo_instances(load_task(args), files, args.min_score, progress(args))
    atomic_write_text(args.out, json.dumps(gt) + "\n")
    print(f"{len(gt['annotations'])} boxes on {len(gt['images'])} images -> {args.out}")
    return 0


def cmd_codecs(args) -> int:
    """Every codec with its kind, parameter range and what it is."""
    from mutualfc.codecs import CODECS, LearnedFeatureCodec, codec_options_of

    for name, cls in CODECS.items():
        doc = " ".join((cls.__doc__ or "").split())
        if args.json:  # one JSON line per codec, for other tools
            lo, hi = cls.param_limits
            row = {"name": name, "id": cls.codec_id, "codes": cls.domain, "param_name": cls.param_name,
                   "param_min": lo, "param_max": hi, "integer_param": cls.integer_param,
                   "default_params": list(cls.default_params), "options": codec_options_of(name),
                   "description": doc}  # fmt: skip
            if issubclass(cls, LearnedFeatureCodec):
                row["param_max"] = None  # the model's: its top quality + 1 (param_help)
            print(json.dumps(row))
        else:
            print(f"{name} (id {cls.codec_id}, codes {cls.domain})\n    {cls.param_help()}\n    {doc}")
    return 0


def cmd_tasks(args) -> int:
    """Every task network: id, levels (channels, strides), input, weights file, licence, uncompressed mAP."""
    from mutualfc.tasks import describe_task, list_tasks

    for name in list_tasks():
        row = describe_task(name)
        if args.json:
            print(json.dumps(row))
            continue
        levels = ", ".join(f"{lv['name']} {lv['channels']} ch / stride {lv['stride']}" for lv in row["levels"])
        scores = "; ".join(f"{k}: mAP {v['map']:.4f}" for k, v in row["metrics"].items()) or "not measured"
        weights = f"{row['weights']} ({row['license']}, {row['params']:,} parameters)"
        print(f"{name} (id {row['id']})\n    levels: {levels}\n    input: {row['input']}\n    weights: {weights}\n"
              f"    uncompressed: {scores}")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a codec at one or more rate points (one JSON line each)")
    add_task(p)
    add_dataset(p, annotations_required=True)
    p.add_argument(
        "--codec",
        required=True,
        help="none (uncompressed) or a codec: mutual, separate, jpeg, webp, hevc-image, hevc-feature, vvc-image, "
        "vvc-feature ('mutualfc codecs' lists them)",
    )
    p.add_argument("--param", help="comma-separated qualities / QPs (default: the codec's own sweep)")
    p.add_argument(
        "--out", required=True, help="JSON-lines results file; one line is appended per rate point ('-': stdout)"
    )
    p.add_argument("--bitstreams", help="keep the bitstream files here (default: a temporary folder)")
    p.add_argument("--skip-existing", action="store_true", help="skip rate points already in --out (resume a sweep)")
    p.add_argument("--label", help="name written as 'codec' in the results (default: the codec name)")
    p.add_argument("--plot", help="also draw all curves in --out to this PNG")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="code the images in this many processes, local or (with --ray) Ray actors: the same results "
        "as 1, only faster; each process loads the task network and the codec (default: %(default)s)",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the --jobs processes on a Ray cluster: 'auto' (the cluster this machine belongs to), "
        "'ray://HOST:10001', or 'local' (a Ray instance started here); needs pip install 'mutualfc[ray]' "
        "and paths every node can read",
    )
    add_codec_options(p)
    add_device(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "pseudo-labels",
        help="COCO instances from the uncompressed detector's boxes on unlabelled images: tune codec settings "
        "on training images (mAP against them measures what coding changes), not on the evaluation set",
    )
    add_task(p)
    p.add_argument("--images", required=True, help="folder of (unlabelled) images")
    p.add_argument("--out", required=True, help="COCO instances JSON to write (then: eval --annotations OUT)")
    p.add_argument(
        "--min-score",
        type=float,
        default=0.1,
        help="keep detections scoring at least this as pseudo ground truth (default: %(default)s; COCO mAP counts "
        "detections down to 0.001, so low-scoring objects belong in it: 0.25 rewarded skipping them)",
    )
    p.add_argument("--fold", metavar="K/N", help="only every N-th image from the K-th, in name order (e.g. 0/4)")
    add_device(p)
    p.set_defaults(func=cmd_pseudo_labels)

    p = sub.add_parser("tasks", help="list every task network: id, levels, input, weights, uncompressed mAP")
    p.add_argument("--json", action="store_true", help="one JSON line per task")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("codecs", help="list every codec: id, what it codes, its parameter range, what it is")
    p.add_argument("--json", action="store_true", help="one JSON line per codec (name, id, parameter range, options)")
    p.set_defaults(func=cmd_codecs)

    p = sub.add_parser("anchor", help="anchor utilities: measure the feature-anchor range")
    asub = p.add_subparsers(dest="anchor_command", required=True, metavar="ACTION")
    q = asub.add_parser("stats", help="measure the global min/max of the split features (10-bit anchor range)")
    add_task(q)
    q.add_argument("--images", required=True, help="folder of training images")
    q.add_argument("--limit", type=int, help="use only the first N images")
    q.add_argument("--out", required=True, help="output JSON")
    q.set_defaults(func=cmd_anchor_stats)

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
