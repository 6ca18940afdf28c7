"""Masked hyperprior latent codec: hyperprior + channel groups + checkerboard context (CompressAI's latent codecs),
aware of the skip mask, with real coding that evaluates every network at the coded cells only."""

from __future__ import annotations

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperpriorLatentCodec,
)
from compressai.layers import CheckerboardMaskedConv2d
from torch import nn

from mutualfc.entropy import SymbolCoder, SymbolReader, SymbolWriter
from mutualfc.entropy.gaussian import code_gaussian_at
from mutualfc.latent_codecs.group_pass import code_group, group_weights
from mutualfc.latent_codecs.hyper import MaskedHyperLatentCodec
from mutualfc.nn import cell_stack, exact
from mutualfc.nn.caching import cached
from mutualfc.nn.composed import composed_weights, composes
from mutualfc.nn.context import context_at
from mutualfc.nn.layers import conv, upconv
from mutualfc.nn.sparse import (
    accumulate,
    affine_parts,
    columns,
    positions,
    stack_at,
    take_columns,
)


class MaskedParams(nn.Sequential):
    """Entropy-parameter network whose input carries the skip mask as its last channel (CompressAI's latent codecs
    split and re-arrange it with the other inputs, checkerboard halves included). Where the mask is 0 the Gaussian
    is pinned to mean 0 and the smallest scale: a skipped (zero) latent then costs about 1e-4 bits and both sides
    agree on its value without decoding anything."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :-1]) * x[:, -1:]


class MaskedHyperpriorLatentCodec(HyperpriorLatentCodec):
    """Hyperprior latent codec that knows which latent cells are skipped (``mask``: 1 = coded, at the latent's
    resolution; the decoder reads it from its own stream): skipped cells and the hyper-latent over them cost no bits."""

    def forward(self, y: torch.Tensor, mask: torch.Tensor) -> dict:
        y = y * mask
        hyper = self.latent_codec["hyper"](y, mask)
        out = self.latent_codec["y"](y, torch.cat([hyper["params"], mask.expand(y.shape[0], 1, -1, -1)], 1))
        lik = out["likelihoods"]["y"]
        lik = torch.where(mask > 0, lik, torch.ones_like(lik))  # exactly what coding costs (the noise would not be)
        return {"likelihoods": {"y": lik, "z": hyper["likelihoods"]["z"]}, "y_hat": out["y_hat"] * mask}

    def compress(self, y: torch.Tensor, mask: torch.Tensor) -> dict:
        """Real coding of the latent ``y`` (1, C, H, W), or its columns (C, K) at the cells ``mask`` keeps (raster
        order), at those cells -> {"strings": [one rANS stream], "y_hat": the decoded latent (fixed-point integers),
        exactly what ``decompress`` returns}."""
        writer = SymbolWriter()
        y_hat = self.code(writer, y, mask)
        return {"strings": [writer.finish()], "y_hat": y_hat}

    def decompress(self, strings: list[bytes], mask: torch.Tensor) -> dict:
        """Inverse of ``compress`` given the same ``mask`` (the decoder reads it from its own stream)."""
        return {"y_hat": self.code(SymbolReader(strings[0]), None, mask)}

    def code(self, coder: SymbolCoder, y: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """Real coding into one rANS stream: the hyper-latent, then per channel group the checkerboard anchors and
        non-anchors, only at kept cells. The encoder (``SymbolWriter``, ``y`` given) and the decoder
        (``SymbolReader``, ``y`` None) run this same code in exact integer arithmetic (``mutualfc.nn.exact``), so
        their entropy parameters match on every machine; they equal what ``forward`` computes (two-pass
        checkerboard, channel-group context) up to the fixed-point rounding, each network evaluated at the coded
        cells only. -> y_hat as fixed-point integers (``ACT_BITS`` fractional bits)."""
        h, w = mask.shape[-2:]
        kept = positions(mask)
        cg = self.latent_codec["y"]
        y_hat = mask.new_zeros(1, sum(cg.groups), h, w, dtype=torch.float64)  # fixed-point integers
        if not kept.numel():
            return y_hat
        if y is not None:
            y = y if y.dim() == 2 else columns(y, kept)  # (C, K): only the coded cells are read
            if y.shape[1] != kept.numel():
                raise ValueError(f"{y.shape[1]} latent columns for {kept.numel()} kept cells")
        params = self.latent_codec["hyper"].code(coder, y, mask, kept)  # (C_params, K)
        y_hat_ = [t.view(t.shape[1], h * w) for t in y_hat.split(cg.groups, 1)]
        anchor = (kept // w + kept % w) % 2 == 0  # CompressAI's "even" anchor parity
        order = torch.cat([anchor.nonzero().squeeze(1), (~anchor).nonzero().squeeze(1)])  # anchors, then the rest
        cells = kept.index_select(0, order)  # raster positions in coding order: each step's columns are a slice
        n_anchors = int(anchor.sum())
        bounds = [(0, n_anchors), (n_anchors, kept.numel())]
        idxs = [cells[lo:hi] for lo, hi in bounds]  # the same tensors for every group: ``memo`` knows them
        y_ = [None] * len(cg.groups) if y is None else take_columns(y, order).split(cg.groups, 0)
        # the entropy parameters' first layer on [spatial context; channel context; hyper parameters]: the hyper
        # parameters' part of every group in one product, once for every cell (exact integers, bias included: any
        # order of the sums gives them)
        w_par, b_par = _hyper_parts(cg, params.shape[0])
        sides = exact.affine_columns(w_par, take_columns(params, order), b_par).chunk(len(cg.groups))  # (C, K) each
        memo = {}  # the same cells for every group
        y_cols = torch.empty(sum(cg.groups), kept.numel(), dtype=torch.float64)  # the decoded groups at ``cells``
        for k, g in enumerate(cg.groups):
            cb = cg.latent_codec[f"y{k}"]
            gcl = cb.latent_codec["y"]
            first, act, last = cb.entropy_parameters
            w_ctx, w_side, _ = affine_parts(first, cb.context_prediction.out_channels)
            side_acc, start = sides[k], sum(cg.groups[:k])
            if k:
                side_acc = _with_channel_context(cg.channel_context[f"y{k}"], first, w_side, side_acc, y_hat,
                                                 y_cols[:start], cells, memo)  # fmt: skip
            weights = group_weights(cb, side_acc)
            if weights is not None:  # both steps in few calls (``group_pass``): the same symbols and values
                out = y_cols[start : start + g]
                code_group(coder, cb, weights, y_[k], side_acc, y_hat_[k], out, cells, idxs[1], (h, w), memo)
                continue
            for step, (lo, hi) in enumerate(bounds):
                if lo == hi:
                    continue
                idx = idxs[step]
                acc = side_acc[:, lo:hi].clone(memory_format=torch.contiguous_format)  # written in place below
                if step:  # non-anchors: this group's map holds its decoded anchors only (anchors: no context, 0)
                    ctx = context_at(cb.context_prediction, y_hat_[k].view(1, g, h, w), idx, memo, cells)
                    acc.addmm_(w_ctx, ctx)
                gauss = accumulate(last, exact.activations(acc, act))  # the Gaussians, floored as they are coded
                values = None if y is None else y_[k][:, lo:hi]
                code_gaussian_at(coder, gcl, values, gauss, y_hat_[k], idx)
            y_cols[start : start + g] = take_columns(y_hat_[k], cells)
        return y_hat


def _with_channel_context(
    layers: nn.Sequential, first: nn.Conv2d, w_side: torch.Tensor, side: torch.Tensor, y_hat: torch.Tensor,
    cols: torch.Tensor, cells: torch.Tensor, memo: dict,
) -> torch.Tensor:  # fmt: skip
    """A channel group's entropy-parameter accumulator ``side`` (C, K) plus its channel context at ``cells``, from
    the groups before it (their decoded ``cols`` at ``cells``; ``y_hat`` 0 off the kept cells). When the context
    network ends in a 1x1 layer, that layer and the first layer's context inputs are one composed layer
    (``composed``, bitstream version 6, where its sums stay exact): the network's hidden channels go straight into
    the accumulator. Products as rows (transposed views, no copies): the same exact sums, faster at a few tens of
    cells."""
    h, w = y_hat.shape[-2:]
    lo = first.in_channels - w_side.shape[1]  # the spatial context's channels come first
    last = layers[-1] if isinstance(layers, nn.Sequential) else None
    weights = composed_weights(last, first, lo) if last is not None and composes(last, first) else None
    if cell_stack.applies(layers, cols):  # from the decoded columns
        ctx = cell_stack.stack_at_cells(layers, cols, cells, (h, w), memo, with_last=weights is None)
    elif weights is not None and len(layers) == 1:  # the composed layer reads the decoded groups themselves
        ctx = cols
    else:
        ctx = stack_at(layers if weights is None else layers[:-1], y_hat[:, : cols.shape[0]], cells, memo)
    if weights is None:
        return torch.addmm(side.T, ctx.T, w_side[:, : ctx.shape[0]].T).T
    return torch.addmm(side.T, ctx.T, weights.weight.T).T.add_(weights.bias.view(-1, 1))


def _hyper_parts(cg: nn.Module, n_params: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact weights (``affine_parts``) of every group's entropy-parameter first layer that multiply the hyper
    parameters (its last ``n_params`` inputs), stacked group after group, and their biases, (groups x C,)."""

    def firsts():
        return [cg.latent_codec[f"y{k}"].entropy_parameters[0] for k in range(len(cg.groups))]

    def build():
        parts = [affine_parts(f, f.in_channels - n_params) for f in firsts()]
        if len({w.shape[0] for _, w, _ in parts}) != 1:
            raise ValueError("the groups' entropy-parameter layers differ in width")
        return torch.cat([w for _, w, _ in parts]).contiguous(), torch.cat([b.view(-1) for _, _, b in parts])

    return cached(cg, f"hyper_parts{n_params}", lambda: [t for f in firsts() for t in exact.weight_tensors(f)], build)


