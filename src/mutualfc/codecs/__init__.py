"""Codecs behind one interface (``create_codec(name, task)``): the reference codecs (anchors) and the learned ones.
Their ids live in ``mutualfc.registry``; every id there has exactly one codec here."""

from __future__ import annotations

import inspect

from mutualfc.codecs.anchors import (
    HEVCFeatureCodec,
    HEVCImageCodec,
    JPEGCodec,
    VVCFeatureCodec,
    VVCImageCodec,
    WebPCodec,
)
from mutualfc.codecs.base import Codec, FeatureCodec, ImageCodec
from mutualfc.codecs.learned import LearnedFeatureCodec, MutualCodec, MutualFastCodec, SeparateCodec
from mutualfc.errors import MutualFCError
from mutualfc.registry import CODEC_IDS

CODECS: dict[str, type[Codec]] = {
    c.name: c
    for c in (JPEGCodec, WebPCodec, HEVCImageCodec, VVCImageCodec, HEVCFeatureCodec, VVCFeatureCodec, MutualCodec,
              SeparateCodec, MutualFastCodec)
}  # fmt: skip
if {n: c.codec_id for n, c in CODECS.items()} != CODEC_IDS:
    raise ImportError("mutualfc.registry.CODEC_IDS and the codec classes disagree")


def list_codecs() -> list[str]:
    return ["none", *CODECS]


def codec_class(name: str) -> type[Codec]:
    if name not in CODECS:
        raise MutualFCError(f"unknown codec {name!r}; choose from {', '.join(list_codecs())}")
    return CODECS[name]


def codec_options_of(name: str) -> list[str]:
    """The options ``name``'s constructor takes (besides the task)."""
    params = inspect.signature(codec_class(name).__init__).parameters
    return [k for k in params if k not in ("self", "task")]


def create_codec(name: str, task=None, **options) -> Codec:
    """Build a codec by name with its options (e.g. ``vvc_encoder``; None means the default). An option the codec
    does not take is a one-line error naming the ones it does: a misspelt option must not be ignored."""
    accepted = codec_options_of(name)
    unknown = sorted(k for k, v in options.items() if k not in accepted and v is not None)
    if unknown:
        known = ", ".join(accepted) or "none"
        raise MutualFCError(f"codec {name!r} takes no option {', '.join(map(repr, unknown))} (its options: {known})")
    return codec_class(name)(task, **{k: v for k, v in options.items() if v is not None})


__all__ = ["CODECS", "Codec", "FeatureCodec", "ImageCodec", "LearnedFeatureCodec", "codec_class", "codec_options_of",
           "create_codec",
           "list_codecs"]  # fmt: skip
