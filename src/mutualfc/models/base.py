"""What the mutual and the separate network share: CompressAI's ``CompressionModel`` (``update()``, entropy-table
loading, ``aux_loss()``), the skip mask and its stream, padding to whole hyper-latent cells, and stream guards."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from compressai.models.utils import update_registered_buffers

from mutualfc.models.config import MutualConfig

ENTROPY_TABLES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def is_entropy_table(key: str) -> bool:
    """Whether a state-dict key is an entropy coder's table buffer (rebuilt by ``update()``, not a weight)."""
    return key.endswith(ENTROPY_TABLES)


def pack_bits(flags: torch.Tensor) -> bytes:
    """Boolean flags (any shape, raster order) -> one bit each, most significant first (numpy ``packbits``)."""
    return np.packbits(flags.cpu().numpy().astype(bool).ravel()).tobytes()


def unpack_bits(data: bytes, count: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``count`` flags of ``data`` as a (count,) bool tensor."""
    return torch.from_numpy(np.unpackbits(np.frombuffer(data, np.uint8), count=count).astype(bool))


def encode_mask(keep: torch.Tensor | None) -> bytes:
    """Skip mask stream: the coarsest level's keep map, one bit per cell in raster order (numpy ``packbits``); empty
    when every cell is coded."""
    if keep is None or bool(keep.all()):
        return b""
    return pack_bits(keep[0, 0])


def decode_mask(data: bytes, size: tuple[int, int]) -> torch.Tensor | None:
    """Inverse of ``encode_mask`` for a coarsest level of ``size``; ValueError if the length does not fit."""
    if not data:
        return None
    h, w = size
    if len(data) != (h * w + 7) // 8:
        raise ValueError(f"skip mask of {len(data)} bytes does not fit a {h}x{w} map")
    return unpack_bits(data, h * w).view(1, 1, h, w)


TIER_STEP = 8  # the low tier's quality is the image's minus (its byte) / TIER_STEP


def encode_tiers(keep: torch.Tensor | None, size: tuple[int, int], low: torch.Tensor, step: int) -> bytes:
    """A skip-mask stream with a second, coarser tier: the keep map's bytes (written even when every cell is kept),
    one byte ``step`` (the low tier's quality is the image's minus step / ``TIER_STEP``), then which kept cells
    (``low``: (K,) bool over them in raster order) are coded at that quality (numpy ``packbits``)."""
    if not 1 <= step <= 255:
        raise ValueError(f"tier step {step} outside 1..255")
    keep = torch.ones(1, 1, *size, dtype=torch.bool) if keep is None else keep
    return pack_bits(keep[0, 0]) + bytes([step]) + pack_bits(low)


def decode_tiers(data: bytes, size: tuple[int, int]) -> tuple[torch.Tensor | None, int, torch.Tensor | None]:
    """Inverse of ``encode_mask`` / ``encode_tiers`` -> (keep map or None, tier step or 0, indices of the low
    tier's cells among the kept ones or None); ValueError if the stream does not fit."""
    h, w = size
    n = (h * w + 7) // 8
    if len(data) <= n:
        return decode_mask(data, size), 0, None
    keep = decode_mask(data[:n], size)
    k = int(keep.sum())
    step, bits = data[n], data[n + 1 :]
    if not step or len(bits) != (k + 7) // 8:
        raise ValueError(f"skip mask with tiers of {len(data)} bytes does not fit a {h}x{w} map")
    return keep, step, unpack_bits(bits, k).nonzero().squeeze(1)


class FeatureCompressionModel(CompressionModel):
    """Base of the learned feature codecs' networks: ``forward`` for training, ``compress`` / ``decompress`` for
    real bits (call ``update()`` first, or load a checkpoint that carries the tables). ``decompress`` returns
    finite levels or raises ValueError (``LevelPacker.paint_fixed`` checks them as it writes them)."""

    pad_multiple = 2  # at the coarsest level, so that the hyper-latent (/2) tiles the latent exactly
    has_tiers = False  # whether ``compress`` can code some kept cells at a lower quality (``encode_tiers``)
    latent_count = 1  # BFCNet latents per image (the separate network has one per level)
    cfg: MutualConfig

    def load_state_dict(self, state_dict: dict, strict: bool = True):
        """CompressAI's loading, except that table buffers the state holds are resized to it even when they were
        built already (a checkpoint's stored tables are used as they are), and tables it does not hold are kept."""
        for name, module in self.named_modules():
            if isinstance(module, (EntropyBottleneck, GaussianConditional)):
                present = [b for b in ENTROPY_TABLES if f"{name}.{b}" in state_dict and hasattr(module, b)]
                update_registered_buffers(module, name, present, state_dict, policy="resize")
        return super(CompressionModel, self).load_state_dict(state_dict, strict=strict)

    def padded(self, size: tuple[int, int]) -> tuple[int, int]:
        h, w = size
        return h + (-h % self.pad_multiple), w + (-w % self.pad_multiple)

    def coded_mask(
        self, keep: torch.Tensor | None, size: tuple[int, int], batch: int = 1, device: torch.device | None = None
    ) -> torch.Tensor:
        """-> (batch, 1, Hp, Wp) float mask of the coded latent cells: ``keep`` ((B, 1, H, W) at the coarsest level,
        None = all) zero-padded to the latent's size (padding is never coded)."""
        h, w = size
        hp, wp = self.padded(size)
        k = torch.ones(batch, 1, h, w, device=device) if keep is None else keep.float().expand(batch, 1, h, w)
        return F.pad(k, (0, wp - w, 0, hp - h))

    @property
    def has_residual(self) -> bool:
        """Whether the network can send a residual stream (the mutual network's ``res``; none elsewhere)."""
        return getattr(self, "res", None) is not None

    def stream_count(self, residual: bool = False) -> int:
        """Streams of one coded image: the skip mask, one rANS stream per latent, then the residual stream if sent."""
        return 1 + self.latent_count + int(residual)
