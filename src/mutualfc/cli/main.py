"""``mutualfc``: detect, evaluate codecs on COCO, encode/decode files, train, BD-rate and RD plots."""

from __future__ import annotations

import argparse
import sys

from mutualfc.cli.commands import (
    cmd_anchor_list,
    cmd_anchor_stats,
    cmd_bdrate,
    cmd_decode,
    cmd_detect,
    cmd_encode,
    cmd_eval,
    cmd_plot,
)
from mutualfc.cli.options import add_codec_options, add_dataset, add_task
from mutualfc.cli.train import cmd_train_cache, cmd_train_export, cmd_train_run
from mutualfc.errors import MutualFCError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mutualfc",
        description="Feature coding for machines: evaluate codecs for split detection on COCO (mAP vs bpp).",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("detect", help="run the detector, write COCO results JSON")
    add_task(p)
    add_dataset(p)
    p.add_argument("--out", required=True, help="output detections (COCO results format JSON)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("eval", help="evaluate a codec at one or more rate points (one JSON line each)")
    add_task(p)
    add_dataset(p, annotations_required=True)
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
    p.add_argument("--jobs", type=int, default=1,
                   help="code the images in this many local processes (same results as 1, only faster; each process "
                   "loads the task network and the codec; default: %(default)s)")  # fmt: skip
    add_codec_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("encode", help="encode images to mutualfc bitstream files (one .mfc per image)")
    add_task(p)
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
    add_codec_options(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode .mfc files and run the rest of the task network")
    add_task(p)
    p.add_argument("files", nargs="+", help=".mfc bitstream files")
    p.add_argument("--detections", help="write detections here (COCO results; image_id from the file name)")
    p.add_argument("--features", help="write decoded feature levels here as .npz (feature codecs)")
    p.add_argument("--draw", help="write a PNG per file with the detected boxes drawn here")
    p.add_argument("--images", help="with --draw: folder of the originals to draw on (feature codecs; matched by name)")
    p.add_argument("--min-score", type=float, default=0.25, help="with --draw: lowest score drawn (default: 0.25)")
    add_codec_options(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("anchor", help="anchor utilities: list anchors, measure the feature-anchor range")
    asub = p.add_subparsers(dest="anchor_command", required=True, metavar="ACTION")
    q = asub.add_parser("list", help="list codecs with their default sweeps")
    q.set_defaults(func=cmd_anchor_list)
    q = asub.add_parser("stats", help="measure the global min/max of the split features (10-bit anchor range)")
    add_task(q)
    q.add_argument("--images", required=True, help="folder of training images")
    q.add_argument("--limit", type=int, help="use only the first N images")
    q.add_argument("--out", required=True, help="output JSON")
    q.set_defaults(func=cmd_anchor_stats)

    p = sub.add_parser("train", help="train learned codecs: cache features, run (resumable, DDP), export")
    tsub = p.add_subparsers(dest="train_command", required=True, metavar="ACTION")
    q = tsub.add_parser("cache", help="cache the task network's split features of a training image folder (fp16)")
    add_task(q)
    q.add_argument("--images", required=True, help="folder of training images")
    q.add_argument("--cache", required=True, help="feature cache folder (resumable)")
    q.set_defaults(func=cmd_train_cache)
    q = tsub.add_parser(
        "run",
        help="train a codec on cached features; resumes from RUN_DIR/last.pt; multi-GPU with "
        "'torchrun --nproc-per-node N -m mutualfc.cli.main train run ... --device cuda'",
    )
    add_task(q)
    q.add_argument("--cache", required=True, help="feature cache folder (from 'train cache')")
    q.add_argument("--run-dir", required=True, help="checkpoints (last.pt), log.csv and config.json go here")
    q.add_argument("--arch", default="mutual", choices=["mutual", "separate"], help="network (default: mutual)")
    q.add_argument("--base", help="mutual: comma-separated base levels coded by BFCNet (default: p4,p5)")
    q.add_argument("--residual", type=int, help="mutual: residual latent channels, 0 = no residual (default: 128)")
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
