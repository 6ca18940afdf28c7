"""MFCNet: the levels that are not coded, predicted from the decoded base."""

from __future__ import annotations

import torch
from torch import nn

from mutualfc.models.config import MutualConfig
from mutualfc.nn import exact
from mutualfc.nn.closed_form import least_squares, sample_rows, set_linear
from mutualfc.nn.layers import conv
from mutualfc.nn.packing import LevelPacker


class MFCNet(nn.Module):
    """Predicts the non-base levels from the decoded base: a linear map of the packed decoded base, fitted by least
    squares in the task metric."""

    def __init__(self, cfg: MutualConfig, base: tuple[str, ...], targets: tuple[str, ...]):
        super().__init__()
        self.pack = LevelPacker(names=targets, **cfg.packer_args())
        self.lin = conv(LevelPacker(names=base, **cfg.packer_args()).channels, self.pack.channels, 1)

    def forward(self, base_packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> predicted levels (feature units)."""
        return self.pack.unpack(self.lin(base_packed))

    def predict_cells(self, base: torch.Tensor, bits: int) -> torch.Tensor:
        """Real decoding: the prediction of the packed decoded base (fixed-point columns, ``bits``), exactly."""
        return exact.wide_linear(exact.wide_params(self.lin, bits), base)

    def init_from_data(
        self, levels: dict[str, torch.Tensor], base_rec: torch.Tensor, samples: int, sensitivity: dict
    ) -> None:
        self.pack.set_stats(levels, sensitivity)
        t = sample_rows(self.pack.pack(levels), samples, seed=1)
        w, b = least_squares(sample_rows(base_rec, samples, seed=1), t)
        set_linear(self.lin, w, b)
