"""Codec registry: anchors and learned codecs behind one interface (``create_codec(name, task)``)."""

from __future__ import annotations

from mutualfc.codecs.base import Codec
from mutualfc.errors import MutualFCError


def _registry() -> dict[str, type[Codec]]:
    from mutualfc.anchors import (
        HEVCFeatureCodec,
        HEVCImageCodec,
        JPEGCodec,
        VVCFeatureCodec,
        VVCImageCodec,
        WebPCodec,
    )
    from mutualfc.codecs.learned import MutualCodec, SeparateCodec

    return {c.name: c for c in (JPEGCodec, WebPCodec, HEVCImageCodec, VVCImageCodec, HEVCFeatureCodec,
                                VVCFeatureCodec, MutualCodec, SeparateCodec)}  # fmt: skip


def list_codecs() -> list[str]:
    return ["none", *_registry()]


def create_codec(name: str, task=None, **options) -> Codec:
    """Build a codec by name; ``options`` go to its constructor when it takes them (e.g. ``vvc_encoder``)."""
    reg = _registry()
    if name not in reg:
        raise MutualFCError(f"unknown codec {name!r}; choose from {', '.join(list_codecs())}")
    cls = reg[name]
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(task, **{k: v for k, v in options.items() if k in accepted and v is not None})


__all__ = ["Codec", "create_codec", "list_codecs"]
