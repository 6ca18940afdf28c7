"""Training of the learned feature codecs: rate + lambda * distortion on aligned random crops of cached features.

Distortion is the squared error in the codec's feature space per image pixel. With the task metric (default) that
space is whitened by the detector's sensitivity, so the error approximates the change in the detection head's outputs
(objectness everywhere, boxes and classes where there are objects); the task-aware term adds that change computed
exactly (the linearisation is blind to large errors along directions where the head is saturated). One model covers
the rate range: every step draws a quality index and uses that quality's gains and lambda. The prediction-only
reconstruction (no residual) is trained alongside, so the residual stream stays optional at encode time.

Runs on CPU or GPU, resumes from ``last.pt`` in the run directory, logs CSV, and scales out with
``torchrun --nproc-per-node N -m mutualfc.cli.main train ...`` (DistributedDataParallel).
"""

from __future__ import annotations

import csv
import io
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

from mutualfc.codecs.mutual import MutualConfig, build_network, is_linear_transform
from mutualfc.errors import MutualFCError
from mutualfc.io import atomic_write_bytes
from mutualfc.train.cache import AlignedCropDataset


@dataclass
class TrainConfig:
    """Everything a run needs, stored in its checkpoints (configs as data)."""

    cache: str = ""
    task: str = "yolov5n-coco"
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
    level_weights: tuple[float, ...] = (1.0, 1.0, 1.0)  # multipliers of each level's distortion (p3, p4, p5)
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
    # original features) is below this are skipped, as `encode --skip-below` does; 0 = every cell coded
    skip_below: float = 0.0
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

    def lambdas(self, qualities: int) -> list[float]:
        r = self.lambda_max / self.lambda_min
        return [self.lambda_min * r ** (q / max(qualities - 1, 1)) for q in range(qualities)]


def _collate(batch: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(x) for x in zip(*batch, strict=True)]


class _Loss(nn.Module):
    def __init__(self, cfg: TrainConfig, task, level_names: tuple[str, ...], normalized, task_scale: float = 1.0):
        super().__init__()
        self.cfg, self.levels, self.normalized, self.task_scale = cfg, level_names, normalized, task_scale
        self.task = task if (task is not None and cfg.task_weight > 0) else None
        if self.task is not None:
            if not hasattr(task, "head_error"):
                raise MutualFCError(f"{cfg.task} does not provide head_error(); train with --task-weight 0")
            for p in self.task.parameters():
                p.requires_grad_(False)

    def distortion(self, rec: dict, ref_n: dict, head_ref: list | None, pixels: int) -> tuple[torch.Tensor, ...]:
        rec_n = self.normalized(rec)
        weights = zip(self.levels, self.cfg.level_weights, strict=True)
        mse = sum(w * (rec_n[k] - ref_n[k]).pow(2).sum() for k, w in weights) / pixels
        task = torch.zeros((), device=mse.device)
        if self.task is not None:
            task = self.task.head_error(rec, head_ref) * self.task_scale / pixels
        return mse, task

    def forward(self, out: dict, ref: dict, lam: float) -> dict[str, torch.Tensor]:
        b, _, h, w = ref[self.levels[-1]].shape
        pixels = b * h * w * 32 * 32
        bits = sum(-torch.log2(v.clamp_min(1e-9)).sum() for v in out["likelihoods"].values())
        bpp = bits / pixels
        head_ref = None
        with torch.no_grad():
            ref_n = self.normalized(ref)
            if self.task is not None:
                head_ref = self.task.head_outputs(ref)
        mse, task = self.distortion(out["levels"], ref_n, head_ref, pixels)
        d = mse + self.cfg.task_weight * task
        pmse, ptask = (
            self.distortion(out["prediction"], ref_n, head_ref, pixels)
            if out["prediction"] is not out["levels"]
            else (mse, task)
        )
        d = d + self.cfg.prediction_weight * (pmse + self.cfg.task_weight * ptask)
        return {"loss": bpp + lam * d, "bpp": bpp, "mse": mse, "task": task, "pred_mse": pmse}


