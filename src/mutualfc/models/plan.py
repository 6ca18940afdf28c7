"""The coding plan: every encoder decision about one image in one object, resolved once and handed to ``compress``.

A codec's operating-point policy (the model's ``Schedule``, explicit options) and the task's objectness map become a
``CodingPlan``; the networks only carry it out. What the plan decides that a decoder needs travels in the streams
(skip mask, tiers, the residual's cell map and boost), so ``decompress`` needs only the quality.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CodingPlan:
    """What to code of one image.

    ``quality``: the model quality (gains; fractions interpolate). ``residual``: send the finest level's residual
    stream (where the model has one). ``keep``: (1, 1, H, W) at the coarsest level, cells to code (None: all); the
    others decode to the mean features. ``low_keep`` / ``low_step``: kept cells coded at the lower quality
    ``quality - low_step / TIER_STEP`` (a second tier). ``residual_keep``: the kept cells that may carry the
    residual (None: all). ``residual_rd`` > 0: a cell carries the residual only where it removes at least that much
    squared error per estimated bit. ``boost``: the residual's gains raised by ``2 ** (boost / 2)``."""

    quality: float
    residual: bool = True
    keep: torch.Tensor | None = None
    low_keep: torch.Tensor | None = None
    low_step: int = 0
    residual_keep: torch.Tensor | None = None
    residual_rd: float = 0.0
    boost: int = 0

    def replace(self, **changes) -> CodingPlan:
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, plan: CodingPlan | float, **overrides) -> CodingPlan:
        """``plan`` itself, or a plan at quality ``plan``; explicit ``overrides`` (fields) win."""
        if isinstance(plan, CodingPlan):
            return plan.replace(**overrides) if overrides else plan
        return cls(float(plan), **overrides)

    def describe(self) -> dict:
        """The plan's settings as data (masks as the count of cells they keep), for records and logs."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = int(v.sum()) if isinstance(v, torch.Tensor) else v
        return out
