"""Per-quality channel gains: one model covers the rate range."""

from __future__ import annotations

import math

import torch
from torch import nn


class GainUnit(nn.Module):
    """Per-quality channel gains (variable rate in one model); fractional qualities interpolate log-linearly. The
    inverse gain is 1 / gain, which a linear synthesis needs to undo the analysis exactly."""

    def __init__(self, qualities: int, ch: int, lo: float = 1.0, hi: float = 32.0):
        super().__init__()
        # geometric initial gains: latents start well above the quantisation step, so information flows at once
        g = lo * (hi / lo) ** (torch.arange(qualities, dtype=torch.float32) / max(qualities - 1, 1))
        self.gain = nn.Parameter(g.view(-1, 1, 1, 1).repeat(1, ch, 1, 1))

    @property
    def channels(self) -> int:
        return self.gain.shape[1]

    def forward(self, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        """-> gain and inverse gain, (1, C, 1, 1) each."""
        q = min(max(float(quality), 0.0), self.gain.shape[0] - 1.0)
        lo, hi = math.floor(q), math.ceil(q)
        t = q - lo
        v = self.gain.abs().clamp_min(1e-4)
        gain = torch.exp((1 - t) * v[lo].log() + t * v[hi].log()) if t else v[lo]
        return gain, 1 / gain