def _state_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def export_checkpoint(run_dir: str | Path, out: str | Path, name: str, checkpoint: str | None = None) -> dict:
    """Strip a training checkpoint to what coding needs (config, task, fp16 weights, entropy tables) for the zoo."""
    from mutualfc.codecs.mutual import export_state

    path = Path(run_dir) / (checkpoint or "last.pt")
    if not path.is_file():
        raise MutualFCError(f"no checkpoint {path}")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    net = build_network(MutualConfig.from_dict(ck["model_cfg"]))
    net.load_state_dict(ck["model"])
    meta = {"name": name, "task": ck["task"], "model_cfg": ck["model_cfg"], "train_cfg": ck["train_cfg"],
            "step": ck["step"]}  # fmt: skip
    atomic_write_bytes(out, _state_bytes({"meta": meta, "model": export_state(net)}))
    return meta


def load_matching(net: nn.Module, path: str | Path, task: str) -> set[str]:
    """Load the parameters and buffers of a trained checkpoint (zoo file or training checkpoint) whose names and
    shapes match ``net``; -> the names loaded. Entropy tables are left out (``update()`` rebuilds them)."""
    from mutualfc.codecs.mutual import is_entropy_table, unpack_state

    path = Path(path)
    if not path.is_file():
        raise MutualFCError(f"no checkpoint {path} to start from")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        state = unpack_state(ck["model"]) if "meta" in ck else ck["model"]
        trained_for = (ck["meta"] if "meta" in ck else ck)["task"]
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise MutualFCError(f"{path} is not a mutualfc codec checkpoint ({type(e).__name__})") from None
    if trained_for != task:
        raise MutualFCError(f"{path} was trained for task {trained_for!r}, not {task!r}")
    own = net.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and not is_entropy_table(k)}
    net.load_state_dict(keep, strict=False)
    return set(keep)


