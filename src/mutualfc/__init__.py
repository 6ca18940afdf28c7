"""mutualfc: feature coding for machines (learnt mutual feature compression and standard anchors).

The public Python API (README, "Python API")::

    task = mutualfc.load_task("yolov5n-coco")          # the split detector
    codec = mutualfc.load_codec("mutual", task)        # a codec by name (zoo checkpoint for learned ones)
    data = mutualfc.Encoder(task, codec).encode(mutualfc.load_image(path, exif_transpose=True), 4)
    decoded = mutualfc.Decoder(task).decode(data)      # any codec, read from the container
    decoded.detections, decoded.features

Names are imported on first use, so that ``import mutualfc`` (and ``mutualfc --help``) stays fast.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING

__version__ = "0.3.0"

# CompressAI's package import pulls in torch_geometric, which calls the deprecated torch.jit.script at import time;
# the warning says nothing about mutualfc, so it is kept off the user's terminal (only that message, from torch.jit).
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning, module=r"torch\.jit")

_LAZY = {
    "load_task": "mutualfc.api",
    "load_codec": "mutualfc.api",
    "list_codecs": "mutualfc.codecs",
    "load_image": "mutualfc.images",
    "Encoder": "mutualfc.pipeline",
    "Decoder": "mutualfc.pipeline",
    "Decoded": "mutualfc.pipeline",
    "Detections": "mutualfc.tasks.base",
    "FeatureSet": "mutualfc.tasks.base",
    "Client": "mutualfc.service.client",
    "MutualFCError": "mutualfc.errors",
    "BitstreamError": "mutualfc.errors",
}

__all__ = [
    "BitstreamError",
    "Client",
    "Decoded",
    "Decoder",
    "Detections",
    "Encoder",
    "FeatureSet",
    "MutualFCError",
    "__version__",
    "list_codecs",
    "load_codec",
    "load_image",
    "load_task",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mutualfc' has no attribute {name!r}")


if TYPE_CHECKING:
    from mutualfc.api import load_codec, load_task
    from mutualfc.codecs import list_codecs
    from mutualfc.errors import BitstreamError, MutualFCError
    from mutualfc.images import load_image
    from mutualfc.pipeline import Decoded, Decoder, Encoder
    from mutualfc.service.client import Client
    from mutualfc.tasks.base import Detections, FeatureSet
