"""Network pieces of the learned codecs: layers, the task-metric level packer, closed-form fits, and the engine that
evaluates networks at the coded cells only."""

from mutualfc.nn.closed_form import least_squares, pca, sample_rows, set_linear, set_pca
from mutualfc.nn.layers import ResBlock, conv, upconv
from mutualfc.nn.packing import LevelPacker, crop_levels, pad_levels

__all__ = ["LevelPacker", "ResBlock", "conv", "crop_levels", "least_squares", "pad_levels", "pca", "sample_rows",
           "set_linear", "set_pca", "upconv"]  # fmt: skip
