"""Single-frame intra coding with real video codecs: libx265 through PyAV, VVC through an external encoder.

Both decoders are PyAV's (FFmpeg's native HEVC and VVC decoders), so every anchor bit is read back from the
bitstream that was written.
"""

from __future__ import annotations

import fractions
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mutualfc.errors import BitstreamError, EncoderError, EncoderNotFoundError

if TYPE_CHECKING:
    import av

X265_PRESET = "medium"


def x265_encode(frame: av.VideoFrame, qp: int, preset: str = X265_PRESET) -> bytes:
    """One intra picture at a fixed QP (no adaptive quantisation, no encoder-info SEI)."""
    if not 0 <= qp <= 51:
        raise ValueError(f"HEVC QP must be in 0..51, got {qp}")
    import av  # PyAV is loaded when an anchor codes: importing the codecs stays light

    ctx = av.CodecContext.create("libx265", "w")
    ctx.width, ctx.height, ctx.pix_fmt = frame.width, frame.height, frame.format.name
    ctx.time_base = fractions.Fraction(1, 1)
    params = (
        f"qp={int(qp)}:keyint=1:min-keyint=1:bframes=0:aq-mode=0:cutree=0:info=0:hash=0:frame-threads=1:log-level=error"
    )
    ctx.options = {"preset": preset, "x265-params": params}
    try:
        packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    except av.FFmpegError as e:  # e.g. a picture size x265 does not take
        raise EncoderError(f"libx265 cannot code a {frame.width}x{frame.height} picture: {e.strerror}") from None
    return b"".join(bytes(p) for p in packets)


def decode_picture(data: bytes, codec: str) -> av.VideoFrame:
    """Decode one picture from an Annex-B HEVC (``hevc``) or VVC (``vvc``) bitstream."""
    import av

    ctx = av.CodecContext.create(codec, "r")
    frames = []
    try:
        for packet in ctx.parse(data) + ctx.parse(None):
            frames += ctx.decode(packet)
        frames += ctx.decode(None)
    except av.FFmpegError as e:
        raise BitstreamError(f"{codec} decoder rejected the bitstream: {e}") from None
    if not frames:
        raise BitstreamError(f"{codec} bitstream holds no decodable picture")
    return frames[0]


def luma_samples(frame: av.VideoFrame) -> np.ndarray:
    """The decoded luma plane's samples as they are (H, W), uint16 for high bit depths: no colour conversion, which
    would rescale limited-range luma (a feature frame is data, not a picture)."""
    plane = frame.planes[0]
    dtype = np.dtype("<u2") if plane.line_size >= 2 * frame.width and "10" in frame.format.name else np.uint8
    rows = np.frombuffer(memoryview(plane), dtype).reshape(frame.height, -1)
    return rows[:, : frame.width].copy()


