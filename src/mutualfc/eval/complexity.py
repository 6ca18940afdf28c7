"""Complexity in MPEG's feature-coding units: multiply-accumulates per original-image pixel (kMAC/px) of the four
parts of a split pipeline (the network's front half, feature reduction = the codec's encoder, feature restoration =
its decoder, the back half), and the entropy coder's symbols per pixel.

MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; a MAC is two
flops). That includes the exact integer decoding path: its products are counted as float64 matrix products, each
one a MAC (the int8 digit products that compute the large ones elsewhere are one implementation of the same MACs).
Element-wise work (activations, rounding, tables) is not counted, as MPEG's kMAC figures leave it out. External
codecs (x265, VVenC, libjpeg, libwebp) run outside torch: their parts are reported as not counted (None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from torch.utils.flop_counter import FlopCounterMode

from mutualfc.entropy import count_symbols
from mutualfc.nn.intgemm import float64_products
from mutualfc.tasks.base import FeatureSet

PARTS = ("front", "encoder", "decoder", "back")


@dataclass
class Complexity:
    """kMAC per original-image pixel of each part (None: not counted, an external codec), symbols per pixel (None
    where the entropy coder is not ours), over ``images`` images of ``pixels`` pixels in all."""

    front: float | None
    encoder: float | None
    decoder: float | None
    back: float | None
    symbols_per_pixel: float | None
    images: int
    pixels: int

    @property
    def total(self) -> float:
        return sum(v for v in (self.front, self.encoder, self.decoder, self.back) if v is not None)

    def to_dict(self) -> dict:
        out = asdict(self)
        for k in (*PARTS, "symbols_per_pixel"):
            out[k] = None if out[k] is None else round(out[k], 4)
        return out | {"total": round(self.total, 4)}


def count_macs(fn: Callable, *args):
    """-> (``fn(*args)``, the multiply-accumulates it ran in torch)."""
    with float64_products(), FlopCounterMode(display=False) as counter:  # the layers' MACs, not their digit products
        out = fn(*args)
    return out, counter.get_total_flops() // 2


def measure(task, codec, param: float | None, images: list[np.ndarray]) -> Complexity:
    """Run each image through ``task`` and ``codec`` (None: uncompressed) part by part and count each part. For an
    image codec the network runs whole on the server, after decoding; its halves are still counted apart."""
    if codec is not None and images:  # one-time work (integer weights, tables) is not per-image work
        codec.decode(codec.encode(codec.prepare(images[0]), param))
    macs = dict.fromkeys(PARTS, 0)
    symbols, pixels, counted = 0, 0, {"encoder": True, "decoder": True, "symbols": True}
    for image in images:
        pixels += image.shape[0] * image.shape[1]
        if codec is None or codec.domain == "image":
            decoded = image
            if codec is not None:
                data, m_enc = count_macs(codec.encode, codec.prepare(image), param)
                decoded, m_dec = count_macs(codec.decode, data)
                # an external codec runs no torch products: nothing counted is not zero work
                counted["encoder"] &= m_enc > 0
                counted["decoder"] &= m_dec > 0
                counted["symbols"] = False
                macs["encoder"] += m_enc
                macs["decoder"] += m_dec
            features, m = count_macs(task.front, decoded)
            macs["front"] += m
            _, m = count_macs(task.back, features)
            macs["back"] += m
            continue
        features, m = count_macs(codec.prepare, image)
        macs["front"] += m
        data, m = count_macs(codec.encode, features, param)
        macs["encoder"] += m
        with count_symbols() as n:
            decoded, m = count_macs(codec.decode, data)
        macs["decoder"] += m
        if n.value == 0:  # a codec whose payload is not our rANS (an external feature codec)
            counted["symbols"] = False
        counted["encoder"] &= macs["encoder"] > 0
        counted["decoder"] &= macs["decoder"] > 0
        symbols += n.value
        assert isinstance(decoded, FeatureSet)
        _, m = count_macs(task.back, decoded)
        macs["back"] += m
    if codec is None:
        counted = {"encoder": False, "decoder": False, "symbols": False}

    def per_pixel(part: str) -> float | None:
        if part in ("encoder", "decoder") and not counted[part]:
            return None
        return macs[part] / max(pixels, 1) / 1000

    return Complexity(per_pixel("front"), per_pixel("encoder"), per_pixel("decoder"), per_pixel("back"),
                      symbols / max(pixels, 1) if counted["symbols"] else None, len(images), pixels)  # fmt: skip
