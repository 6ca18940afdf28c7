"""What the fold experiments share: the tuning fold (160 coco-train images, cached features, pseudo-labels at score
cut-offs 0.1 and 0.02), the zoo mutual codec, and quality 7.5's setting before the rate-distortion choice of the
residual's cells (threshold 0.0447, tier below 0.1 at quality 5.5, residual in the cells of objectness >= 0.1)."""

from __future__ import annotations

import torch

from mutualfc.codecs import create_codec
from mutualfc.eval.coco import CocoDataset
from mutualfc.tasks import create_task

LABELS = ("cache/tune-pseudo-010.json", "cache/tune-pseudo-002.json")
PREVIOUS_75 = {"tau": 0.0447, "tau_r": 0.1, "tau_hi": 0.1, "q_lo": 5.5}


def load(codec_name: str = "mutual"):
    """-> task, codec, the fold's datasets (one per label file) and its cached (id, features, pixels)."""
    torch.set_num_threads(1)
    task = create_task("yolov5n-coco")
    sets = [CocoDataset("../shared/data/coco-train", a).subset(160) for a in LABELS]
    return task, create_codec(codec_name, task), sets, torch.load("cache/fid-feats.pt", weights_only=False)


def code(net, task, fs, quality: float = 7.0, tau: float = 0.0447, tau_r: float = 0.1, tau_hi: float = 0.1,
         q_lo: float = 5.5):  # fmt: skip
    """Codes one image's features at a tiered setting -> (kept cells, residual cells, strings, meta)."""
    obj = task.objectness_map(fs.levels)
    keep, rk = obj >= tau, obj >= tau_r
    strings, meta = net.compress(fs.levels, quality, residual=True, keep=keep, residual_keep=rk,
                                 low_keep=obj < tau_hi, low_step=round((quality - q_lo) * 8))  # fmt: skip
    return keep, rk, strings, meta


def maps(sets, dets: list[dict]) -> list[float]:
    """mAP of the detections against each label file."""
    return [d.evaluate(dets)["map"] for d in sets]
