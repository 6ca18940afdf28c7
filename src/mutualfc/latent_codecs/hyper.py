"""The hyper-latent codec of the masked hyperprior: codes only the hyper-latent cells over kept latent cells."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.latent_codecs import HyperLatentCodec
from compressai.ops import quantize_ste

from mutualfc.entropy import SymbolCoder, medians
from mutualfc.nn import exact
from mutualfc.nn.caching import cached
from mutualfc.nn.sparse import Columns, affine, block_indexes, cell_map, conv_at, positions, scatter, zero_input


class MaskedHyperLatentCodec(HyperLatentCodec):
    """Hyper-latent codec that codes only the hyper-latent positions over at least one kept latent cell; the others
    are the entropy bottleneck's medians on both sides (no bits)."""

    @staticmethod
    def _z_mask(mask: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(mask, 2)

    def _coded_positions(self, mask: torch.Tensor) -> torch.Tensor:
        """Raster indices of the hyper-latent positions that are coded (batch of one)."""
        return positions(self._z_mask(mask))

    def _medians(self, like: torch.Tensor) -> torch.Tensor:
        return medians(self.entropy_bottleneck).detach().view(1, -1, 1, 1).expand_as(like)

    def forward(self, y: torch.Tensor, mask: torch.Tensor) -> dict:
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        if self.quantizer == "ste":
            centre = medians(self.entropy_bottleneck)
            z_hat = quantize_ste(z - centre) + centre
        zm = self._z_mask(mask) > 0
        z_hat = torch.where(zm, z_hat, self._medians(z_hat))
        z_likelihoods = torch.where(zm, z_likelihoods, torch.ones_like(z_likelihoods))
        return {"likelihoods": {"z": z_likelihoods}, "params": self.h_s(z_hat)}

    def code(self, coder: SymbolCoder, y: torch.Tensor | None, mask: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Codes (``SymbolWriter``, latent columns ``y`` (C, K) at ``kept`` given) or decodes (``SymbolReader``)
        the hyper-latent at the coded positions; -> the hyperprior's parameters at ``kept``, (C_params, K), as
        fixed-point integers: every network here runs in exact integer arithmetic (``mutualfc.nn.exact``)."""
        eb = self.entropy_bottleneck
        size = tuple(mask.shape[-2:])
        c, (h, w) = eb.channels, (size[0] // 2, size[1] // 2)
        idx = self._coded_positions(mask)
        # the grid's centres, on the fixed-point grid
        centre = cached(eb, "fixed_centres", (eb.quantiles,), lambda: exact.to_fixed(medians(eb).detach().view(c, 1)))
        z_hat = centre.expand(c, h * w).clone()
        if idx.numel():
            k = idx.numel()
            values = None
            if y is not None:  # h_a at the coded positions (encoder only): skipped cells' latents are 0
                first, act, down = self.h_a
                cols = exact.to_fixed(y)
                fill = zero_input(first, act)[:, 0]
                a = scatter(affine(first, cols, act), kept, size, fill)
                values = conv_at(down, a, idx).reshape(-1) * 2.0**-exact.ACT_BITS
            channel = torch.arange(c).view(c, 1).expand(c, k).reshape(-1)
            means = (centre * 2.0**-exact.ACT_BITS).expand(c, k).reshape(-1)
            z_hat[:, idx] = exact.to_fixed(coder.code(eb, values, channel, means)).view(c, k)
        return self._synthesis_at(z_hat.view(1, c, h, w), size, kept)

    def _synthesis_at(self, z_hat: torch.Tensor, size: tuple[int, int], kept: torch.Tensor) -> torch.Tensor:
        """``h_s`` (up-convolution, pixel shuffle, activation, convolution) evaluated only where the latent is
        coded: the last convolution at ``kept``, the up-convolution (and its activation) at the hyper-latent cells
        whose children it reads, shuffled as columns (the children of the others are 0, as in the whole map)."""
        (up, shuffle), act, last = self.h_s
        r, f = last.kernel_size[0] // 2, shuffle.upscale_factor
        parents = positions(F.max_pool2d(F.max_pool2d(cell_map(kept, size), 2 * r + 1, 1, r), f))
        u = conv_at(up, z_hat, parents, act=act)  # (C f f, P): channel c * f * f + i * f + j is child (i, j)'s c
        at = block_indexes(parents, z_hat.shape[-1], f)  # the children, ordered (i, j, parent) as ``u`` holds them
        children = Columns(u.view(-1, at.numel()), at, size)  # (C, f f P): a view
        return conv_at(last, children, kept)
