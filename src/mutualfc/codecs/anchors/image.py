"""Image anchors: the original image coded with JPEG / WebP (Pillow), HEVC intra (libx265) or VVC intra."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mutualfc.codecs.anchors.video import UsesVVCEncoder, VVCEncoder, decode_picture, x265_encode
from mutualfc.codecs.base import ImageCodec
from mutualfc.registry import CODEC_IDS


def _crop(rgb: np.ndarray, header) -> np.ndarray:
    return np.ascontiguousarray(rgb[: header.height, : header.width])


MIN_VIDEO_SIDE = 16  # x265 refuses smaller pictures


def _pad_even(image: np.ndarray) -> np.ndarray:
    """4:2:0 needs even sizes, and the video encoders at least ``MIN_VIDEO_SIDE`` px a side: replicate the last
    row/column; the decoder crops back (the size is in the header)."""
    h, w = image.shape[:2]
    ph, pw = max(h % 2, MIN_VIDEO_SIDE - h), max(w % 2, MIN_VIDEO_SIDE - w)
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge") if (ph or pw) else image


class PillowImageCodec(ImageCodec):
    fmt: str
    save_options: dict

    def encode_streams(self, image: np.ndarray, param: float) -> list[bytes]:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=self.fmt, quality=int(param), **self.save_options)
        return [buf.getvalue()]

    def decode_streams(self, header, streams):
        with Image.open(io.BytesIO(streams[0])) as im:
            return _crop(np.asarray(im.convert("RGB")), header)


class JPEGCodec(PillowImageCodec):
    """Baseline JPEG, 4:2:0, optimised Huffman tables."""

    name, codec_id, fmt = "jpeg", CODEC_IDS["jpeg"], "JPEG"
    save_options = {"optimize": True, "subsampling": "4:2:0"}
    default_params = (1, 3, 5, 8, 12, 18, 25, 35, 50, 70, 90)
    param_limits, integer_param = (1, 95), True


class WebPCodec(PillowImageCodec):
    """Lossy WebP (VP8 intra), slowest/best method."""

    name, codec_id, fmt = "webp", CODEC_IDS["webp"], "WEBP"
    save_options = {"method": 6}
    default_params = (0, 2, 5, 10, 20, 35, 50, 70, 85, 95)
    param_limits, integer_param = (0, 100), True


class HEVCImageCodec(ImageCodec):
    """HEVC intra (libx265), YUV 4:2:0 8-bit, BT.601 conversion, explicit QP."""

    name, codec_id, param_name = "hevc-image", CODEC_IDS["hevc-image"], "qp"
    default_params = (17, 22, 27, 32, 37, 41, 44, 47, 49, 51)
    param_limits, integer_param = (0, 51), True

    def __init__(self, task=None, preset: str = "medium"):
        super().__init__(task)
        self.preset = preset

    def encode_streams(self, image: np.ndarray, param: float) -> list[bytes]:
        import av  # PyAV is loaded when an anchor codes: importing the codecs stays light

        frame = av.VideoFrame.from_ndarray(_pad_even(image), format="rgb24").reformat(format="yuv420p")
        return [x265_encode(frame, int(param), self.preset)]

    def decode_streams(self, header, streams):
        return _crop(decode_picture(streams[0], "hevc").to_ndarray(format="rgb24"), header)


class VVCImageCodec(UsesVVCEncoder, ImageCodec):
    """VVC intra with an external encoder (vvencapp / VTM), decoded by PyAV's native VVC decoder."""

    name, codec_id, param_name = "vvc-image", CODEC_IDS["vvc-image"], "qp"
    default_params = (17, 22, 27, 32, 37, 41, 44, 47, 49, 51)
    param_limits, integer_param = (0, 63), True

    def __init__(self, task=None, encoder: VVCEncoder | None = None, vvc_encoder: str | None = None,
                 vvc_config: str | None = None, vvc_preset: str | None = None):  # fmt: skip
        super().__init__(task)
        self.init_encoder(encoder, vvc_encoder, vvc_config, vvc_preset)

    def encode_streams(self, image: np.ndarray, param: float) -> list[bytes]:
        padded = _pad_even(image)
        h, w = padded.shape[:2]
        import av

        yuv = av.VideoFrame.from_ndarray(padded, format="rgb24").reformat(format="yuv420p").to_ndarray()
        return [self.encoder.encode(yuv, w, h, int(param), "420", 8)]

    def decode_streams(self, header, streams):
        return _crop(decode_picture(streams[0], "vvc").to_ndarray(format="rgb24"), header)
