"""The optional residual stream that refines the finest predicted level, coded conditionally on the decoded base."""

from __future__ import annotations

import torch
from compressai.latent_codecs import GaussianConditionalLatentCodec
from torch import nn

from mutualfc.entropy import SymbolCoder, SymbolReader, SymbolWriter, code_gaussian, gaussian_bits, split_params
from mutualfc.latent_codecs import MaskedParams
from mutualfc.models.base import pack_bits, unpack_bits
from mutualfc.models.config import MutualConfig
from mutualfc.models.gain import INV_GAIN_BITS, GainUnit
from mutualfc.nn import exact
from mutualfc.nn.caching import cached
from mutualfc.nn.closed_form import sample_rows, set_pca
from mutualfc.nn.layers import conv
from mutualfc.nn.packing import LevelPacker
from mutualfc.nn.sparse import affine, dilated, radius, stack_at

MAX_BOOST = 8  # the residual stream's finest step: its quality's gains times 2 ** (MAX_BOOST / 2)


def encode_residual_info(boost: int, coded: torch.Tensor | None) -> bytes:
    """The residual stream's settings, when they are not the defaults: one byte ``boost`` (the residual gain is the
    quality's times 2 ** (boost / 2)), then which kept cells carry a residual (``coded``: (K,) bool over the kept
    cells in raster order, numpy ``packbits``; nothing when all of them do). Empty for the defaults."""
    every = coded is None or bool(coded.all())
    if not boost and every:
        return b""
    return bytes([boost]) + (b"" if every else pack_bits(coded))


