"""Reading user images: one rule for every command.

Every image becomes H x W x 3 uint8 RGB (Pillow's ``convert("RGB")``): grayscale is replicated to three channels,
palette images are expanded, CMYK is converted, and an alpha channel is dropped (the colour under a transparent pixel
is kept as stored; the detector never sees transparency). High-bit-depth grayscale (16-bit ``I;16``, 32-bit ``I``,
float ``F``) is scaled to 8 bits by its nominal range (0..65535, or 0..1 for floats), or stretched from its own
minimum to maximum where its values leave that range or the nominal scaling would flatten a non-constant image;
Pillow's own conversion would clip it to white or black. Non-finite values are refused.
``exif_transpose`` applies the EXIF orientation tag, so a
phone photo stored sideways is seen upright; COCO evaluation keeps the stored pixel order, which its annotations use.
Pillow refuses images over its decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS`` x 2, about 179 megapixels);
``MUTUALFC_MAX_IMAGE_PIXELS`` raises or lowers that limit.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mutualfc.errors import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow warns above this and refuses above twice this


def max_image_pixels() -> int:
    """The largest image (in pixels) that is read: twice ``MUTUALFC_MAX_IMAGE_PIXELS`` (default Pillow's limit)."""
    value = os.environ.get("MUTUALFC_MAX_IMAGE_PIXELS")
    try:
        return 2 * int(value) if value else 2 * DEFAULT_MAX_PIXELS
    except ValueError:
        raise DatasetError(f"MUTUALFC_MAX_IMAGE_PIXELS must be a whole number, got {value!r}") from None


def load_image(path: str | Path, exif_transpose: bool = False) -> np.ndarray:
    """Decode an image file to H x W x 3 uint8 RGB (the conversion rule above); ``exif_transpose`` applies the EXIF
    orientation (off by default: stored pixel order, as COCO annotations assume)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image not found: {path}")
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > limit:
                    raise DatasetError(
                        f"{path}: {im.width}x{im.height} = {im.width * im.height} pixels is over the limit of {limit} "
                        f"(decompression-bomb guard); set MUTUALFC_MAX_IMAGE_PIXELS to half the pixels you allow"
                    )
                if exif_transpose:
                    im = ImageOps.exif_transpose(im)
                if im.mode in HIGH_DEPTH_MODES:
                    return to_rgb8(np.asarray(im), path)
                return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{path}: {e}; set MUTUALFC_MAX_IMAGE_PIXELS to raise the limit") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}") from None


HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def to_rgb8(values: np.ndarray, path: str | Path = "image") -> np.ndarray:
    """A high-bit-depth grayscale array -> H x W x 3 uint8 (the rule in the module docstring)."""
    x = values.astype(np.float64)
    if not np.isfinite(x).all():
        raise DatasetError(f"{path}: the image holds values that are not finite (NaN or infinity)")
    top = 1.0 if values.dtype.kind == "f" else 65535.0
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, top)
    scaled = np.rint(x * (255.0 / top))
    if hi > lo and (lo < 0 or hi > top or scaled.min() == scaled.max()):  # constant: clipped to the range
        scaled = np.rint((x - lo) * (255.0 / (hi - lo)))
    gray = np.clip(scaled, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def check_image(image: object, what: str = "image") -> np.ndarray:
    """``image`` if it is what the codecs take, an H x W x 3 uint8 array (``load_image`` gives one); else a one-line
    error saying what it is."""
    if not isinstance(image, np.ndarray):
        raise DatasetError(f"{what}: expected an H x W x 3 uint8 numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise DatasetError(
            f"{what}: expected an H x W x 3 uint8 array (RGB, as load_image gives), got shape {image.shape} "
            f"{image.dtype}"
        )
    return image


def image_files(folder: str | Path, fold: tuple[int, int] | None = None, leave_out: bool = False) -> list[Path]:
    """The images of ``folder`` in name order; with ``fold`` (k, n) only every n-th one from the k-th (a split that
    does not depend on the file system's order), or with ``leave_out`` all the others."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if fold is not None:
        k, n = fold
        files = [p for i, p in enumerate(files) if (i % n == k) != leave_out]
    if not files:
        raise DatasetError(f"no images in {root}" + (f" for fold {fold[0]}/{fold[1]}" if fold else ""))
    return files


def parse_fold(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise DatasetError(f"a fold is K/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= k < n:
        raise DatasetError(f"a fold K/N needs 0 <= K < N, got {text!r}")
    return k, n
