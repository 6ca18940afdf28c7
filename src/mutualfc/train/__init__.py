"""Training of the learned feature codecs: cached front-end features and aligned random crops (``cache``), the
rate-distortion loss (``loss``), checkpoints (``checkpoints``) and the resumable, distributed loop (``trainer``)."""

from mutualfc.train.cache import AlignedCropDataset, build_feature_cache
from mutualfc.train.checkpoints import export_checkpoint, load_matching, read_training_file
from mutualfc.train.loss import RateDistortionLoss
from mutualfc.train.trainer import TrainConfig, train

__all__ = ["AlignedCropDataset", "RateDistortionLoss", "TrainConfig", "build_feature_cache", "export_checkpoint",
           "load_matching", "read_training_file", "train"]  # fmt: skip