def decode_residual_info(data: bytes, kept: int) -> tuple[int, torch.Tensor | None]:
    """Inverse of ``encode_residual_info`` for ``kept`` kept cells -> (boost, indices of the residual's cells among
    the kept ones, None for all); ValueError if the stream does not fit."""
    if not data:
        return 0, None
    boost, bits = data[0], data[1:]
    if boost > MAX_BOOST:
        raise ValueError(f"residual gain boost {boost} outside 0..{MAX_BOOST}")
    if not bits:
        return boost, None
    if len(bits) != (kept + 7) // 8:
        raise ValueError(f"residual cell map of {len(bits)} bytes does not fit {kept} kept cells")
    return boost, unpack_bits(bits, kept).nonzero().squeeze(1)


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

    def entropy_params(self, context: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """The residual latent's Gaussians at the cells ``kept`` ((2 * channels, K), fixed point), from the base's
        context, evaluated at those cells only (where the mask channel they expect is 1)."""
        if not kept.numel():
            return context.new_zeros(2 * self.lin_a.out_channels, 0)
        return stack_at(self.codec.entropy_parameters, context, kept)

    def context_positions(self, kept: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Where ``entropy_params`` at the cells ``kept`` reads its context map (of ``size``)."""
        return dilated(kept, size, radius(self.codec.entropy_parameters))

    def code(self, coder: SymbolCoder, r: torch.Tensor | None, params: torch.Tensor) -> torch.Tensor:
        """Codes (``SymbolWriter``, ``r`` given) or decodes (``SymbolReader``) the residual latent with the Gaussians
        ``params`` (``entropy_params``); ``r`` and the result are (channels, K), one column per cell."""
        if not params.shape[1]:
            return params.new_zeros(self.lin_a.out_channels, 0)
        return code_gaussian(coder, self.codec, r, params)

    def compress(self, r: torch.Tensor, params: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        """-> the residual stream and the decoded latent columns (what ``decompress`` returns)."""
        writer = SymbolWriter()
        r_hat = self.code(writer, r, params)
        return writer.finish(), r_hat

    def decompress(self, string: bytes, params: torch.Tensor) -> torch.Tensor:
        return self.code(SymbolReader(string), None, params)

    def worth(
        self, r: torch.Tensor, d: torch.Tensor, alt: torch.Tensor, params: torch.Tensor, quality: float, boost: int,
        threshold: float,
    ) -> torch.Tensor:  # fmt: skip
        """The encoder's rate-distortion choice of the cells that carry the residual: (K,) bool, True where a cell's
        residual removes at least ``threshold`` squared error per estimated bit (``error_removed``). Every cell's
        bits are separable (the Gaussians come from the base alone), so one pass decides them all."""
        removed, bits = self.error_removed(r, d, alt, params, quality, boost)
        return removed >= threshold * bits

    def error_removed(
        self, r: torch.Tensor, d: torch.Tensor, alt: torch.Tensor, params: torch.Tensor, quality: float, boost: int,
        direct: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """-> the squared error each cell's residual removes and its estimated bits, (K,) float64 each: the residual
        is the latent columns ``r`` (the analysis of the prediction error ``d`` in the packed codec space, times the
        gains) with the Gaussians ``params``, against ``alt``, the error the cell has without it (before the
        synthesis offset every cell gets). ``direct``: through the synthesis even where ``_transposed_parts``
        allows the shorter way (the same up to float rounding)."""
        bits = gaussian_bits(self.codec, r, params)
        means = split_params(self.codec, params)[1]
        means = means * 2.0**-exact.ACT_BITS if means.dtype == torch.float64 else means
        gain = self.gain(quality, boost)[0].view(-1, 1)
        c = (torch.round(r.double() - means) + means).float() / gain  # the decoded latent, without the gains
        offset = self.lin_s.bias.view(-1, 1)  # the correction of a latent of 0
        before = (alt - offset).pow(2).sum(0).double()
        transposed = None if direct else self._transposed_parts()
        if transposed is None:
            return before - (d - affine(self.lin_s, c)).pow(2).sum(0).double(), bits
        gram, shift = transposed  # |d - b - V c|^2 = |d - b|^2 - 2 c.V'(d - b) + c.(V'V c); V'(d - b) = r / g - shift
        c, proj = c.double(), (r / gain).double() - shift
        after = (d - offset).pow(2).sum(0).double() - 2 * (c * proj).sum(0) + (c * (gram @ c)).sum(0)
        return before - after, bits

    def _transposed_parts(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """When the analysis is the transpose of the synthesis V (the PCA pair the codecs start from; training with
        frozen transforms keeps it): V'V (r x r) and the analysis bias plus V' b ((r, 1)), float64, with which
        ``worth`` measures a cell's error from its latents (an r x r product per cell instead of the synthesis'
        C x r and a C-channel difference); None otherwise. Either way the choice is the encoder's, not decoding."""

        def build():
            v = self.lin_s.weight.flatten(1)
            if not torch.equal(self.lin_a.weight.flatten(1), v.T):
                return None
            v = v.double()
            return v.T @ v, (self.lin_a.bias.double() + v.T @ self.lin_s.bias.double()).view(-1, 1)

        tensors = (self.lin_a.weight, self.lin_a.bias, self.lin_s.weight, self.lin_s.bias)
        return cached(self, "transposed_parts", tensors, build)

    def correction_cells(
        self, r_hat: torch.Tensor, quality: float, bits: int, boost: int = 0, cells: torch.Tensor | None = None,
        kept: int = 0,
    ) -> torch.Tensor:  # fmt: skip
        """Decoded residual latent columns (fixed point, ``ACT_BITS``) -> the correction of the finest level in the
        packed codec space (fixed point, ``bits``), column 0 (skipped cells: no residual) first; exactly. ``cells``:
        which of the ``kept`` cells the columns belong to (None: all); the others get column 0's correction (a
        residual latent of 0, like the skipped cells). The residual's gains are the image's quality's in every
        tier (a tier lowers the base's quality only)."""
        r = torch.cat([r_hat.new_zeros(r_hat.shape[0], 1), r_hat], 1)
        r = self.gain.dequantize(r, quality, exact.ACT_BITS + INV_GAIN_BITS - bits, boost=boost)
        out = exact.wide_linear(exact.wide_params(self.lin_s, bits), r)
        if cells is None:
            return out
        full = out[:, :1].repeat(1, 1 + kept)
        full[:, cells + 1] = out[:, 1:]
        return full

    def init_from_data(self, d: torch.Tensor, samples: int) -> None:
        set_pca(self.lin_a, self.lin_s, sample_rows(d, samples, seed=2))
