"""The ``mutualfc train`` commands: cache features, run (resumable, DDP), export to the zoo format."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mutualfc.cli.options import add_task, progress
from mutualfc.errors import MutualFCError


def cmd_train_cache(args) -> int:
    from mutualfc.images import parse_fold
    from mutualfc.tasks import create_task
    from mutualfc.train.cache import build_feature_cache

    leave_out = parse_fold(args.leave_out) if args.leave_out else None
    task = create_task(args.task, weights=args.weights)
    n = build_feature_cache(task, args.images, args.cache, progress(args), leave_out)
    print(f"{n} images cached in {args.cache}")
    return 0


def cmd_train_run(args) -> int:
    import torch

    from mutualfc.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    model = {"arch": args.arch}
    if args.base:
        model["base"] = [x.strip() for x in args.base.split(",")]
    if args.residual is not None:
        model["residual"] = args.residual
    if args.groups:
        model["groups"] = _groups(args.groups)
    for name in ("hyper", "width"):
        if getattr(args, name) is not None:
            model[name] = getattr(args, name)
    if args.uncorrected_cells:
        model["predict_uncorrected"] = args.uncorrected_cells == "prediction"
    cfg = TrainConfig(cache=args.cache, task=args.task, weights=args.weights or "", model=model, steps=args.steps,
                      batch=args.batch, crop=args.crop,
                      lr=args.lr, lambda_min=args.lambda_min, lambda_max=args.lambda_max, task_weight=args.task_weight,
                      seed=args.seed, snapshot_every=args.snapshot_every, init_from=args.init_from or "",
                      skip_below=args.skip_below,
                      train_only=tuple(x.strip() for x in args.train_only.split(",") if x.strip()))  # fmt: skip
    last = train(cfg, args.run_dir, device=args.device, progress=progress(args))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process returns here
        print(f"checkpoint: {last}")
    return 0


def _read_schedule(path: str | None) -> dict | None:
    if not path:
        return None
    import json

    try:
        schedule = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise MutualFCError(f"--schedule {path}: cannot read a JSON object ({e})") from None
    if not isinstance(schedule, dict):
        raise MutualFCError(f"--schedule {path}: not a JSON object")
    return schedule


def cmd_train_export(args) -> int:
    from mutualfc.train import export_checkpoint

    schedule = _read_schedule(args.schedule)
    meta = export_checkpoint(args.run_dir, args.out, args.name or Path(args.out).stem, args.checkpoint, schedule)
    print(f"exported {meta['model_cfg']['arch']} (step {meta['step']}, task {meta['task']}) -> {args.out}")
    return 0


def cmd_train_schedule(args) -> int:
    from mutualfc.train.checkpoints import store_schedule

    meta = store_schedule(args.checkpoint, args.out, _read_schedule(args.schedule))
    print(f"{args.checkpoint} with the schedule of {args.schedule} ({meta['schedule']['source']}) -> {args.out}")
    return 0


def _groups(text: str) -> list[int]:
    try:
        groups = [int(x) for x in text.split(",")]
    except ValueError:
        groups = []
    if not groups or min(groups) <= 0:
        raise MutualFCError(f"--groups {text!r}: comma-separated positive integers, e.g. 1,1,2,4,16")
    return groups


def _skip_threshold(text: str) -> float | str:
    """``--skip-below``: a number in [0, 1) or 'schedule'."""
    if text == "schedule":
        return text
    try:
        tau = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or 'schedule', got {text!r}") from None
    if not 0 <= tau < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or 'schedule', got {text!r}")
    return tau


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train learned codecs: cache features, run (resumable, DDP), export")
    tsub = p.add_subparsers(dest="train_command", required=True, metavar="ACTION")
    q = tsub.add_parser("cache", help="cache the task network's split features of a training image folder (fp16)")
    add_task(q)
    q.add_argument("--images", required=True, help="folder of training images")
    q.add_argument("--cache", required=True, help="feature cache folder (resumable)")
    q.add_argument("--leave-out", metavar="K/N", help="leave every N-th image from the K-th out of the cache: the "
                   "fold kept for tuning ('mutualfc pseudo-labels --fold K/N')")  # fmt: skip
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
    q.add_argument(
        "--groups",
        metavar="SIZES",
        help="relative sizes of the latent's channel groups (each BFCNet's), coded one after the other, each in the "
        "context of the ones before; fewer groups decode in fewer sequential steps (default: 1,1,2,4,16)",
    )
    q.add_argument("--hyper", type=int, help="hyper-latent channels (default: 128)")
    q.add_argument(
        "--uncorrected-cells",
        choices=["prediction", "mean"],
        help="mutual: what kept cells without a residual decode the finest level to: MFCNet's prediction or, as the "
        "zoo models do, the mean features (default: prediction)",
    )
    q.add_argument(
        "--width",
        type=int,
        help="mutual: channels of the trunk that gives the residual stream its context (default: 128)",
    )
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
    q.add_argument("--skip-below", type=_skip_threshold, default="schedule", metavar="OBJECTNESS",
                   help="train with the encoder's background skipping: crop cells where the detector's objectness "
                   "is below this are not coded (match the --skip-below you encode with), 0 = code every cell, "
                   "'schedule' = the codecs' default threshold at each step's quality "
                   "(default: %(default)s)")  # fmt: skip
    q.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    q.add_argument("--snapshot-every", type=int, default=0, help="keep stepN.pt every N steps (default: never)")
    q.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    q.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    q.set_defaults(func=cmd_train_run)
    q = tsub.add_parser("export", help="strip a run's checkpoint to a small zoo checkpoint (fp16, entropy tables)")
    q.add_argument("--run-dir", required=True, help="training run folder")
    q.add_argument("--checkpoint", help="checkpoint file in the run folder (default: last.pt)")
    q.add_argument(
        "--schedule",
        metavar="JSON",
        help="the model's operating points (residual_from, residual_rd, skip knots, fidelity_skip_below, "
        "fidelity_tier_span, fidelity_from: the highest model quality used, source), stored in the checkpoint; "
        "default: none stored, so the codec uses the "
        "defaults tuned for yolov5n-coco and says so in every record",
    )
    q.add_argument("--out", required=True, help="output checkpoint file")
    q.add_argument("--name", help="name recorded in the checkpoint (default: file stem)")
    q.set_defaults(func=cmd_train_export)
    q = tsub.add_parser(
        "schedule",
        help="store new operating points in an exported checkpoint (same weights; a new file, so a new model tag)",
    )
    q.add_argument("checkpoint", help="exported codec checkpoint (a zoo file or mutualfc train export's output)")
    q.add_argument("--schedule", required=True, metavar="JSON", help="the operating points, as for export")
    q.add_argument("--out", required=True, help="output checkpoint file")
    q.set_defaults(func=cmd_train_schedule)
