"""Evaluation: COCO datasets, mAP, bits-per-pixel accounting, BD-rate and RD plots."""

from mutualfc.eval.coco import CocoDataset
from mutualfc.images import load_image

__all__ = ["CocoDataset", "load_image"]
