"""MPEG-VCM style feature anchor: the task's levels -> 10-bit global-range quantisation -> channel tiling into one
monochrome picture -> HEVC (libx265, 4:0:0 10-bit) or VVC intra -> decode -> dequantise -> untile."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mutualfc.codecs.anchors.video import UsesVVCEncoder, VVCEncoder, decode_picture, luma_samples, x265_encode
from mutualfc.codecs.base import FeatureCodec
from mutualfc.errors import MutualFCError
from mutualfc.registry import CODEC_IDS
from mutualfc.tasks.base import FeatureSet

BIT_DEPTH = 10
MAX_CODE = (1 << BIT_DEPTH) - 1
TILE_ROWS = 8  # every level is tiled as 8 rows of channels: for YOLOv5 all three levels get the input's width


# ---------------------------------------------------------------------------------------------------------
# quantisation range
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureRange:
    """One global [min, max] over all levels, measured on training images and shipped with the anchor."""

    lo: float
    hi: float
    meta: dict

    @property
    def tag(self) -> int:
        return zlib.crc32(np.asarray([self.lo, self.hi], dtype="<f4").tobytes())

    @classmethod
    def load(cls, path: str | Path) -> FeatureRange:
        d = json.loads(Path(path).read_text())
        return cls(float(d["min"]), float(d["max"]), d)

    @classmethod
    def for_task(cls, task_name: str) -> FeatureRange:
        ref = resources.files("mutualfc.codecs.anchors") / "stats" / f"{task_name}.json"
        if not ref.is_file():
            raise MutualFCError(f"no feature-anchor range shipped for {task_name}; run 'mutualfc anchor stats'")
        return cls.load(str(ref))


def measure_range(task, images, progress: bool = True) -> dict:
    """Global min/max of all pyramid levels of ``task`` over ``images`` (an iterable of RGB arrays)."""
    lo, hi, n = np.inf, -np.inf, 0
    per_level: dict[str, list[float]] = {}
    for image in tqdm(images, desc="feature range", disable=not progress):
        fs = task.front(image)
        for name, t in fs.levels.items():
            lmin, lmax = float(t.min()), float(t.max())
            lo, hi = min(lo, lmin), max(hi, lmax)
            cur = per_level.setdefault(name, [np.inf, -np.inf])
            cur[0], cur[1] = min(cur[0], lmin), max(cur[1], lmax)
        n += 1
    return {"task": task.name, "min": lo, "max": hi, "n_images": n, "per_level": per_level}


def quantize(x: np.ndarray, rng: FeatureRange) -> np.ndarray:
    q = np.rint((x.astype(np.float64) - rng.lo) / (rng.hi - rng.lo) * MAX_CODE)
    return np.clip(q, 0, MAX_CODE).astype(np.uint16)


def dequantize(q: np.ndarray, rng: FeatureRange) -> np.ndarray:
    return (q.astype(np.float32) / MAX_CODE * (rng.hi - rng.lo) + rng.lo).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# tiling
# ---------------------------------------------------------------------------------------------------------
def tile_layout(shapes: dict[str, tuple[int, int, int]]) -> tuple[int, int, dict[str, tuple[int, int, int]]]:
    """-> frame (height, width) and per level (y offset, rows, cols); frame sides are multiples of 8."""
    layout, y, width = {}, 0, 0
    for name, (c, h, w) in shapes.items():
        rows = TILE_ROWS if c % TILE_ROWS == 0 else int(np.ceil(np.sqrt(c)))
        cols = int(np.ceil(c / rows))
        layout[name] = (y, rows, cols)
        y += rows * h
        width = max(width, cols * w)
    return -(-y // 8) * 8, -(-width // 8) * 8, layout


def tile(levels: dict[str, np.ndarray], fill: int = 1 << (BIT_DEPTH - 1)) -> np.ndarray:
    """Channels of each (C, h, w) level laid out row-major as a grid; levels stacked vertically."""
    shapes = {k: v.shape for k, v in levels.items()}
    fh, fw, layout = tile_layout(shapes)
    frame = np.full((fh, fw), fill, dtype=np.uint16)
    for name, x in levels.items():
        c, h, w = x.shape
        y0, rows, cols = layout[name]
        for i in range(c):
            r, k = divmod(i, cols)
            frame[y0 + r * h : y0 + (r + 1) * h, k * w : (k + 1) * w] = x[i]
    return frame


def untile(frame: np.ndarray, shapes: dict[str, tuple[int, int, int]]) -> dict[str, np.ndarray]:
    _, _, layout = tile_layout(shapes)
    out = {}
    for name, (c, h, w) in shapes.items():
        y0, rows, cols = layout[name]
        x = np.empty((c, h, w), dtype=frame.dtype)
        for i in range(c):
            r, k = divmod(i, cols)
            x[i] = frame[y0 + r * h : y0 + (r + 1) * h, k * w : (k + 1) * w]
        out[name] = x
    return out


# ---------------------------------------------------------------------------------------------------------
# codecs
# ---------------------------------------------------------------------------------------------------------
class TiledFeatureCodec(FeatureCodec):
    param_name = "qp"

    def __init__(self, task, feature_range: FeatureRange | None = None):
        super().__init__(task)
        if task is None:
            raise MutualFCError(f"{self.name} needs a task network")
        self.range = feature_range or FeatureRange.for_task(task.name)

    @property
    def model_tag(self) -> int:
        return self.range.tag

    def to_frame(self, features: FeatureSet) -> np.ndarray:
        return tile({k: quantize(v[0].float().numpy(), self.range) for k, v in features.levels.items()})

    def from_frame(self, frame: np.ndarray, header) -> FeatureSet:
        g = self.task.geometry((header.height, header.width))
        shapes = self.task.level_shapes(g)
        fh, fw, _ = tile_layout(shapes)
        if frame.shape[0] < fh or frame.shape[1] < fw:
            raise MutualFCError(f"decoded picture {frame.shape} is smaller than the tiled frame ({fh}, {fw})")
        levels = untile(frame[:fh, :fw], shapes)
        return FeatureSet({k: torch.from_numpy(dequantize(v, self.range))[None] for k, v in levels.items()}, g)


class HEVCFeatureCodec(TiledFeatureCodec):
    """Tiled 10-bit features coded as one HEVC 4:0:0 10-bit intra picture (libx265)."""

    name, codec_id = "hevc-feature", CODEC_IDS["hevc-feature"]
    default_params = (2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 42)
    param_limits, integer_param = (0, 51), True

    def __init__(self, task, feature_range: FeatureRange | None = None, preset: str = "medium"):
        super().__init__(task, feature_range)
        self.preset = preset

    def encode_streams(self, features: FeatureSet, param: float) -> list[bytes]:
        import av  # PyAV is loaded when an anchor codes: importing the codecs stays light

        frame = av.VideoFrame.from_ndarray(self.to_frame(features), format="gray10le")
        return [x265_encode(frame, int(param), self.preset)]

    def decode_streams(self, header, streams):
        return self.from_frame(luma_samples(decode_picture(streams[0], "hevc")), header)


class VVCFeatureCodec(UsesVVCEncoder, TiledFeatureCodec):
    """Tiled 10-bit features coded as one VVC 4:0:0 10-bit intra picture (vvencapp or VTM), true QP."""

    name, codec_id = "vvc-feature", CODEC_IDS["vvc-feature"]
    default_params = (2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 42)
    param_limits, integer_param = (0, 63), True

    def __init__(self, task, feature_range: FeatureRange | None = None, encoder: VVCEncoder | None = None,
                 vvc_encoder: str | None = None, vvc_config: str | None = None,
                 vvc_preset: str | None = None):  # fmt: skip
        super().__init__(task, feature_range)
        self.init_encoder(encoder, vvc_encoder, vvc_config, vvc_preset)

    def encode_streams(self, features: FeatureSet, param: float) -> list[bytes]:
        y = self.to_frame(features)
        h, w = y.shape
        return [self.encoder.encode(y, w, h, int(param), "400", BIT_DEPTH)]

    def decode_streams(self, header, streams):
        return self.from_frame(luma_samples(decode_picture(streams[0], "vvc")), header)
