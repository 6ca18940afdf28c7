"""Per-quality channel gains: one model covers the rate range."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mutualfc.nn import exact
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

    def forward(self, quality: float, boost: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """-> gain and inverse gain, (1, C, 1, 1) each; ``boost`` raises the gain by 2**(boost / 2) (finer
        quantisation than the quality's own, see ``boost_factor``)."""
        q = min(max(float(quality), 0.0), self.gain.shape[0] - 1.0)
        lo, hi = math.floor(q), math.ceil(q)
        t = q - lo
        v = self.gain.abs().clamp_min(1e-4)
        gain = torch.exp((1 - t) * v[lo].log() + t * v[hi].log()) if t else v[lo]
        if boost:
            gain = gain * boost_factor(boost)
        return gain, 1 / gain

    def inverse_fixed(self, quality: float, boost: int = 0) -> torch.Tensor:
        """The inverse gains at ``quality`` (and ``boost``) as integers with ``INV_GAIN_BITS`` fractional bits
        (float64), computed the same way on every machine: g_lo * (g_hi / g_lo) ** t with t a dyadic fraction (the
        container's float16 quality), the power as a product of repeated square roots; IEEE square roots, products
        and quotients are correctly rounded, unlike exp and log."""
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
            if boost:
                gain = gain * boost_factor(boost)
            return torch.from_numpy(np.round(2.0**INV_GAIN_BITS / gain))

        return cached(self, f"inverse{q!r}/{boost}", (self.gain,), build)

    def dequantize(
        self, x: torch.Tensor, quality: float, shift: int, low: tuple[float, torch.Tensor] | None = None,
        boost: int = 0,
    ) -> torch.Tensor:  # fmt: skip
        """Fixed-point columns ``x`` (C, N) times the inverse gains at ``quality``, ``shift`` fractional bits
        dropped, exactly; ``low``: (quality, column indexes) of the columns coded at a lower quality (a tier)."""
        multiplier = self.inverse_fixed(quality, boost)
        if low is None or not low[1].numel():
            return exact.rescale(x, multiplier, shift)
        return exact.rescale(x, multiplier, shift, self.inverse_fixed(low[0], boost), low[1])


def boost_factor(boost: int) -> float:
    """2 ** (boost / 2) for a non-negative integer ``boost``, exactly the same float64 on every machine (a power of
    two times the correctly rounded square root of 2)."""
    if not 0 <= boost <= 64:
        raise ValueError(f"gain boost {boost} outside 0..64")
    return math.ldexp(math.sqrt(2.0) if boost % 2 else 1.0, boost // 2)
