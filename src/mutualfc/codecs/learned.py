"""Learned feature codecs behind the common ``Codec`` interface: the mutual codec and its separate-scale baseline.

The container carries the original image size (the letterbox geometry and every level's shape follow from it and
the task network), the quality, and the checkpoint's CRC-32 as model tag; the payload streams are the rANS streams of
the latent (two checkerboard halves per channel group, then the hyper-latent), then the optional residual stream.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from mutualfc import bitstream
from mutualfc.codecs.base import Codec
from mutualfc.errors import BitstreamError, MutualFCError
from mutualfc.tasks.base import FeatureSet


class LearnedFeatureCodec(Codec):
    domain = "features"
    param_name = "quality"
    default_params: ClassVar[tuple[float, ...]] = (0, 1, 2, 3, 4, 5, 6, 7)

    def __init__(self, task=None, checkpoint: str | None = None, residual: bool = False):
        super().__init__(task)
        from mutualfc.zoo import load_model

        if task is None:
            raise MutualFCError(f"the {self.name} codec needs a task network")
        self.model = load_model(self.name, task.name, checkpoint)
        self.net = self.model.net
        self.residual = residual
        q = self.net.cfg.qualities - 1
        self.default_params = tuple(float(x) for x in range(q + 1))
        self._level = task.level_names[-1]

    @property
    def model_tag(self) -> int:
        return self.model.tag

    def describe(self) -> dict:
        return super().describe() | {"checkpoint": self.model.meta.get("name"), "residual": self.residual}

    def _check_quality(self, q: float) -> float:
        top = self.net.cfg.qualities - 1
        if not 0 <= q <= top:
            raise MutualFCError(f"{self.name} quality must be in 0..{top}, got {q:g}")
        return q

    def encode_streams(self, x: FeatureSet, param: float) -> list[bytes]:
        q = self._check_quality(float(np.float16(param)))  # the decoder only sees the float16 value
        strings, _ = self.net.compress(x.levels, q, residual=self.residual)
        return strings

    def reconstruct(self, x: FeatureSet, param: float) -> tuple[list[bytes], FeatureSet]:
        """Encode and return the encoder's own reconstruction (identical to what ``decode`` yields)."""
        q = self._check_quality(float(np.float16(param)))
        strings, meta = self.net.compress(x.levels, q, residual=self.residual)
        return strings, FeatureSet(meta["levels"], x.geometry)

    def decode_streams(self, header: bitstream.Header, streams: list[bytes]) -> FeatureSet:
        q = header.param
        top = self.net.cfg.qualities - 1
        if not 0 <= q <= top:
            raise BitstreamError(f"quality {q:g} outside 0..{top}")
        if not (1 <= header.width <= 16384 and 1 <= header.height <= 16384):
            raise BitstreamError(f"implausible image size {header.width}x{header.height}")
        geometry = self.task.geometry((header.height, header.width))
        shape = self.task.level_shapes(geometry)[self._level]
        try:
            levels = self.net.decompress(streams, tuple(shape[1:]), q)
        except (ValueError, RuntimeError, IndexError) as e:
            raise BitstreamError(f"cannot decode {self.name} payload: {str(e).splitlines()[0]}") from None
        for k, t in levels.items():
            if not torch.isfinite(t).all():
                raise BitstreamError(f"decoded level {k} is not finite")
        return FeatureSet(levels, geometry)

    def quality_for_bpp(self, x: FeatureSet, target_bpp: float, pixels: int, steps: int = 8) -> tuple[float, bytes]:
        """Highest quality whose container fits ``target_bpp`` (bisection on the continuous quality; rate grows
        with quality). Falls back to quality 0 when even that is over budget."""
        lo, hi = 0.0, float(self.net.cfg.qualities - 1)
        best = self.encode(x, lo)
        if 8 * len(best) / pixels > target_bpp:
            return lo, best
        top = self.encode(x, hi)
        if 8 * len(top) / pixels <= target_bpp:
            return hi, top
        for _ in range(steps):
            mid = float(np.float16((lo + hi) / 2))
            data = self.encode(x, mid)
            if 8 * len(data) / pixels <= target_bpp:
                lo, best = mid, data
            else:
                hi = mid
        return lo, best


class MutualCodec(LearnedFeatureCodec):
    """Learnt mutual feature codec: BFCNet codes {P4,P5}, MFCNet predicts P3; the P3 residual stream is optional
    (``residual=True``) and off by default, because with the shipped model it costs more bits than it gains."""

    name = "mutual"
    codec_id = 16


class SeparateCodec(LearnedFeatureCodec):
    """Separate-scale baseline: the same learned codec applied to each level independently."""

    name = "separate"
    codec_id = 17
