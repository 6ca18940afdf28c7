"""Standard anchors: image codecs (JPEG, WebP, HEVC, VVC) and the MPEG-VCM feature anchor (HEVC, VVC)."""

from mutualfc.anchors.feature import FeatureRange, HEVCFeatureCodec, VVCFeatureCodec, measure_range
from mutualfc.anchors.image import HEVCImageCodec, JPEGCodec, VVCImageCodec, WebPCodec
from mutualfc.anchors.video import VVCEncoder

__all__ = [
    "FeatureRange",
    "HEVCFeatureCodec",
    "HEVCImageCodec",
    "JPEGCodec",
    "VVCEncoder",
    "VVCFeatureCodec",
    "VVCImageCodec",
    "WebPCodec",
    "measure_range",
]
