"""Codec interface shared by anchors and learned codecs.

A codec turns one image (``domain == "image"``) or one image's ``FeatureSet`` (``domain == "features"``) into
a self-contained container (``mutualfc.bitstream``) and back. Everything the decoder needs beyond the codec's own
fixed configuration travels in the container, so bpp = 8 * len(container) / original pixels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from mutualfc import bitstream
from mutualfc.errors import BitstreamError
from mutualfc.tasks.base import FeatureSet

TASK_IDS = {"yolov5n-coco": 1}


class Codec(ABC):
    name: ClassVar[str]
    codec_id: ClassVar[int]
    domain: ClassVar[str]  # "image" or "features"
    param_name: ClassVar[str] = "quality"
    default_params: ClassVar[tuple[float, ...]] = ()

    def __init__(self, task=None):
        self.task = task

    @property
    def model_tag(self) -> int:
        """Identity of the codec's fixed side information (stats, checkpoint); 0 when it has none."""
        return 0

    @property
    def task_id(self) -> int:
        return TASK_IDS.get(getattr(self.task, "name", ""), 0)

    def describe(self, param: float | None = None) -> dict:
        """The codec's settings (at ``param``, where they depend on it), recorded with every result."""
        return {"codec": self.name, "param_name": self.param_name}

    # -- the public API --------------------------------------------------------------------------------
    def encode(self, x, param: float) -> bytes:
        if self.domain == "image":
            h, w = x.shape[:2]
        else:
            h, w = x.geometry.orig_hw
        param = float(np.float16(param))  # the container stores the parameter as float16
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

    # -- what subclasses implement --------------------------------------------------------------------
    @abstractmethod
    def encode_streams(self, x, param: float) -> list[bytes]: ...

    @abstractmethod
    def decode_streams(self, header: bitstream.Header, streams: list[bytes]) -> np.ndarray | FeatureSet: ...
