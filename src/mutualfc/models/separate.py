"""The separate-scale baseline: the same BFCNet applied to every level independently, no cross-scale prediction."""

from __future__ import annotations

import torch
from torch import nn

from mutualfc.entropy import reproducible_threads
from mutualfc.models.base import FeatureCompressionModel, decode_mask, encode_mask
from mutualfc.models.bfc import BFCNet
from mutualfc.models.config import MutualConfig
from mutualfc.models.plan import CodingPlan
from mutualfc.nn.caching import in_coding_scope
from mutualfc.nn.packing import crop_levels, pad_levels
from mutualfc.nn.sparse import positions


class SeparateFeatureNet(FeatureCompressionModel):
    """One BFCNet (packing, PCA transforms, masked hyperprior) per level: the "existing approach" the mutual design
    has to beat."""

    def __init__(self, cfg: MutualConfig):
        super().__init__()
        self.cfg = cfg
        self.codecs = nn.ModuleDict({k: BFCNet(cfg, (k,), shared=False) for k in cfg.levels})
        self.latent_count = len(self.codecs)

    @torch.no_grad()
    def init_from_data(self, levels: dict[str, torch.Tensor], sensitivity: dict[str, torch.Tensor]) -> None:
        levels, _ = pad_levels(levels, self.cfg.levels, self.pad_multiple)
        for k, bfc in self.codecs.items():
            bfc.init_from_data({k: levels[k]}, self.cfg.init_samples, sensitivity)

    def normalized(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Levels in the codec's feature space (where training measures distortion)."""
        return {k: self.codecs[k].pack.normalize(k, x) for k, x in levels.items()}

    def forward(self, levels: dict[str, torch.Tensor], quality: float, keep: torch.Tensor | None = None) -> dict:
        x, size = pad_levels(levels, self.cfg.levels, self.pad_multiple)
        top = x[self.cfg.levels[-1]]
        mask = self.coded_mask(keep, size, top.shape[0], top.device)
        lik, rec = {}, {}
        for k, bfc in self.codecs.items():
            gain, inv = bfc.gain(quality)
            lc = bfc.latent_codec(bfc.analysis({k: x[k]}) * gain, mask)
            lik.update({f"{k}.{n}": v for n, v in lc["likelihoods"].items()})
            rec.update(bfc.pack.unpack(bfc.synthesis(lc["y_hat"] * inv)[1]))
        out = crop_levels(rec, self.cfg.levels, size)
        return {"likelihoods": lik, "levels": out, "prediction": out}

    @torch.inference_mode()
    @in_coding_scope
    def compress(
        self, levels: dict[str, torch.Tensor], plan: CodingPlan | float, reconstruct: bool = True, **overrides
    ) -> tuple[list[bytes], dict]:
        """-> byte strings and the encoder's reconstruction (None if not ``reconstruct``); of the plan this network
        uses the quality and ``keep`` (applied to every level): it has no residual stream and no tiers."""
        plan = CodingPlan.of(plan, **overrides)
        if plan.low_step or plan.boost or plan.residual_keep is not None:
            raise ValueError("the separate network codes no tiers and no residual stream")
        quality, keep = plan.quality, plan.keep
        size = tuple(levels[self.cfg.levels[-1]].shape[-2:])
        mask = self.coded_mask(keep, size)
        kept = positions(mask)
        strings, rec = [encode_mask(keep)], {}
        for k, bfc in self.codecs.items():
            with reproducible_threads():  # the float analysis: what is coded must not depend on the thread count
                x = {k: levels[k].float()}  # not padded: the cells' gathers read it as padded
                y = bfc.analysis(x, kept, mask.shape[-1]) * bfc.gain(quality)[0].view(-1, 1)
            lc = bfc.latent_codec.compress(y, mask)  # exact arithmetic from here on: any thread count
            strings.append(lc["strings"][0])
            if reconstruct:
                rec.update(bfc.decoded_levels(lc["y_hat"], mask, quality))
        rec = crop_levels(rec, self.cfg.levels, size) if reconstruct else None
        return strings, {"size": size, "levels": rec, "prediction": rec}

    @torch.inference_mode()
    @in_coding_scope
    def decompress(self, strings: list[bytes], size: tuple[int, int], quality: float) -> dict[str, torch.Tensor]:
        if len(strings) != self.stream_count():
            raise ValueError(f"expected {self.stream_count()} streams, got {len(strings)}")
        mask = self.coded_mask(decode_mask(strings[0], size), size)
        rec = {}
        for string, bfc in zip(strings[1:], self.codecs.values(), strict=True):
            y_hat = bfc.latent_codec.decompress([string], mask)["y_hat"]
            rec.update(bfc.decoded_levels(y_hat, mask, quality))
        return crop_levels(rec, self.cfg.levels, size)
