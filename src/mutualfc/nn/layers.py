"""Small building blocks of the learned codecs' networks."""

from __future__ import annotations

import torch
from torch import nn


def conv(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Conv2d:
    """A "same" convolution (padding k // 2)."""
    return nn.Conv2d(cin, cout, k, s, k // 2)


def upconv(cin: int, cout: int) -> nn.Sequential:
    """x2 upsampling by sub-pixel convolution."""
    return nn.Sequential(conv(cin, cout * 4, 3), nn.PixelShuffle(2))


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a GELU between them, added to the input."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv(ch, ch), nn.GELU(), conv(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
