"""Standard anchors: image codecs (JPEG, WebP, HEVC, VVC) and the MPEG-VCM feature anchor (HEVC, VVC)."""

from mutualfc.codecs.anchors.feature import FeatureRange, HEVCFeatureCodec, VVCFeatureCodec, measure_range
from mutualfc.codecs.anchors.image import HEVCImageCodec, JPEGCodec, VVCImageCodec, WebPCodec
from mutualfc.codecs.anchors.video import VVCEncoder

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
