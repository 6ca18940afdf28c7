"""The mutualfc container: one file per image, every byte of it counted in bpp (spec: docs/bitstream.md)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from mutualfc.errors import BitstreamError

MAGIC = b"MFC"
# 2: learned codecs' payloads start with the skip mask; 3: one rANS stream per latent; 4: learned codecs' entropy
# parameters computed at the coded cells only (other float summation order) and floor-scale latents not coded;
# 5: learned codecs decode in exact integer arithmetic (fixed-point entropy models, synthesis and prediction);
# 6: a channel context's last 1x1 layer and the entropy parameters' first compose into one exact layer
VERSION = 6
_FIXED = struct.Struct("<3sBBBeIHHB")  # magic, version, codec id, task id, param (f16), model tag, w, h, n streams
MAX_STREAMS = 64
MAX_SIDE = 16384


@dataclass(frozen=True)
class Header:
    codec_id: int
    task_id: int
    param: float
    model_tag: int
    width: int
    height: int


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 35:
            raise BitstreamError("truncated or corrupt stream length field")
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if not b & 0x80:
            return value, pos


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Header + stream lengths + payloads + CRC-32 of all that precedes it."""
    if not 0 < len(streams) <= MAX_STREAMS:
        raise ValueError(f"need 1..{MAX_STREAMS} streams, got {len(streams)}")
    if not (1 <= header.width <= MAX_SIDE and 1 <= header.height <= MAX_SIDE):  # what unpack accepts, no more
        raise ValueError(f"image size {header.width}x{header.height} outside 1..{MAX_SIDE} per side")
    param16 = float(np.float16(header.param))
    if param16 != header.param:
        raise ValueError(f"parameter {header.param} is not representable in the container (float16)")
    body = bytearray(
        _FIXED.pack(
            MAGIC,
            VERSION,
            header.codec_id,
            header.task_id,
            header.param,
            header.model_tag & 0xFFFFFFFF,
            header.width,
            header.height,
            len(streams),
        )
    )
    for s in streams:
        body += _varint(len(s))
    for s in streams:
        body += s
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def payload_offset(data: bytes) -> int:
    """Where the payloads begin (after the fixed header and the stream-length fields), read leniently from possibly
    damaged data: ``len(data)`` when the header is cut short. For tools that need to tell header from payload."""
    if len(data) < _FIXED.size:
        return len(data)
    pos = _FIXED.size
    for _ in range(data[_FIXED.size - 1]):
        while pos < len(data) and data[pos] & 0x80:
            pos += 1
        pos += 1
    return min(pos, len(data))


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Validate and split a container; raise ``BitstreamError`` with a one-line reason on any damage."""
    if len(data) < 3 or data[:3] != MAGIC:
        raise BitstreamError("not a mutualfc bitstream (bad magic)")
    if len(data) < _FIXED.size + 4:
        raise BitstreamError(f"truncated bitstream ({len(data)} bytes)")
    magic, version, codec_id, task_id, param, tag, w, h, n = _FIXED.unpack_from(data)
    if version != VERSION:
        raise BitstreamError(f"unsupported bitstream version {version} (this mutualfc reads version {VERSION})")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise BitstreamError("bitstream is damaged or truncated (checksum mismatch)")
    if not 0 < n <= MAX_STREAMS or not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise BitstreamError("corrupt bitstream header")
    pos, lengths = _FIXED.size, []
    for _ in range(n):
        length, pos = _read_varint(data, pos)
        lengths.append(length)
    if pos + sum(lengths) != len(data) - 4:
        raise BitstreamError("stream lengths do not match the bitstream size")
    streams = []
    for length in lengths:
        streams.append(bytes(data[pos : pos + length]))
        pos += length
    return Header(codec_id, task_id, float(param), tag, w, h), streams


def overhead_bytes(n_streams: int, stream_lengths: list[int] | None = None) -> int:
    """Container bytes around the payloads (for reporting)."""
    lengths = stream_lengths or [0] * n_streams
    return _FIXED.size + sum(len(_varint(x)) for x in lengths) + 4
