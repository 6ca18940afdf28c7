"""A task network's front half on batches of images, with features identical to one image at a time.

Images are grouped by network input shape (so nothing is padded to a common size) and each group runs in chunks.
The shipped networks' front halves compute each sample of a CPU batch with the kernels one image gets (checked by
tests/test_batching.py; by hand also with ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``SSE41``), with one exception that
``chunk_limit`` steps around: with a single thread, ATen runs 1x1 convolutions of fewer than 16 samples on its own
kernels and larger batches on oneDNN, whose sums are ordered differently. On CUDA, cuDNN may pick another algorithm
per batch size; there the equality is not promised. Networks without named parts (``transform`` + ``body``) run one
image at a time, and so does every back half (``back_many``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mutualfc.tasks.base import Detections, FeatureSet, SplitNetwork

ATEN_ONE_THREAD_BATCH_SWITCH = 16  # ATen: single-threaded 1x1 convolutions move to oneDNN from this batch size


def chunk_limit(batch_size: int) -> int:
    """The largest chunk that computes exactly what single images do (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if torch.get_num_threads() == 1:
        return min(batch_size, ATEN_ONE_THREAD_BATCH_SWITCH - 1)
    return batch_size


def grouped_chunks(keys: Sequence, batch_size: int) -> list[list[int]]:
    """Indexes of ``keys`` grouped by equal key (first-seen order), each group cut into chunks of ``chunk_limit``."""
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    step = chunk_limit(batch_size)
    return [idx[j : j + step] for idx in groups.values() for j in range(0, len(idx), step)]


def front_many(net: SplitNetwork, images: Sequence[np.ndarray], batch_size: int = 8) -> list[FeatureSet]:
    """``net.front`` of every image, in order, the body run on chunks of same-shaped inputs."""
    if not (hasattr(net, "transform") and hasattr(net, "body")) or batch_size == 1:
        return [net.front(im) for im in images]
    inputs = [net.transform(im) for im in images]  # (x (1, 3, H, W), geometry)
    out: list[FeatureSet | None] = [None] * len(images)
    with torch.inference_mode():
        for chunk in grouped_chunks([tuple(x.shape) for x, _ in inputs], batch_size):
            levels = net.body(torch.cat([inputs[i][0] for i in chunk]).to(net.device))
            for j, i in enumerate(chunk):  # each image's own copy (a view would keep the whole batch alive)
                own = {n: t[j : j + 1].to("cpu", copy=True) for n, t in zip(net.level_names, levels, strict=True)}
                out[i] = FeatureSet(own, inputs[i][1])
    return out


def back_many(net: SplitNetwork, features: Sequence[FeatureSet], batch_size: int = 8) -> list[Detections]:
    """``net.back`` of every feature set, one at a time: a back half run on a batch is not always what it gives one
    image at a time (oneDNN picks other kernels for YOLOX-Nano's 13 x 13 head level when the batch has more than
    one image and there are two threads: scores 1 ulp apart), and it gains little (results/batch.md)."""
    return [net.back(f) for f in features]


def detect_many(net: SplitNetwork, images: Sequence[np.ndarray], batch_size: int = 8) -> list[Detections]:
    """``net.detect`` of every image, both halves batched."""
    return back_many(net, front_many(net, images, batch_size), batch_size)


def in_chunks(items: Sequence, size: int) -> list[Sequence]:
    """``items`` cut into consecutive pieces of ``size`` (what the CLI reads into memory at once)."""
    return [items[i : i + size] for i in range(0, len(items), max(size, 1))]
