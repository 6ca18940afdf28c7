"""The ``mutualfc train`` commands: cache features, run (resumable, DDP), export to the zoo format."""

from __future__ import annotations

import os
from pathlib import Path

from mutualfc.cli.options import progress


def cmd_train_cache(args) -> int:
    from mutualfc.tasks import create_task
    from mutualfc.train.cache import build_feature_cache

    task = create_task(args.task, weights=args.weights)
    n = build_feature_cache(task, args.images, args.cache, progress(args))
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
    cfg = TrainConfig(cache=args.cache, task=args.task, model=model, steps=args.steps, batch=args.batch, crop=args.crop,
                      lr=args.lr, lambda_min=args.lambda_min, lambda_max=args.lambda_max, task_weight=args.task_weight,
                      seed=args.seed, snapshot_every=args.snapshot_every, init_from=args.init_from or "",
                      skip_below=args.skip_below,
                      train_only=tuple(x.strip() for x in args.train_only.split(",") if x.strip()))  # fmt: skip
    last = train(cfg, args.run_dir, device=args.device, progress=progress(args))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process returns here
        print(f"checkpoint: {last}")
    return 0


def cmd_train_export(args) -> int:
    from mutualfc.train import export_checkpoint

    meta = export_checkpoint(args.run_dir, args.out, args.name or Path(args.out).stem, args.checkpoint)
    print(f"exported {meta['model_cfg']['arch']} (step {meta['step']}, task {meta['task']}) -> {args.out}")
    return 0
