"""Training of the learned feature codecs: rate + lambda * distortion on aligned random crops of cached features.

One model covers the rate range: every step draws a quality index and uses that quality's gains and lambda. Runs
on CPU or GPU, resumes from ``last.pt`` in the run directory, logs CSV, and scales out with
``torchrun --nproc-per-node N -m mutualfc.cli.main train ...`` (DistributedDataParallel).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from mutualfc.codecs.learned import scheduled_skip_below
from mutualfc.errors import MutualFCError
from mutualfc.io import atomic_write_bytes
from mutualfc.models import FeatureCompressionModel, MutualConfig, build_network, is_linear_transform
from mutualfc.tasks import create_task
from mutualfc.tasks.base import TaskMetric
from mutualfc.train.cache import AlignedCropDataset
from mutualfc.train.checkpoints import load_matching, read_training_file, state_bytes
from mutualfc.train.loss import RateDistortionLoss


@dataclass
class TrainConfig:
    """Everything a run needs, stored in its checkpoints (configs as data)."""

    cache: str = ""
    task: str = "yolov5n-coco"
    weights: str = ""  # the task network's weights file; "" = the task's own (MUTUALFC_WEIGHTS_DIR, cache, download)
    model: dict = field(default_factory=dict)  # MutualConfig fields
    steps: int = 20000
    batch: int = 8
    crop: int = 8  # crop size at the coarsest level (8 -> 256x256 image pixels)
    lr: float = 2e-4  # 1e-3 made the highest qualities diverge for hundreds of steps with the task metric
    lr_final: float = 5e-5  # cosine decay to this
    warmup: int = 200  # linear learning-rate warm-up steps (Adam's first steps otherwise kick the non-linear branches)
    # lambda of quality 0; qualities are spaced geometrically up to lambda_max. For a quantisation step D in the
    # feature space the rate-distortion optimum is lambda = 6 / (ln 2 * D^2): 9 .. 9000 matches the gains' D = 1 .. 1/32
    lambda_min: float = 9.0
    lambda_max: float = 9000.0
    level_weights: tuple[float, ...] = ()  # multipliers of each level's distortion, fine -> coarse; () = all 1
    # weight of the exact head-output term (what the task metric linearises; it also catches large errors that
    # the linearisation misses, such as lifting a saturated background objectness); 0 disables it
    task_weight: float = 1.0
    prediction_weight: float = 0.5  # weight of the prediction-only (no residual) distortion
    freeze_linear: bool = True  # keep the closed-form linear transforms (PCA, least squares) as initialised
    init_from: str = ""  # checkpoint (zoo file or a run's last.pt) whose matching weights start the run (fine-tuning)
    # parameter-name prefixes to train (e.g. ("res.",): a new residual stream on a fixed base, whose bitstreams
    # then stay as they were); empty = everything
    train_only: tuple[str, ...] = ()
    # train with the encoder's background skipping in the loop: crop cells whose objectness (task network on the
    # original features) is below this are skipped, as `encode --skip-below` does; 0 = every cell coded; "schedule" =
    # the codecs' default threshold at each step's quality (``mutualfc.codecs.learned.SKIP_SCHEDULE``)
    skip_below: float | str = 0.0
    seed: int = 0
    workers: int = 0
    log_every: int = 20
    checkpoint_every: int = 250
    snapshot_every: int = 0  # also keep step{N}.pt every N steps (e.g. for equal-budget comparisons); 0 = never

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**d)

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then cosine decay from ``lr`` to ``lr_final``."""
        lr = self.lr_final + 0.5 * (self.lr - self.lr_final) * (1 + math.cos(math.pi * step / self.steps))
        return lr * min(1.0, (step + 1) / max(self.warmup, 1))

    def lambdas(self, qualities: int) -> list[float]:
        r = self.lambda_max / self.lambda_min
        return [self.lambda_min * r ** (q / max(qualities - 1, 1)) for q in range(qualities)]


def _collate(batch: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(x) for x in zip(*batch, strict=True)]


@dataclass
class _Process:
    """Where this process runs: rank 0 writes checkpoints and logs."""

    rank: int
    device: str
    distributed: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def _start_process(device: str) -> _Process:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        rank = dist.get_rank()
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    return _Process(rank, device, distributed)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def model_defaults(task_name: str) -> dict:
    """The codec's geometry as the task declares it: its levels and channels (the base follows from them,
    ``MutualConfig``; a model config given explicitly overrides any of them)."""
    shape = create_task(task_name, pretrained=False)  # no weights needed for its shape
    return {"levels": list(shape.level_names), "channels": list(shape.level_channels)}