def train(cfg: TrainConfig, run_dir: str | Path, device: str = "cpu", progress: bool = True) -> Path:
    """Train (or resume) in ``run_dir``; returns the path of the final checkpoint."""
    from mutualfc.tasks import create_task

    run_dir = Path(run_dir)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        rank = dist.get_rank()
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    main = rank == 0
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "last.pt"
    resume = torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else None
    if resume is not None:
        cfg = TrainConfig.from_dict(resume["train_cfg"])  # a resumed run keeps its configuration
    model_cfg = MutualConfig.from_dict(cfg.model)
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    task = create_task(cfg.task, pretrained=True).eval()
    if tuple(task.level_names) != tuple(model_cfg.levels):
        raise MutualFCError(f"model levels {model_cfg.levels} do not match {cfg.task} levels {task.level_names}")
    if cfg.skip_below > 0 and not hasattr(task, "objectness_map"):
        raise MutualFCError(f"{cfg.task} gives no objectness map; train with --skip-below 0")
    task.to(device)
    data = AlignedCropDataset(
        cfg.cache, cfg.task, crop=cfg.crop, strides=tuple(task.level_strides), seed=cfg.seed + rank
    )
    sampler = DistributedSampler(data, seed=cfg.seed) if distributed else None
    per_process = len(sampler) if sampler is not None else len(data)
    if per_process < cfg.batch:  # full batches only: the loop would never take a step
        raise MutualFCError(f"{cfg.cache} holds {len(data)} usable images, {per_process} per process: fewer than one "
                            f"batch of {cfg.batch}; use a smaller --batch or cache more images")  # fmt: skip
    loader = DataLoader(data, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, collate_fn=_collate)  # fmt: skip

    net = build_network(model_cfg).to(device)
    # the head-output term in the task metric's units (metric_scale^2 x the linearised sensitivity), so weight 1
    # counts it as much as the metric term
    task_scale = model_cfg.metric_scale**2 if model_cfg.metric == "task" else 1.0
    crit = _Loss(cfg, task, model_cfg.levels, net.normalized, task_scale).to(device)
    if cfg.freeze_linear:  # shared by all qualities, the linear paths otherwise drift towards the low-rate end
        for n, p in net.named_parameters():
            if is_linear_transform(n):
                p.requires_grad_(False)
    if cfg.train_only:
        for n, p in net.named_parameters():
            if not n.startswith(tuple(cfg.train_only)):
                p.requires_grad_(False)
        if not any(p.requires_grad for p in net.parameters()):
            raise MutualFCError(f"no parameter of {model_cfg.arch} starts with {', '.join(cfg.train_only)}")
    aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
    main_params = [p for n, p in net.named_parameters() if p.requires_grad and not n.endswith(".quantiles")]
    opt = torch.optim.Adam(main_params, lr=cfg.lr)
    aux_opt = torch.optim.Adam(aux or [torch.zeros(1, requires_grad=True)], lr=1e-3)  # Adam refuses an empty list
    step = 0
    if resume is not None:
        net.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        aux_opt.load_state_dict(resume["aux_opt"])
        step = resume["step"]
        torch.set_rng_state(resume["rng"]["torch"])
        data.rng = np.random.default_rng(resume["rng"]["data_seed"] + step + rank)
    else:  # closed-form start (PCA / least squares) from a few hundred crops; DDP then broadcasts rank 0's weights
        crops = _collate([data[i % len(data)] for i in range(256)])
        levels = {k: t.to(device) for k, t in zip(model_cfg.levels, crops, strict=True)}
        sensitivity = None
        if model_cfg.metric == "task":
            if not hasattr(task, "level_sensitivity"):
                raise MutualFCError(f"{cfg.task} does not provide level_sensitivity(); train with the 'std' metric")
            sensitivity = task.level_sensitivity(levels)
        net.init_from_data(levels, sensitivity)
        if cfg.init_from:
            loaded = load_matching(net, cfg.init_from, cfg.task)
            if getattr(net, "res", None) is not None and "res.lin_a.weight" not in loaded:
                net.init_residual(levels)  # refit to the loaded metric and predictor
            if main:
                print(f"started from {len(loaded)} of {len(net.state_dict())} tensors of {cfg.init_from}")
    model = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True) if distributed else net
    lambdas = cfg.lambdas(model_cfg.qualities)
    qrng = random.Random(cfg.seed * 7919 + step)

    def save() -> None:
        if not main:
            return
        state = {
            "train_cfg": asdict(cfg) | {"model": model_cfg.to_dict()},
            "model_cfg": model_cfg.to_dict(),
            "task": cfg.task,
            "model": net.state_dict(),
            "opt": opt.state_dict(),
            "aux_opt": aux_opt.state_dict(),
            "step": step,
            "rng": {"torch": torch.get_rng_state(), "data_seed": cfg.seed},
        }
        atomic_write_bytes(last, _state_bytes(state))

    log_path = run_dir / "log.csv"
    new_log = not log_path.is_file()
    log_file = open(log_path, "a", newline="") if main else None  # noqa: SIM115 - kept open for the run
    writer = csv.writer(log_file) if log_file else None
    if writer and new_log:
        writer.writerow(["step", "quality", "lambda", "loss", "bpp", "mse", "task", "pred_mse", "lr", "elapsed_s"])
    if main:
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg) | {"model": model_cfg.to_dict()}, indent=1))
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not (progress and main))
    t0 = time.time()
    epoch = 0
    net.train()
    while step < cfg.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            if step >= cfg.steps:
                break
            ref = {k: t.to(device, non_blocking=True) for k, t in zip(model_cfg.levels, batch, strict=True)}
            q = qrng.randrange(model_cfg.qualities)
            lr = cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * step / cfg.steps))
            lr *= min(1.0, (step + 1) / max(cfg.warmup, 1))
            for g in opt.param_groups:
                g["lr"] = lr
            keep = None
            if cfg.skip_below > 0:
                with torch.no_grad():
                    keep = task.objectness_map(ref) >= cfg.skip_below
            out = model(ref, q, keep)
            terms = crit(out, ref, lambdas[q])
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            nn.utils.clip_grad_norm_(main_params, 1.0)
            opt.step()
            if aux:
                aux_loss = sum(
                    m.loss() for m in net.modules() if hasattr(m, "loss") and getattr(m, "quantiles", None) is not None
                    and m.quantiles.requires_grad
                )  # fmt: skip
                aux_opt.zero_grad(set_to_none=True)
                aux_loss.backward()
                aux_opt.step()
            step += 1
            bar.update(1)
            if writer:  # one row per step: the quality varies from step to step
                vals = [f"{float(terms[k].detach()):.5g}" for k in ("loss", "bpp", "mse", "task", "pred_mse")]
                writer.writerow([step, q, f"{lambdas[q]:.4g}", *vals, f"{lr:.3g}", f"{time.time() - t0:.0f}"])
                if step % cfg.log_every == 0:
                    log_file.flush()
                    bar.set_postfix(q=q, bpp=vals[1], mse=vals[2])
            if step % cfg.checkpoint_every == 0:
                save()
            if main and cfg.snapshot_every and step % cfg.snapshot_every == 0:
                save()
                atomic_write_bytes(run_dir / f"step{step}.pt", last.read_bytes())
    save()
    bar.close()
    if log_file:
        log_file.close()
    if distributed:
        dist.destroy_process_group()
    return last
