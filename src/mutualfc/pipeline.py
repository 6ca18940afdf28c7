"""image -> bytes -> detections for any codec: the edge half (``Encoder``) and the server half (``Decoder``).

The codec says what it codes of an image and how the task finishes on what it decodes, so neither half branches on
the kind of codec; the decoder picks the codec from each container's header.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mutualfc import bitstream
from mutualfc.codecs import Codec, codec_options_of, create_codec
from mutualfc.errors import BitstreamError, DatasetError
from mutualfc.images import check_image
from mutualfc.registry import codec_name, task_id, task_name
from mutualfc.tasks.base import Detections, FeatureSet, SplitNetwork


@dataclass
class Decoded:
    """What a server gets from one container."""

    header: bitstream.Header
    codec: Codec
    detections: Detections
    features: FeatureSet | None = None  # feature codecs: the decoded levels
    image: np.ndarray | None = None  # image codecs: the decoded picture
    seconds: dict[str, float] = field(default_factory=dict)  # "decode", "task"


class Encoder:
    """Edge side: the task network's front half (for feature codecs) and the codec's encoder."""

    def __init__(self, task: SplitNetwork, codec: Codec):
        self.task, self.codec = task, codec

    def check(self, image: np.ndarray, param: float) -> np.ndarray:
        """The image and the parameter refused with one line before any work (the front half included)."""
        check_image(image)
        h, w = image.shape[:2]
        if not (1 <= h <= bitstream.MAX_SIDE and 1 <= w <= bitstream.MAX_SIDE):
            raise DatasetError(f"a {w}x{h} image: the container holds images of 1..{bitstream.MAX_SIDE} px a side")
        self.codec.check_param(param)
        return image

    def encode(self, image: np.ndarray, param: float) -> bytes:
        return self.codec.encode(self.codec.prepare(self.check(image, param)), param)

    def encode_timed(self, image: np.ndarray, param: float) -> tuple[bytes, dict[str, float]]:
        """``encode`` with the seconds spent in the task's front half ("task") and in the codec ("encode")."""
        t0 = time.perf_counter()
        x = self.codec.prepare(self.check(image, param))
        t1 = time.perf_counter()
        data = self.codec.encode(x, param)
        return data, {"task": t1 - t0, "encode": time.perf_counter() - t1}


class Decoder:
    """Server side: decodes containers of any codec and any task network (both named by the header: the codec id,
    the task id), each codec built once per task with ``codec_options``, and runs the rest of that task network.
    ``task`` is the default network; ``tasks`` adds others by name (a container of a task it does not hold is
    refused with one line)."""

    def __init__(self, task: SplitNetwork, codecs: dict[str, Codec] | None = None,
                 tasks: dict[str, SplitNetwork] | None = None, **codec_options):  # fmt: skip
        self.task, self.options = task, codec_options
        self.tasks: dict[str, SplitNetwork] = {task.name: task} | dict(tasks or {})
        self.codecs: dict[str, Codec] = dict(codecs or {})  # the default task's, by codec name
        self._others: dict[tuple[str, str], Codec] = {}  # other tasks' codecs, by (task, codec)

    def task_for(self, header: bitstream.Header) -> SplitNetwork:
        if header.task_id == task_id(self.task.name):
            return self.task
        name = task_name(header.task_id)
        if name is None or name not in self.tasks:
            held = ", ".join(self.tasks)
            raise BitstreamError(f"stream for task id {header.task_id} ({name or 'unknown'}); this decoder runs {held}")
        return self.tasks[name]

    def codec_for(self, header: bitstream.Header) -> Codec:
        name = codec_name(header.codec_id)
        if name is None:
            raise BitstreamError(f"unknown codec id {header.codec_id}")
        task = self.task_for(header)
        cache = self.codecs if task is self.task else self._others
        key = name if task is self.task else (task.name, name)
        if key not in cache:  # each codec takes the decoder options it knows (a checkpoint: learned ones)
            accepted = codec_options_of(name)
            cache[key] = create_codec(name, task, **{k: v for k, v in self.options.items() if k in accepted})
        return cache[key]

    def built_codecs(self) -> list[Codec]:
        """Every codec built so far, of every task."""
        return [*self.codecs.values(), *self._others.values()]

    def decode(self, data: bytes) -> Decoded:
        header, _ = bitstream.unpack(data)
        codec = self.codec_for(header)
        t0 = time.perf_counter()
        y = codec.decode(data)
        t1 = time.perf_counter()
        det = codec.detections(y)
        seconds = {"decode": t1 - t0, "task": time.perf_counter() - t1}
        if isinstance(y, FeatureSet):
            return Decoded(header, codec, det, features=y, seconds=seconds)
        return Decoded(header, codec, det, image=y, seconds=seconds)