# ---------------------------------------------------------------------------------------------------------
# external VVC encoders
# ---------------------------------------------------------------------------------------------------------
@dataclass
class VVCEncoder:
    """An external VVC encoder binary: ``vvencapp`` (Fraunhofer VVenC) or VTM's ``EncoderApp``.

    Fixed ("true") QP, perceptual QP adaptation off, one intra picture. ``vvencapp`` runs its ``preset`` (``medium``
    is the reference; ``fast`` codes about 3-5 times faster at a few percent more rate) with intra QP offset, block
    importance and temporal filtering off, so that the picture is coded at the QP given. VTM needs its intra config
    file (``cfg/encoder_intra_vtm.cfg``), given as ``config``.
    """

    kind: str  # "vvenc" or "vtm"
    path: str
    config: str | None = None
    preset: str = "medium"
    threads: int = 1  # one picture per process: parallelism comes from coding several images at once
    extra: list[str] = field(default_factory=list)

    @classmethod
    def find(cls, path: str | None = None, config: str | None = None, preset: str | None = None) -> VVCEncoder:
        """Locate an encoder: explicit path, ``MUTUALFC_VVC_ENCODER``, then ``vvencapp``/``EncoderApp`` on PATH."""
        explicit = path or os.environ.get("MUTUALFC_VVC_ENCODER")
        for c in [explicit] if explicit else ["vvencapp", "EncoderApp"]:
            found = shutil.which(c)
            if found:
                kind = "vtm" if "encoderapp" in Path(found).name.lower() else "vvenc"
                return cls(kind, found, config or os.environ.get("MUTUALFC_VTM_CONFIG"), preset or "medium")
        raise EncoderNotFoundError(
            "no VVC encoder found: install vvencapp (Fraunhofer VVenC) or VTM EncoderApp and put it on PATH, "
            "or pass --vvc-encoder PATH (or set MUTUALFC_VVC_ENCODER)"
        )

    def command(self, yuv: str, out: str, width: int, height: int, qp: int, chroma: str, bit_depth: int) -> list[str]:
        """The command line that codes ``yuv`` (planar, little-endian when 10-bit) into ``out``."""
        if self.kind == "vvenc":
            if chroma not in ("420", "400"):
                raise ValueError(f"vvencapp reads 4:2:0 or 4:0:0 input, not {chroma}")
            fmt = f"yuv{chroma}" + ("_10" if bit_depth == 10 else "")
            return [
                self.path, "-i", yuv, "-s", f"{width}x{height}", "-c", fmt, "-r", "1", "-f", "1",
                "--qp", str(qp), "--qpa", "0", "--preset", self.preset, "--internal-bitdepth", "10",
                "-t", str(self.threads),
                # true QP for one intra picture: no intra QP offset, no block-importance QP changes, no temporal filter
                "--additional", "IntraQPOffset=0:BIM=0:MCTF=0",
                "-o", out, *self.extra,
            ]  # fmt: skip
        cmd = [self.path]
        if self.config:
            cmd += ["-c", self.config]
        cmd += [
            "-i", yuv, "-b", out, "-o", "", "-wdt", str(width), "-hgt", str(height), "-fr", "1", "-f", "1",
            "-q", str(qp), f"--InputBitDepth={bit_depth}", "--InternalBitDepth=10", "--OutputBitDepth=10",
            f"--InputChromaFormat={chroma}", f"--ChromaFormatIDC={chroma}", "--ConformanceWindowMode=1",
            *self.extra,
        ]  # fmt: skip
        return cmd

    def encode(self, planes: np.ndarray, width: int, height: int, qp: int, chroma: str, bit_depth: int) -> bytes:
        """``planes``: the raw planar YUV samples (uint8 or uint16), exactly as the encoder reads them."""
        with tempfile.TemporaryDirectory(prefix="mutualfc-vvc-") as d:
            yuv, out = os.path.join(d, "in.yuv"), os.path.join(d, "out.266")
            raw = planes.astype("<u2" if bit_depth > 8 else np.uint8)
            raw.tofile(yuv)
            cmd = self.command(yuv, out, width, height, qp, chroma, bit_depth)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise EncoderNotFoundError(f"VVC encoder {self.path} failed to run: {e}") from None
            if proc.returncode != 0 or not os.path.isfile(out):
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise EncoderNotFoundError(f"VVC encoder {self.path} failed (exit {proc.returncode}): {tail[0]}")
            return Path(out).read_bytes()


class UsesVVCEncoder:
    """For codecs that encode with an external VVC encoder: it is looked up when first needed, so that a decoder
    (FFmpeg's VVC decoder is built in) needs none."""

    def init_encoder(self, encoder: VVCEncoder | None, path: str | None, config: str | None, preset: str | None):
        self._encoder, self._encoder_args = encoder, (path, config, preset)

    @property
    def encoder(self) -> VVCEncoder:
        if self._encoder is None:
            self._encoder = VVCEncoder.find(*self._encoder_args)
        return self._encoder
