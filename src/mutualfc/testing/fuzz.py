"""Fuzzing the decoders: valid containers of every codec, mutated (and, for most cases, given a correct CRC again so
that the payload decoders, not only the checksum, see the damage), decoded, and every outcome classified.

Outcomes: ``decoded`` (finite output), ``refused`` (one of mutualfc's own errors: a clean refusal), ``crash`` (any
other exception), ``non_finite`` (output with NaN or infinity), ``hang`` (over the time limit; counted by the runner
that watches the process, see ``benchmarks/fuzz.py``).
"""

from __future__ import annotations

import random
import struct
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mutualfc import bitstream
from mutualfc.codecs import Codec
from mutualfc.errors import MutualFCError
from mutualfc.tasks.base import FeatureSet

OUTCOMES = ("decoded", "refused", "crash", "non_finite", "hang")


def with_crc(data: bytes) -> bytes:
    """``data`` with its trailing CRC-32 recomputed over everything before it."""
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4])) if len(data) >= 4 else data


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation of a container; about 85% of them get a valid CRC back."""
    if len(data) < 32:  # what earlier mutations left of a container: grow it again
        return data + rng.randbytes(rng.randint(1, 64))
    b = bytearray(data)
    start = bitstream.payload_offset(data)  # payload mutations are the interesting ones: most stay after the header
    kind = rng.randrange(10)
    lo = start if (kind < 7 and start < len(b) - 5) else 0
    if kind in (0, 1, 2):  # bit flips
        for _ in range(rng.choice((1, 1, 2, 4, 16, 64))):
            b[rng.randrange(lo, len(b) - 4)] ^= 1 << rng.randrange(8)
    elif kind == 3:  # random bytes over a span
        i = rng.randrange(lo, len(b) - 4)
        n = min(rng.randint(1, 64), len(b) - 4 - i)
        b[i : i + n] = rng.randbytes(n)
    elif kind == 4:  # a run of one byte value (0x00 / 0xFF runs stress the rANS state and escape codes)
        i = rng.randrange(lo, len(b) - 4)
        n = min(rng.randint(1, 512), len(b) - 4 - i)
        b[i : i + n] = bytes([rng.choice((0, 0xFF, rng.randrange(256)))]) * n
    elif kind == 5:  # insert or delete bytes in the payload (stream lengths then disagree)
        i = rng.randrange(lo, len(b) - 4)
        if rng.random() < 0.5:
            b[i:i] = rng.randbytes(rng.randint(1, 32))
        else:
            del b[i : i + rng.randint(1, 32)]
    elif kind == 6:  # truncate
        b = b[: rng.randint(1, len(b) - 1)] + b[-4:]
    elif kind == 7:  # header fields: image size, parameter, stream count, lengths
        i = rng.randrange(3, max(4, min(start, len(b) - 4)))
        b[i] = rng.randrange(256)
    elif kind == 8:  # another codec's id on this payload
        b[4] = rng.choice((1, 2, 3, 4, 5, 6, 16, 17, rng.randrange(256)))
    else:  # unchanged payload, damaged checksum
        b[-1] ^= 1 << rng.randrange(8)
        return bytes(b)
    return bytes(with_crc(bytes(b))) if rng.random() < 0.85 else bytes(b)


def is_finite(out) -> bool:
    if isinstance(out, FeatureSet):
        return all(bool(torch.isfinite(t).all()) for t in out.levels.values())
    return bool(np.isfinite(np.asarray(out, dtype=np.float64)).all())


@dataclass
class Case:
    index: int
    seed: str  # which valid container it came from
    data: bytes


def cases(seeds: dict[str, bytes], n: int, start: int = 0, seed: int = 0) -> Iterator[Case]:
    """``n`` mutated containers, deterministic in (``seed``, index): case ``i`` is the same in every run."""
    names = sorted(seeds)
    for i in range(start, start + n):
        rng = random.Random(seed * 1_000_003 + i)
        name = names[i % len(names)]
        data = seeds[name]
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            data = mutate(data, rng)
        yield Case(i, name, data)


def decode_case(decoders: dict[int, Codec], data: bytes) -> tuple[str, str]:
    """-> (outcome, detail) of decoding ``data`` with the codec its header names (``decoders``: by codec id)."""
    try:
        header, _ = bitstream.unpack(data)
        codec = decoders.get(header.codec_id)
        if codec is None:
            return "refused", f"unknown codec id {header.codec_id}"
        out = codec.decode(data)
    except MutualFCError as e:
        return "refused", str(e).splitlines()[0] if str(e) else type(e).__name__
    except Exception as e:  # noqa: BLE001 - this is what the fuzzer looks for
        return "crash", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    return ("decoded", "") if is_finite(out) else ("non_finite", "decoded output is not finite")


SEED_SETTINGS: tuple[tuple[str, str, float, dict], ...] = (
    ("mutual-q0", "mutual", 0, {}),
    ("mutual-q2.5-noskip", "mutual", 2.5, {"skip_below": 0}),
    ("mutual-q4", "mutual", 4, {}),
    ("mutual-q7.5", "mutual", 7.5, {}),  # a second tier in the mask stream, the residual's cells in a fourth stream
    ("mutual-q8", "mutual", 8, {}),  # residual stream on, lower skip threshold
    ("separate-q4", "separate", 4, {}),
    ("hevc-feature-qp30", "hevc-feature", 30, {}),
    ("jpeg-q50", "jpeg", 50, {}),
    ("webp-q50", "webp", 50, {}),
    ("hevc-image-qp37", "hevc-image", 37, {}),
    ("vvc-image-qp37", "vvc-image", 37, {"vvc_preset": "faster"}),
    ("vvc-feature-qp30", "vvc-feature", 30, {"vvc_preset": "faster"}),
)


def build_seeds(task, images: list[np.ndarray], vvc_encoder: str | None = None) -> tuple[dict, dict]:
    """Valid containers of every codec for each image (VVC ones only with an encoder) -> (seeds by name, decoders
    by codec id)."""
    from mutualfc.codecs import create_codec

    seeds, decoders = {}, {}
    for name, codec_name, param, options in SEED_SETTINGS:
        if codec_name.startswith("vvc") and not vvc_encoder:
            continue
        vvc = {"vvc_encoder": vvc_encoder} if codec_name.startswith("vvc") else {}
        codec = create_codec(codec_name, task, **options, **vvc)
        decoders[codec.codec_id] = codec
        for i, image in enumerate(images):
            seeds[f"{name}#{i}"] = codec.encode(codec.prepare(image), param)
    return seeds, decoders
