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

    def encode_many(self, images: list[np.ndarray], param: float, batch_size: int = 8) -> list[bytes]:
        """``encode`` of every image, in order, the task network's front half run on batches of same-shaped images
        (the containers are byte-identical to one-by-one ``encode``; the entropy coding is per image). Every image
        is checked before any work."""
        images = [self.check(im, param) for im in images]
        return [self.codec.encode(x, param) for x in self.codec.prepare_many(images, batch_size)]

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
        return self.finish([self.decode_payload(data)], 1)[0]

    def decode_many(self, datas: list[bytes], batch_size: int = 8) -> list[Decoded]:
        """``decode`` of every container, in order (grouped per codec; image codecs run the network's front half on
        batches of same-shaped pictures, ``tasks.batching``): the detections are identical to one-by-one
        ``decode``. A bad container raises before any detection runs."""
        return self.finish([self.decode_payload(d) for d in datas], batch_size)

    def decode_payload(self, data: bytes) -> Decoded:
        """The container decoded, the task not yet run (``detections`` empty until ``finish``)."""
        header, _ = bitstream.unpack(data)
        codec = self.codec_for(header)
        t0 = time.perf_counter()
        y = codec.decode(data)
        seconds = {"decode": time.perf_counter() - t0}
        empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
        if isinstance(y, FeatureSet):
            return Decoded(header, codec, empty, features=y, seconds=seconds)
        return Decoded(header, codec, empty, image=y, seconds=seconds)

    def finish(self, items: list[Decoded], batch_size: int = 8) -> list[Decoded]:
        """The task network's rest on ``decode_payload``'s results, per codec; each item's seconds gain "task" (its
        share of its codec's time)."""
        by_codec: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            by_codec.setdefault(id(item.codec), []).append(i)
        for idx in by_codec.values():
            codec = items[idx[0]].codec
            t0 = time.perf_counter()
            dets = codec.detections_many([_payload(items[i]) for i in idx], batch_size)
            share = (time.perf_counter() - t0) / len(idx)
            for i, det in zip(idx, dets, strict=True):
                items[i].detections, items[i].seconds["task"] = det, share
        return items


def _payload(item: Decoded):
    return item.features if item.features is not None else item.image
