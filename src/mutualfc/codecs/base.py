"""Codec interface shared by anchors and learned codecs.

A codec turns one image (``ImageCodec``) or one image's ``FeatureSet`` (``FeatureCodec``) into a self-contained
container (``mutualfc.bitstream``) and back. Everything the decoder needs beyond the codec's own fixed configuration
travels in the container, so bpp = 8 * len(container) / original pixels. Each kind also says what it codes of an
image (``prepare``) and how the task finishes on what it decodes (``detections``), so that callers need not know
which kind they hold (``mutualfc.pipeline``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from mutualfc import bitstream
from mutualfc.errors import BitstreamError, DatasetError, MutualFCError
from mutualfc.registry import task_id
from mutualfc.tasks.base import Detections, FeatureSet, SplitNetwork
from mutualfc.tasks.batching import back_many, detect_many, front_many


class Codec(ABC):
    name: ClassVar[str]
    codec_id: ClassVar[int]
    domain: ClassVar[str]  # "image" or "features"
    param_name: ClassVar[str] = "quality"
    default_params: ClassVar[tuple[float, ...]] = ()  # the sweep ``eval`` runs by default
    param_limits: ClassVar[tuple[float, float]] = (0, 100)  # every value the codec takes
    integer_param: ClassVar[bool] = False  # QPs and Pillow's qualities are whole numbers

    def __init__(self, task: SplitNetwork | None = None):
        self.task = task

    @property
    def model_tag(self) -> int:
        """Identity of the codec's fixed side information (stats, checkpoint); 0 when it has none."""
        return 0

    @property
    def task_id(self) -> int:
        return task_id(getattr(self.task, "name", ""))

    @property
    def param_range(self) -> tuple[float, float]:
        """The lowest and highest parameter the codec takes (its sweep's ends unless it says otherwise)."""
        return min(self.default_params), max(self.default_params)

    @classmethod
    def param_help(cls) -> str:
        """The parameter and its range, for listings and --help."""
        lo, hi = cls.param_limits
        return f"{cls.param_name} {lo:g}..{hi:g} (default sweep {','.join(f'{x:g}' for x in cls.default_params)})"

    def describe(self, param: float | None = None) -> dict:
        """The codec's settings (at ``param``, where they depend on it), recorded with every result."""
        return {"codec": self.name, "param_name": self.param_name}

    # -- the public API --------------------------------------------------------------------------------
    def check_param(self, param: float) -> float:
        """``param`` if the codec takes it (within ``param_limits``, whole where ``integer_param``), else a one-line
        error: a value outside the range must never reach a container or a record."""
        lo, hi = self.param_limits
        try:
            value = float(param)
        except (TypeError, ValueError):
            raise MutualFCError(f"{self.name} {self.param_name} must be a number, got {param!r}") from None
        whole = " whole" if self.integer_param else ""
        if not lo <= value <= hi or (self.integer_param and not value.is_integer()):
            raise MutualFCError(
                f"{self.name} {self.param_name} must be a{whole} number in {lo:g}..{hi:g}, got {param!r}"
            )
        return value

    def encode(self, x, param: float) -> bytes:
        h, w = self.original_size(x)
        if not (1 <= h <= bitstream.MAX_SIDE and 1 <= w <= bitstream.MAX_SIDE):
            raise DatasetError(f"a {w}x{h} image: the container holds images of 1..{bitstream.MAX_SIDE} px a side")
        param = float(np.float16(self.check_param(param)))  # the container stores the parameter as float16
        streams = self.encode_streams(x, param)
        header = bitstream.Header(self.codec_id, self.task_id, float(param), self.model_tag, w, h)
        return bitstream.pack(header, streams)

    def decode(self, data: bytes):
        header, streams = bitstream.unpack(data)
        if header.codec_id != self.codec_id:
            raise BitstreamError(f"bitstream was written by codec id {header.codec_id}, not by {self.name}")
        if header.task_id != self.task_id:
            raise BitstreamError(f"bitstream is for task id {header.task_id}, this decoder runs task id {self.task_id}")
        if header.model_tag != self.model_tag:
            raise BitstreamError(
                f"bitstream was made with another {self.name} model/configuration "
                f"(tag {header.model_tag:08x}, have {self.model_tag:08x})"
            )
        try:
            return self.decode_streams(header, streams)
        except BitstreamError:
            raise
        except Exception as e:  # noqa: BLE001 - a payload that passed the CRC but cannot be decoded
            raise BitstreamError(f"cannot decode {self.name} payload: {type(e).__name__}: {e}") from None

    # -- what each kind of codec defines --------------------------------------------------------------
    @abstractmethod
    def original_size(self, x) -> tuple[int, int]:
        """(height, width) of the original image behind the codec's input."""

    @abstractmethod
    def prepare(self, image: np.ndarray):
        """What the codec codes of an RGB image: the image itself or the task network's front half of it."""

    @abstractmethod
    def detections(self, decoded) -> Detections:
        """The task's result on what ``decode`` returned."""

    @abstractmethod
    def prepare_many(self, images: list[np.ndarray], batch_size: int = 8) -> list:
        """``prepare`` of every image, the task network run on batches (identical results: ``tasks.batching``)."""

    @abstractmethod
    def detections_many(self, decoded: list, batch_size: int = 8) -> list[Detections]:
        """``detections`` of every decoded item (identical results; where batches are used: ``tasks.batching``)."""

    # -- what subclasses implement --------------------------------------------------------------------
    @abstractmethod
    def encode_streams(self, x, param: float) -> list[bytes]: ...

    @abstractmethod
    def decode_streams(self, header: bitstream.Header, streams: list[bytes]) -> np.ndarray | FeatureSet: ...


class ImageCodec(Codec):
    """Codes the RGB image; the server runs the whole task network on the decoded picture."""

    domain = "image"

    def original_size(self, x: np.ndarray) -> tuple[int, int]:
        return x.shape[0], x.shape[1]

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return image

    def detections(self, decoded: np.ndarray) -> Detections:
        return self.task.detect(decoded)

    def prepare_many(self, images: list[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        return list(images)

    def detections_many(self, decoded: list[np.ndarray], batch_size: int = 8) -> list[Detections]:
        return detect_many(self.task, decoded, batch_size)


class FeatureCodec(Codec):
    """Codes the task network's split features; the server runs only the back half."""

    domain = "features"

    def original_size(self, x: FeatureSet) -> tuple[int, int]:
        return x.geometry.orig_hw

    def prepare(self, image: np.ndarray) -> FeatureSet:
        return self.task.front(image)

    def detections(self, decoded: FeatureSet) -> Detections:
        return self.task.back(decoded)

    def prepare_many(self, images: list[np.ndarray], batch_size: int = 8) -> list[FeatureSet]:
        return front_many(self.task, images, batch_size)

    def detections_many(self, decoded: list[FeatureSet], batch_size: int = 8) -> list[Detections]:
        return back_many(self.task, decoded, batch_size)