def masked_hyperprior_codec(m: int, n_hyper: int, groups: tuple[int, ...]) -> MaskedHyperpriorLatentCodec:
    """Hyperprior (hyper-latent at half the latent's resolution) + channel groups + checkerboard context, all aware
    of the skip mask."""
    side = n_hyper * 2
    h_a = nn.Sequential(conv(m, n_hyper, 1), nn.GELU(), conv(n_hyper, n_hyper, 3, 2))
    h_s = nn.Sequential(upconv(n_hyper, n_hyper), nn.GELU(), conv(n_hyper, side))
    channel_context = {
        f"y{k}": nn.Sequential(
            conv(sum(groups[:k]), 64, 1), nn.GELU(), conv(64, 64, 3), nn.GELU(), conv(64, groups[k] * 2, 1)
        )
        for k in range(1, len(groups))
    }
    per_group = {}
    for k, g in enumerate(groups):
        cin = g * 2 + (k > 0) * g * 2 + side
        per_group[f"y{k}"] = CheckerboardLatentCodec(
            latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
            context_prediction=CheckerboardMaskedConv2d(g, g * 2, kernel_size=5, stride=1, padding=2, groups=g),
            entropy_parameters=MaskedParams(nn.Conv2d(cin, 96, 1), nn.GELU(), nn.Conv2d(96, g * 2, 1)),
        )
    hyper = MaskedHyperLatentCodec(entropy_bottleneck=EntropyBottleneck(n_hyper), h_a=h_a, h_s=h_s, quantizer="ste")
    return MaskedHyperpriorLatentCodec(
        latent_codec={
            "y": ChannelGroupsLatentCodec(groups=list(groups), channel_context=channel_context, latent_codec=per_group),
            "hyper": hyper,
        }
    )