def _task_for(cfg: TrainConfig, model_cfg: MutualConfig, device: str):
    task = create_task(cfg.task, pretrained=True, weights=cfg.weights or None).eval()
    if tuple(task.level_names) != tuple(model_cfg.levels):
        raise MutualFCError(f"model levels {model_cfg.levels} do not match {cfg.task} levels {task.level_names}")
    if not isinstance(task, TaskMetric):
        raise MutualFCError(f"{cfg.task} does not declare the task metric (objectness, sensitivity, head outputs)")
    return task.to(device)


def _data(cfg: TrainConfig, task, proc: _Process) -> tuple[AlignedCropDataset, DataLoader, DistributedSampler | None]:
    data = AlignedCropDataset(
        cfg.cache, cfg.task, crop=cfg.crop, strides=tuple(task.level_strides), seed=cfg.seed + proc.rank
    )
    sampler = DistributedSampler(data, seed=cfg.seed) if proc.distributed else None
    per_process = len(sampler) if sampler is not None else len(data)
    if per_process < cfg.batch:  # full batches only: the loop would never take a step
        raise MutualFCError(f"{cfg.cache} holds {len(data)} usable images, {per_process} per process: fewer than one "
                            f"batch of {cfg.batch}; use a smaller --batch or cache more images")  # fmt: skip
    loader = DataLoader(data, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, collate_fn=_collate)  # fmt: skip
    return data, loader, sampler


def _freeze(net: nn.Module, cfg: TrainConfig) -> None:
    """The closed-form linear transforms stay as fitted (shared by all qualities, they otherwise drift towards the
    low-rate end); with ``train_only`` everything outside those prefixes stays too."""
    for n, p in net.named_parameters():
        if (cfg.freeze_linear and is_linear_transform(n)) or (cfg.train_only and not n.startswith(cfg.train_only)):
            p.requires_grad_(False)
    if cfg.train_only and not any(p.requires_grad for p in net.parameters()):
        raise MutualFCError(f"no parameter of the network starts with {', '.join(cfg.train_only)}")


def _optimisers(net: FeatureCompressionModel, cfg: TrainConfig) -> tuple[torch.optim.Adam, torch.optim.Adam | None]:
    """Adam on the network, and CompressAI's auxiliary Adam on the entropy bottlenecks' quantiles (None if those
    are frozen)."""
    aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
    main = [p for n, p in net.named_parameters() if p.requires_grad and not n.endswith(".quantiles")]
    return torch.optim.Adam(main, lr=cfg.lr), (torch.optim.Adam(aux, lr=1e-3) if aux else None)


def _closed_form_start(net, cfg: TrainConfig, model_cfg: MutualConfig, data, task, proc: _Process) -> None:
    """Metric, PCA and least squares from 256 crops, then the matching weights of ``init_from``; DDP then
    broadcasts rank 0's weights."""
    crops = _collate([data[i % len(data)] for i in range(256)])
    levels = {k: t.to(proc.device) for k, t in zip(model_cfg.levels, crops, strict=True)}
    net.init_from_data(levels, task.level_sensitivity(levels))
    if cfg.init_from:
        loaded = load_matching(net, cfg.init_from, cfg.task)
        if getattr(net, "res", None) is not None and "res.lin_a.weight" not in loaded:
            net.init_residual(levels)  # refit to the loaded metric and predictor
        if proc.main:
            print(f"started from {len(loaded)} of {len(net.state_dict())} tensors of {cfg.init_from}")


class _CsvLog:
    """One row per step (the quality varies from step to step), flushed every ``every`` steps; rank 0 only."""

    COLUMNS = ("step", "quality", "lambda", "loss", "bpp", "mse", "task", "pred_mse", "lr", "elapsed_s")

    def __init__(self, path: Path, every: int, enabled: bool):
        self.every, self.file, self.writer = every, None, None
        if enabled:
            new = not path.is_file()
            self.file = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
            self.writer = csv.writer(self.file)
            if new:
                self.writer.writerow(self.COLUMNS)

    def row(self, step: int, values: list) -> bool:
        """-> whether the row was flushed (a point to update the progress bar)."""
        if self.writer is None:
            return False
        self.writer.writerow([step, *values])
        if step % self.every == 0:
            self.file.flush()
            return True
        return False

    def close(self) -> None:
        if self.file:
            self.file.close()


