"""Property: any image file a user may hand us is either coded into a container the decoder accepts, or refused with
one ``MutualFCError`` line; never a file the decoder rejects, never a constant picture from a non-constant input."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mutualfc import bitstream
from mutualfc.codecs import create_codec
from mutualfc.errors import MutualFCError
from mutualfc.images import load_image
from mutualfc.pipeline import Encoder

PIXEL_BUDGET = 60_000  # per example: sides up to 20,000 px, but thin
MODES = ["L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
SAVE_AS = {"L": "PNG", "LA": "PNG", "P": "PNG", "RGB": "JPEG", "RGBA": "PNG", "CMYK": "TIFF", "I;16": "PNG",
           "I": "TIFF", "F": "TIFF"}  # fmt: skip


def _pixels(mode: str, h: int, w: int, rng: np.random.Generator, flat: bool) -> Image.Image:
    """A random (or, with ``flat``, constant) image of ``mode``."""

    def draw(shape, lo, hi, dtype):
        return np.full(shape, lo, dtype) if flat else rng.integers(lo, hi, shape, endpoint=True).astype(dtype)

    if mode == "F":
        x = np.zeros((h, w), np.float32) if flat else rng.normal(size=(h, w)).astype(np.float32) * 1000
        return Image.fromarray(x, "F")
    if mode == "I":
        return Image.fromarray(draw((h, w), -70_000, 70_000, np.int32), "I")
    if mode == "I;16":
        return Image.fromarray(draw((h, w), 0, 65535, np.uint16))
    channels = {"L": 1, "LA": 2, "P": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    x = draw((h, w, channels), 0, 255, np.uint8)
    if mode == "P":
        im = Image.fromarray(x[..., 0], "L").convert("P")  # identity palette: distinct indexes, distinct greys
        return im
    if mode == "CMYK":
        return Image.frombytes("CMYK", (w, h), x.tobytes())
    return Image.fromarray(x if channels > 1 else x[..., 0], mode)


def _colour_varies(im: Image.Image) -> bool:
    """Whether the visible content varies (alpha does not show; CMYK -> RGB is many-to-one, so only its own
    conversion can say)."""
    if im.mode in ("I;16", "I", "F"):
        a = np.asarray(im)
        return bool(a.min() != a.max())
    if im.mode == "CMYK":
        a = np.asarray(im.convert("RGB"))
    else:
        a = np.asarray(im)
        a = a[..., : (3 if im.mode in ("RGB", "RGBA") else 1)] if a.ndim == 3 else a
    return bool(a.min(axis=(0, 1)).tolist() != a.max(axis=(0, 1)).tolist())


@st.composite
def image_files(draw):
    mode = draw(st.sampled_from(MODES))
    long_side = draw(st.integers(1, 20_000))
    short_side = draw(st.integers(1, max(1, min(long_side, PIXEL_BUDGET // long_side))))
    h, w = (long_side, short_side) if draw(st.booleans()) else (short_side, long_side)
    flat = draw(st.booleans()) and draw(st.booleans())
    orientation = draw(st.sampled_from([None, 1, 3, 6, 8]))
    cut = draw(st.sampled_from([None, None, None, 0.0, 0.3, 0.9]))
    seed = draw(st.integers(0, 2**32 - 1))
    return mode, h, w, flat, orientation, cut, seed


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=image_files())
def test_any_image_is_coded_or_refused_with_one_line(tmp_path_factory, spec):
    mode, h, w, flat, orientation, cut, seed = spec
    im = _pixels(mode, h, w, np.random.default_rng(seed), flat)
    buf = io.BytesIO()
    kw = {}
    if orientation is not None and SAVE_AS[mode] in ("JPEG", "PNG"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    if SAVE_AS[mode] == "JPEG" and max(h, w) > 65_500:
        return
    im.save(buf, format=SAVE_AS[mode], **kw)
    data = buf.getvalue()
    if cut is not None:
        data = data[: int(len(data) * cut)]
    path = tmp_path_factory.mktemp("img") / f"x.{SAVE_AS[mode].lower()}"
    path.write_bytes(data)

    try:
        rgb = load_image(path, exif_transpose=orientation is not None)
    except MutualFCError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        assert cut is not None or mode in ("F",), f"an intact {mode} file refused: {e}"
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert sorted(rgb.shape[:2]) == sorted((h, w))
    if cut is None and _colour_varies(im):
        assert rgb.min() != rgb.max(), f"a non-constant {mode} image became constant"

    codec = create_codec("jpeg")
    try:
        container = Encoder(None, codec).encode(rgb, 50)
    except MutualFCError as e:
        assert "\n" not in str(e) and max(rgb.shape[:2]) > bitstream.MAX_SIDE, e
        return
    header, _ = bitstream.unpack(container)  # what the writer wrote, the reader accepts
    assert (header.height, header.width) == rgb.shape[:2]
    assert codec.decode(container).shape == rgb.shape
