"""The optional residual stream that refines the finest predicted level, coded conditionally on the decoded base."""

from __future__ import annotations

import torch
from compressai.latent_codecs import GaussianConditionalLatentCodec
from torch import nn

from mutualfc.entropy import SymbolCoder, SymbolReader, SymbolWriter, code_gaussian
from mutualfc.latent_codecs import MaskedParams
from mutualfc.models.config import MutualConfig
from mutualfc.models.gain import INV_GAIN_BITS, GainUnit
from mutualfc.nn import exact
from mutualfc.nn.closed_form import sample_rows, set_pca
from mutualfc.nn.layers import conv
from mutualfc.nn.packing import LevelPacker
from mutualfc.nn.sparse import stack_at


class ResidualCoder(nn.Module):
    """The prediction error of the finest level (packed to the coarsest resolution) projected on its principal
    components; its Gaussian (mean, scale) comes from the decoded base's context, so it needs no side information."""

    def __init__(self, cfg: MutualConfig, level: str):
        super().__init__()
        n, r = cfg.width, cfg.residual
        self.level = level
        self.pack = LevelPacker(names=(level,), **cfg.packer_args())
        c = self.pack.channels
        self.lin_a = conv(c, r, 1)
        self.lin_s = conv(r, c, 1)
        ep = MaskedParams(conv(n, 96, 1), nn.GELU(), conv(96, 96, 3), nn.GELU(), conv(96, 2 * r, 1))
        self.codec = GaussianConditionalLatentCodec(quantizer="ste", entropy_parameters=ep)
        self.gain = GainUnit(cfg.qualities, r, *cfg.gains)

    def code(self, coder: SymbolCoder, r: torch.Tensor | None, context: torch.Tensor, kept: torch.Tensor):
        """Codes (``SymbolWriter``, ``r`` given) or decodes (``SymbolReader``) the residual latent at the cells
        ``kept``; ``r`` and the result are (channels, K), one column per cell. The entropy parameters are evaluated
        at those cells only (where the mask channel they expect is 1)."""
        if not kept.numel():
            return context.new_zeros(self.lin_a.out_channels, 0)
        params = stack_at(self.codec.entropy_parameters, context, kept)
        return code_gaussian(coder, self.codec, r, params)

    def compress(self, r: torch.Tensor, context: torch.Tensor, kept: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        """-> the residual stream and the decoded latent columns (what ``decompress`` returns)."""
        writer = SymbolWriter()
        r_hat = self.code(writer, r, context, kept)
        return writer.finish(), r_hat

    def decompress(self, string: bytes, context: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        return self.code(SymbolReader(string), None, context, kept)

    def correction_cells(self, r_hat: torch.Tensor, quality: float, bits: int) -> torch.Tensor:
        """Decoded residual latent columns (fixed point, ``ACT_BITS``) -> the correction of the finest level in the
        packed codec space (fixed point, ``bits``), column 0 (skipped cells: no residual) first; exactly."""
        r = torch.cat([r_hat.new_zeros(r_hat.shape[0], 1), r_hat], 1)
        r = exact.rescale(r, self.gain.inverse_fixed(quality), exact.ACT_BITS + INV_GAIN_BITS - bits)
        return exact.wide_linear(exact.wide_params(self.lin_s, bits), r)

    def init_from_data(self, d: torch.Tensor, samples: int) -> None:
        set_pca(self.lin_a, self.lin_s, sample_rows(d, samples, seed=2))
