"""Per-quality channel gains: one model covers the rate range."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mutualfc.nn.caching import cached

INV_GAIN_BITS = 16  # fractional bits of the decoder's inverse gains


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

    def inverse_fixed(self, quality: float) -> torch.Tensor:
        """The inverse gains at ``quality`` as integers with ``INV_GAIN_BITS`` fractional bits (float64), computed
        the same way on every machine: g_lo * (g_hi / g_lo) ** t with t a dyadic fraction (the container's float16
        quality), the power as a product of repeated square roots; IEEE square roots, products and quotients are
        correctly rounded, unlike exp and log."""
        q = min(max(float(quality), 0.0), self.gain.shape[0] - 1.0)

        def build() -> torch.Tensor:
            g = self.gain.detach().abs().clamp_min(2.0**-4).double().view(self.gain.shape[0], -1).numpy()
            lo, hi = math.floor(q), math.ceil(q)
            frac = round((q - lo) * 2**24)  # exact: a float16 quality has at most 24 fractional bits
            gain = g[lo].copy()
            if frac:
                root, ratio = g[hi] / g[lo], np.ones_like(gain)
                for bit in range(1, 25):  # ratio ** t = prod over the set bits b of t of ratio ** 2**-b
                    root = np.sqrt(root)
                    if frac >> (24 - bit) & 1:
                        ratio = ratio * root
                gain = gain * ratio
            return torch.from_numpy(np.round(2.0**INV_GAIN_BITS / gain))

        return cached(self, f"inverse{q!r}", (self.gain,), build)