def train(cfg: TrainConfig, run_dir: str | Path, device: str = "cpu", progress: bool = True) -> Path:
    """Train (or resume) in ``run_dir``; returns the path of the final checkpoint."""
    run_dir = Path(run_dir)
    proc = _start_process(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "last.pt"
    resume = read_training_file(last) if last.is_file() else None
    if resume is not None:
        cfg = TrainConfig.from_dict(resume["train_cfg"])  # a resumed run keeps its configuration
    model_cfg = MutualConfig.from_dict(model_defaults(cfg.task) | dict(cfg.model))
    _seed(cfg.seed + proc.rank)
    task = _task_for(cfg, model_cfg, proc.device)
    data, loader, sampler = _data(cfg, task, proc)
    net = build_network(model_cfg).to(proc.device)
    # the head-output term in the task metric's units (metric_scale^2 x the linearised sensitivity), so weight 1
    # counts it as much as the metric term
    crit = RateDistortionLoss(task, model_cfg.levels, net.normalized, task.level_strides[-1] ** 2,
                              cfg.level_weights or None, cfg.task_weight, cfg.prediction_weight,
                              model_cfg.metric_scale**2)  # fmt: skip
    _freeze(net, cfg)
    opt, aux_opt = _optimisers(net, cfg)
    step = 0
    if resume is not None:
        net.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        if aux_opt is not None and resume.get("aux_opt"):
            aux_opt.load_state_dict(resume["aux_opt"])
        step = resume["step"]
        torch.set_rng_state(resume["rng"]["torch"])
        data.rng = np.random.default_rng(resume["rng"]["data_seed"] + step + proc.rank)
    else:
        _closed_form_start(net, cfg, model_cfg, data, task, proc)
    model = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True) if proc.distributed else net
    lambdas = cfg.lambdas(model_cfg.qualities)
    qrng = random.Random(cfg.seed * 7919 + step)

    def save() -> None:
        if not proc.main:
            return
        state = {"train_cfg": asdict(cfg) | {"model": model_cfg.to_dict()}, "model_cfg": model_cfg.to_dict(),
                 "task": cfg.task, "model": net.state_dict(), "opt": opt.state_dict(),
                 "aux_opt": aux_opt.state_dict() if aux_opt else {}, "step": step,
                 "rng": {"torch": torch.get_rng_state(), "data_seed": cfg.seed}}  # fmt: skip
        atomic_write_bytes(last, state_bytes(state))

    log = _CsvLog(run_dir / "log.csv", cfg.log_every, proc.main)
    if proc.main:
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg) | {"model": model_cfg.to_dict()}, indent=1))
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not (progress and proc.main))
    t0, epoch = time.time(), 0
    net.train()
    while step < cfg.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            if step >= cfg.steps:
                break
            ref = {k: t.to(proc.device, non_blocking=True) for k, t in zip(model_cfg.levels, batch, strict=True)}
            q = qrng.randrange(model_cfg.qualities)
            lr = cfg.learning_rate(step)
            terms = _step(model, net, crit, opt, aux_opt, task, ref, q, lambdas[q], lr, cfg.skip_below)
            step += 1
            bar.update(1)
            vals = [f"{float(terms[k].detach()):.5g}" for k in ("loss", "bpp", "mse", "task", "pred_mse")]
            if log.row(step, [q, f"{lambdas[q]:.4g}", *vals, f"{lr:.3g}", f"{time.time() - t0:.0f}"]):
                bar.set_postfix(q=q, bpp=vals[1], mse=vals[2])
            if step % cfg.checkpoint_every == 0:
                save()
            if proc.main and cfg.snapshot_every and step % cfg.snapshot_every == 0:
                save()
                atomic_write_bytes(run_dir / f"step{step}.pt", last.read_bytes())
    save()
    bar.close()
    log.close()
    if proc.distributed:
        dist.destroy_process_group()
    return last


def _step(model, net, crit, opt, aux_opt, task, ref: dict, q: int, lam: float, lr: float, skip_below: float | str
          ) -> dict:  # fmt: skip
    """One optimisation step at quality ``q`` (the encoder's skip mask applied to the crops), plus the auxiliary
    step on the entropy bottlenecks' quantiles."""
    for g in opt.param_groups:
        g["lr"] = lr
    keep = None
    tau = scheduled_skip_below(q) if skip_below == "schedule" else float(skip_below)
    if tau > 0:
        with torch.no_grad():
            keep = task.objectness_map(ref) >= tau
    terms = crit(model(ref, q, keep), ref, lam)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    if aux_opt is not None:
        aux_opt.zero_grad(set_to_none=True)
        net.aux_loss().backward()
        aux_opt.step()
    return terms
