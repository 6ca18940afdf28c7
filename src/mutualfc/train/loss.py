"""Training loss: rate + lambda * distortion, both per image pixel, on the decoded and the prediction-only levels."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mutualfc.tasks.base import TaskMetric


class RateDistortionLoss(nn.Module):
    """bpp + lambda * D. D = squared error in the codec's feature space (the task metric) + ``task_weight`` x the
    head outputs' change computed exactly (the linearisation is blind to large errors along directions where the
    head is saturated), on the decoded levels and, weighted by ``prediction_weight``, the prediction-only levels (so
    the residual stream stays optional)."""

    def __init__(
        self,
        task: TaskMetric | None,
        level_names: tuple[str, ...],
        normalized: Callable[[dict], dict],
        pixels_per_cell: int,
        level_weights: tuple[float, ...] | None = None,  # None: 1 for every level
        task_weight: float = 1.0,
        prediction_weight: float = 0.5,
        task_scale: float = 1.0,
    ):
        super().__init__()
        self.levels, self.normalized, self.pixels_per_cell = level_names, normalized, pixels_per_cell
        level_weights = tuple(level_weights) if level_weights else (1.0,) * len(level_names)
        if len(level_weights) != len(level_names):
            raise ValueError(f"{len(level_weights)} level weights for {len(level_names)} levels {level_names}")
        self.level_weights, self.task_weight, self.prediction_weight = level_weights, task_weight, prediction_weight
        self.task_scale = task_scale
        self.task = task if (task is not None and task_weight > 0) else None
        if self.task is not None:
            for p in self.task.parameters():
                p.requires_grad_(False)

    def distortion(self, rec: dict, ref_n: dict, head_ref: list | None, pixels: int) -> tuple[torch.Tensor, ...]:
        rec_n = self.normalized(rec)
        weights = zip(self.levels, self.level_weights, strict=True)
        mse = sum(w * (rec_n[k] - ref_n[k]).pow(2).sum() for k, w in weights) / pixels
        task = torch.zeros((), device=mse.device)
        if self.task is not None:
            task = self.task.head_error(rec, head_ref) * self.task_scale / pixels
        return mse, task

    def forward(self, out: dict, ref: dict, lam: float) -> dict[str, torch.Tensor]:
        b, _, h, w = ref[self.levels[-1]].shape
        pixels = b * h * w * self.pixels_per_cell
        bits = sum(-torch.log2(v.clamp_min(1e-9)).sum() for v in out["likelihoods"].values())
        bpp = bits / pixels
        head_ref = None
        with torch.no_grad():
            ref_n = self.normalized(ref)
            if self.task is not None:
                head_ref = self.task.head_outputs(ref)
        mse, task = self.distortion(out["levels"], ref_n, head_ref, pixels)
        d = mse + self.task_weight * task
        pmse, ptask = (
            self.distortion(out["prediction"], ref_n, head_ref, pixels)
            if out["prediction"] is not out["levels"]
            else (mse, task)
        )
        d = d + self.prediction_weight * (pmse + self.task_weight * ptask)
        return {"loss": bpp + lam * d, "bpp": bpp, "mse": mse, "task": task, "pred_mse": pmse}
