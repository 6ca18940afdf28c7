"""The two constructors of the public API: a task network and a codec, each by name."""

from __future__ import annotations

import torch

from mutualfc.codecs import Codec, create_codec
from mutualfc.errors import MutualFCError
from mutualfc.tasks import create_task
from mutualfc.tasks.base import SplitNetwork


def load_task(name: str = "yolov5n-coco", weights: str | None = None, device: str = "cpu") -> SplitNetwork:
    """The split task network ``name`` with its weights (``weights``, else ``$MUTUALFC_WEIGHTS``,
    ``$MUTUALFC_WEIGHTS_DIR``, ``~/.cache/mutualfc/weights``, then the upstream download), on ``device``."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MutualFCError(f"device {device}: no CUDA device is available here")
    return create_task(name, weights=weights).to(device)


def load_codec(name: str, task: SplitNetwork | None = None, **options) -> Codec:
    """Codec ``name`` (``mutualfc.list_codecs()``) for ``task``; learned codecs load their zoo checkpoint (or
    ``checkpoint=PATH``); ``options`` are the codec's settings (``residual``, ``residual_rd``, ``skip_below``,
    ``preset``...)."""
    return create_codec(name, task, **options)
