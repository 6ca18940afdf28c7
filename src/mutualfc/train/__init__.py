"""Training support for learned feature codecs: cached front-end features and aligned random crops."""

from mutualfc.train.cache import AlignedCropDataset, build_feature_cache

__all__ = ["AlignedCropDataset", "build_feature_cache"]
