"""A four-level test codec: the mutual codec over Faster R-CNN R50-FPN's P2-P5 with random weights under fixed seeds,
for conformance streams of a pyramid the zoo holds no trained codec for. Its large tensors (the prediction of P2 + P3
from P4 + P5 alone is 26M weights) are stored as the seeds that draw them (``zoo.packing.seeded_tensor``), so that
the checkpoint stays small enough to commit; every other value is in the file."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from mutualfc.io import atomic_write_bytes
from mutualfc.models import MutualConfig, build_network
from mutualfc.tasks import create_task
from mutualfc.tasks.rcnn import random_weights
from mutualfc.train.checkpoints import state_bytes
from mutualfc.zoo import export_state
from mutualfc.zoo.packing import SEEDED_BITS, seeded_tensor

TASK = "fasterrcnn-r50-fpn-coco"
CHECKPOINT = "fasterrcnn-four-level-codec.pt"  # in the conformance folder
MODEL = {"width": 32, "hyper": 16, "residual": 8, "qualities": 4}
# the metric's projections 2**-8 smaller: random-weight features (|x| about 20) become latents of a few tenths, so
# that streams are kilobytes, like a trained codec's, rather than noise at full scale
PROJECTION_SHIFT = 8
SEEDED_FROM = 2**16  # tensors of at least this many values (weights, metric matrices) are drawn from a seed


def build_checkpoint(path: str | Path) -> dict:
    """Write the four-level test codec to ``path``; -> its meta. Entropy models keep PyTorch's initialisation under
    seed 0; the large tensors (weights, the metric's projections) are seeded draws scaled to about 1 / sqrt(fan-in):
    the metric is not the identity, nor the analysis the synthesis' inverse, and any matrix codes alike."""
    task = create_task(TASK, pretrained=False)
    cfg = MutualConfig(levels=tuple(task.level_names), channels=tuple(task.level_channels), **MODEL)
    torch.manual_seed(0)
    net = build_network(cfg)
    seeded = {}
    with torch.no_grad():
        for seed, (name, t) in enumerate(net.state_dict().items()):
            if t.numel() >= SEEDED_FROM and t.is_floating_point():
                exponent = -(SEEDED_BITS - 1) - math.ceil(math.log2(t[0].numel()) / 2)
                exponent -= PROJECTION_SHIFT if ".pack.proj_" in name else 0
                t.copy_(seeded_tensor(tuple(t.shape), seed, exponent))
                seeded[name] = (seed, exponent)
    meta = {"name": "four-level-test", "task": TASK, "model_cfg": cfg.to_dict(), "train_cfg": {}, "step": 0}
    atomic_write_bytes(Path(path), state_bytes({"meta": meta, "model": export_state(net, seeded)}))
    return meta


def random_weight_task():
    """The four-level task network with ``rcnn.random_weights(0)`` (what the streams' features came from)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fasterrcnn-random-seed0.pth"
        torch.save(random_weights(0), path)
        return create_task(TASK, weights=path)
