"""The mutual network (after Liu et al., ICASSP 2023): BFCNet codes the base levels, MFCNet predicts the others
from the decoded base, and an optional residual stream refines the finest level."""

from __future__ import annotations

import torch

from mutualfc.entropy import reproducible_threads
from mutualfc.models.base import TIER_STEP, FeatureCompressionModel, decode_tiers, encode_mask, encode_tiers
from mutualfc.models.bfc import SYNTHESIS_BITS, BFCNet, Tier
from mutualfc.models.config import MutualConfig
from mutualfc.models.mfc import MFCNet
from mutualfc.models.plan import CodingPlan
from mutualfc.models.residual import ResidualCoder, decode_residual_info, encode_residual_info
from mutualfc.nn import exact
from mutualfc.nn.caching import in_coding_scope, stamps
from mutualfc.nn.packing import crop_levels, pad_levels
from mutualfc.nn.sparse import affine, positions, put_columns


class MutualFeatureNet(FeatureCompressionModel):
    """BFCNet + MFCNet (+ residual): ``forward`` for training (noisy/STE quantisation, likelihoods; also returns the
    prediction-only reconstruction), ``compress``/``decompress`` for real bits."""

    has_tiers = True

    def __init__(self, cfg: MutualConfig):
        super().__init__()
        self.cfg = cfg
        self.targets = tuple(k for k in cfg.levels if k not in cfg.base)
        if not self.targets:
            raise ValueError("the mutual codec needs at least one predicted level (base must not hold all levels)")
        self.finest = cfg.levels[0]
        residual = bool(cfg.residual) and self.finest in self.targets
        self.bfc = BFCNet(cfg, cfg.base, shared=residual)
        self.mfc = MFCNet(cfg, cfg.base, self.targets)
        self.res = ResidualCoder(cfg, self.finest) if residual else None

    @torch.no_grad()
    def init_from_data(self, levels: dict[str, torch.Tensor], sensitivity: dict[str, torch.Tensor]) -> None:
        """Closed-form start (metric, PCA transforms, least-squares prediction) from a batch of training crops;
        ``sensitivity`` is the task network's ``level_sensitivity``."""
        levels, _ = pad_levels(levels, self.cfg.levels, self.pad_multiple)
        n = self.cfg.init_samples
        base_rec = self.bfc.init_from_data({k: levels[k] for k in self.cfg.base}, n, sensitivity)
        self.mfc.init_from_data({k: levels[k] for k in self.targets}, base_rec, n, sensitivity)
        if self.res is not None:
            self.res.pack.set_stats({self.finest: levels[self.finest]}, sensitivity)
            self.init_residual(levels)

    @torch.no_grad()
    def init_residual(self, levels: dict[str, torch.Tensor]) -> None:
        """PCA of the residual of the linear prediction (from the base as the linear transforms reconstruct it);
        also used after loading a model with another residual width into this one."""
        levels, _ = pad_levels(levels, self.cfg.levels, self.pad_multiple)
        base_rec = self.bfc.lin_s(self.bfc.lin_a(self.bfc.pack.pack({k: levels[k] for k in self.cfg.base})))
        pred = self.mfc(base_rec)[self.finest]
        d = self.res.pack.pack({self.finest: levels[self.finest]}) - self.res.pack.pack({self.finest: pred})
        self.res.init_from_data(d, self.cfg.init_samples)

    def normalized(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Levels in the codec's feature space (where training measures distortion)."""
        packers = {k: self.bfc.pack for k in self.cfg.base} | {k: self.mfc.pack for k in self.targets}
        return {k: packers[k].normalize(k, x) for k, x in levels.items()}

    # -- training --------------------------------------------------------------------------------------
    def forward(self, levels: dict[str, torch.Tensor], quality: float, keep: torch.Tensor | None = None) -> dict:
        """``keep``: (B, 1, H, W) at the coarsest level, cells to code (None = all); the others decode to the mean.
        -> likelihoods, the decoded levels and the prediction-only levels (no residual)."""
        x, size = pad_levels(levels, self.cfg.levels, self.pad_multiple)
        mask = self.coded_mask(keep, size, x[self.finest].shape[0], x[self.finest].device)
        gain, inv = self.bfc.gain(quality)
        lc = self.bfc.latent_codec(self.bfc.analysis({k: x[k] for k in self.cfg.base}) * gain, mask)
        likelihoods = dict(lc["likelihoods"])
        context, base_u = self.bfc.synthesis(lc["y_hat"] * inv, self.res is not None)
        pred = self.bfc.pack.unpack(base_u) | self.mfc(base_u)
        rec = pred
        if self.res is not None:
            rg, rinv = self.res.gain(quality)
            p = self.res.pack
            pred_r = p.pack({self.finest: pred[self.finest]})
            d = p.pack({self.finest: x[self.finest]}) - pred_r
            rc = self.res.codec(self.res.lin_a(d) * rg * mask, torch.cat([context, mask], 1))
            lik = rc["likelihoods"]["y"]
            likelihoods["r"] = torch.where(mask > 0, lik, torch.ones_like(lik))
            rec = pred | p.unpack(pred_r + self.res.lin_s(rc["y_hat"] * mask * rinv))
        if not self.cfg.predict_uncorrected:  # without a residual every cell decodes to the mean features
            pred = pred | self._mean_targets(lc["y_hat"])
            rec = pred if self.res is None else rec
        return {"likelihoods": likelihoods, "levels": crop_levels(rec, self.cfg.levels, size),
                "prediction": crop_levels(pred, self.cfg.levels, size)}  # fmt: skip

    def _mean_targets(self, y_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The predicted levels of a latent of 0 (the mean features skipped cells decode to), tiled to ``y_hat``'s
        map (training)."""
        b, _, h, w = y_hat.shape
        one = self.mfc(self.bfc.synthesis(y_hat.new_zeros(1, y_hat.shape[1], 1, 1), False)[1])
        return {k: v.repeat(b, 1, h, w) for k, v in one.items()}

    # -- real bits (exact integer arithmetic from the decoded symbols on: every machine decodes alike) ---------
    def _prediction(self, base: torch.Tensor, carry: torch.Tensor | None) -> torch.Tensor:
        """MFCNet's prediction from the decoded base (packed fixed-point columns, 1 + K: column 0 stands for all
        skipped cells, the others for the kept ones) as the decoder uses it. With ``cfg.predict_uncorrected`` off, a
        kept cell that carries no residual takes column 0 (the mean features), so only column 0 and the cells
        ``carry`` (indexes among the kept cells; None: none) are predicted: each column is predicted on its own and
        exactly, so leaving the others out changes no value. -> (packed channels, 1 + K), or (packed channels, 1)
        when every cell takes column 0 (``LevelPacker.paint_fixed`` fills the maps with it)."""
        if self.cfg.predict_uncorrected or (carry is not None and carry.numel() == base.shape[1] - 1):
            return self.mfc.predict_cells(base, SYNTHESIS_BITS)  # every column is used as predicted
        if carry is None:  # every cell takes column 0, the synthesis of a latent of 0: one column for all
            return self._mean_prediction(base[:, :1])
        cols = torch.cat([carry.new_zeros(1), carry + 1])
        pred = self.mfc.predict_cells(base.index_select(1, cols), SYNTHESIS_BITS)
        return put_columns(pred[:, :1].expand(-1, base.shape[1]).clone(), cols, pred)

    def _mean_prediction(self, column: torch.Tensor) -> torch.Tensor:
        """MFCNet's prediction of one packed base column, kept for the next call with the same column and weights
        (the skipped cells' column does not change from image to image; reading the whole prediction matrix for it
        costs more than the rest of the prediction at low qualities)."""
        key = (stamps(exact.weight_tensors(self.mfc.lin)), column.numpy().tobytes())
        hit = self.__dict__.get("_mutualfc_mean_prediction")
        if hit is None or hit[0] != key:
            hit = (key, self.mfc.predict_cells(column, SYNTHESIS_BITS))
            self.__dict__["_mutualfc_mean_prediction"] = hit
        return hit[1]

    def _uncorrected(self, target: torch.Tensor, coded: torch.Tensor | None = None) -> torch.Tensor:
        """The predicted columns as the decoder uses them: with ``cfg.predict_uncorrected`` off, every kept cell
        that carries no residual (``coded``: indexes among the kept cells that do; None: none does) gets column 0,
        the mean features of the skipped cells."""
        if self.cfg.predict_uncorrected:
            return target
        keep = torch.zeros(target.shape[1], dtype=torch.bool)
        keep[0] = True
        if coded is not None:
            keep[coded + 1] = True
        return torch.where(keep, target, target[:, :1])

    def _residual_params(
        self, y_hat: torch.Tensor, quality: float, kept: torch.Tensor, low: Tier | None, at: torch.Tensor
    ) -> torch.Tensor:
        """The residual latent's Gaussians at the cells ``at``, from the base's context computed only where they
        read it."""
        reads = self.res.context_positions(at, tuple(y_hat.shape[-2:]))
        return self.res.entropy_params(self.bfc.context(y_hat, quality, kept, low, at=reads), at)

    def _levels(
        self, base: torch.Tensor, target: torch.Tensor, kept: torch.Tensor, size: tuple[int, int],
        target_at: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Packed fixed-point columns (1 + K, or 1 for every cell) -> every level's map in feature units.
        ``target_at``: the cells of the target's columns after column 0 (which every other cell takes), if they are
        not ``kept``."""
        target_at = kept if target_at is None else target_at
        return self.bfc.pack.paint_fixed(base, SYNTHESIS_BITS, kept, size) | \
            self.mfc.pack.paint_fixed(target, SYNTHESIS_BITS, target_at, size)  # fmt: skip

    def _corrected(self, target: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
        """The residual stream's correction added to the finest level's packed channels of ``target``, clamped."""
        n = self.res.pack.channels
        return torch.cat([target[:n] + correction, target[n:]]).clamp_(-exact.ACT_LIMIT, exact.ACT_LIMIT)

    def _with_residual(
        self, target: torch.Tensor, correction: torch.Tensor, cells: torch.Tensor | None
    ) -> torch.Tensor:
        """The prediction with the residual stream's correction added to the finest level's packed channels;
        ``cells``: indexes among the kept cells of those that carry the residual (None: all of them), the others
        first as ``_uncorrected`` has them."""
        return self._corrected(self._uncorrected(target, torch.arange(target.shape[1] - 1) if cells is None else cells),
                               correction)  # fmt: skip

    @torch.inference_mode()
    @in_coding_scope
    def compress(
        self, levels: dict[str, torch.Tensor], plan: CodingPlan | float, reconstruct: bool = True, **overrides
    ) -> tuple[list[bytes], dict]:
        """Code one image as ``plan`` says (a ``CodingPlan``, or a quality with the plan's fields as ``overrides``)
        -> byte strings (skip mask, the latent's stream, then the residual stream if the plan sends it, then its
        settings if they are not the defaults) and what decoding needs besides them: the coarsest level's ``size``;
        also the encoder's own reconstruction under ``"levels"`` and the prediction-only one under ``"prediction"``
        (None if not ``reconstruct``). Skipped cells' latents (base and residual)
        are not coded, so they decode to the mean features; the mask is the first stream (``encode_mask``); the
        residual's cell map and boost go into a fourth stream (``encode_residual_info``); the second tier is
        signalled in the mask stream (``encode_tiers``). With ``residual_rd`` the residual's cells are the encoder's
        rate-distortion choice (``ResidualCoder.worth``), which the cell map records."""
        plan = CodingPlan.of(plan, **overrides)
        quality, keep, residual_keep, boost = plan.quality, plan.keep, plan.residual_keep, plan.boost
        low_keep, low_step, residual_rd = plan.low_keep, plan.low_step, plan.residual_rd
        x = {k: levels[k].float() for k in self.cfg.levels}  # not padded: the cells' gathers read them as padded
        size = tuple(x[self.cfg.levels[-1]].shape[-2:])
        mask = self.coded_mask(keep, size)
        kept, padded = positions(mask), tuple(mask.shape[-2:])
        low = None
        if low_keep is not None and low_step:
            if quality - low_step / TIER_STEP < 0:
                raise ValueError(f"tier step {low_step} takes quality {quality:g} below 0")
            in_low = self.coded_mask(low_keep, size).flatten()[kept] > 0
            low = (quality - low_step / TIER_STEP, in_low.nonzero().squeeze(1)) if bool(in_low.any()) else None
        with reproducible_threads():  # the float analysis: what is coded must not depend on the thread count
            y0 = self.bfc.analysis({k: x[k] for k in self.cfg.base}, kept, padded[1])  # (C, K): at the kept cells
            y = y0 * self.bfc.gain(quality)[0].view(-1, 1)
            if low is not None:  # the tier's cells at its quality's gains
                y[:, low[1]] = y0[:, low[1]] * self.bfc.gain(low[0])[0].view(-1, 1)
        lc = self.bfc.latent_codec.compress(y, mask)  # exact arithmetic from here on: any thread count
        head = encode_mask(keep) if low is None else encode_tiers(keep, size, in_low, low_step)
        strings = [head, lc["strings"][0]]
        use = plan.residual and self.res is not None
        if not (use or reconstruct):
            return strings, {"size": size, "levels": None, "prediction": None}
        y_hat = lc["y_hat"]
        base = self.bfc.packed_cells(y_hat, kept, quality, low)
        pred = rec = None  # the encoder paints levels only when asked to (the streams do not need them)
        if reconstruct:
            pred = rec = self._levels(base, self._prediction(base, None), kept, padded)
        if use:
            p, k = self.res.pack, self.finest
            coded = None
            if residual_keep is not None:
                coded = self.coded_mask(residual_keep, size).flatten()[kept] > 0
            cells = None if coded is None or bool(coded.all()) else coded.nonzero().squeeze(1)
            at = kept if cells is None else kept[cells]
            target = self._prediction(base, torch.arange(kept.numel()) if cells is None else cells)
            pred_r = (target[: p.channels] * 2.0**-SYNTHESIS_BITS).float()  # the finest level, packed codec space
            params = self._residual_params(y_hat, quality, kept, low, at)
            with reproducible_threads():
                pred_at = pred_r[:, 1:] if cells is None else pred_r[:, 1:][:, cells]
                d = p.features_to_cells(p.gather_cells({k: x[k]}, at, padded[1])) - pred_at
                r = affine(self.res.lin_a, d) * self.res.gain(quality, boost)[0].view(-1, 1)
                if residual_rd > 0:  # without the residual a cell keeps the prediction or (neutral) the mean
                    alt = d if self.cfg.predict_uncorrected else d + pred_at - pred_r[:, :1]
                    chosen = self.res.worth(r, d, alt, params, quality, boost, residual_rd).nonzero().squeeze(1)
                    if chosen.numel() < at.numel():
                        cells = chosen if cells is None else cells[chosen]
                        r, params = r[:, chosen], params[:, chosen]  # a cell's Gaussians do not depend on the others
                        coded = torch.zeros(kept.numel(), dtype=torch.bool)
                        coded[cells] = True
            string, r_hat = self.res.compress(r, params)
            info = encode_residual_info(boost, coded)
            strings += [string, info] if info else [string]
            if not reconstruct:
                return strings, {"size": size, "levels": None, "prediction": None}
            correction = self.res.correction_cells(r_hat, quality, SYNTHESIS_BITS, boost, cells, kept.numel())
            corrected = self._with_residual(target, correction, cells)
            rec = self._levels(base, corrected, kept, padded)
        names = self.cfg.levels
        return strings, {"size": size, "levels": crop_levels(rec, names, size),
                         "prediction": crop_levels(pred, names, size)}  # fmt: skip

    @torch.inference_mode()
    @in_coding_scope
    def decompress(self, strings: list[bytes], size: tuple[int, int], quality: float) -> dict[str, torch.Tensor]:
        n = self.stream_count()
        if len(strings) not in (n, n + 1, n + 2) or (len(strings) > n and self.res is None):
            raise ValueError(f"expected {n} streams (+1 residual, +1 its settings), got {len(strings)}")
        keep, step, in_low = decode_tiers(strings[0], size)
        mask = self.coded_mask(keep, size)
        kept, padded = positions(mask), tuple(mask.shape[-2:])
        low = None
        if step:
            if quality - step / TIER_STEP < 0:
                raise ValueError(f"tier step {step} takes quality {quality:g} below 0")
            low = (quality - step / TIER_STEP, in_low)
        info = strings[n + 1] if len(strings) > n + 1 else b""  # not rANS: not padded
        strings = strings[: n + 1]
        y_hat = self.bfc.latent_codec.decompress([strings[1]], mask)["y_hat"]
        base = self.bfc.packed_cells(y_hat, kept, quality, low)
        if len(strings) > n:
            boost, cells = decode_residual_info(info, kept.numel())
            at = kept if cells is None else kept[cells]
            r_hat = self.res.decompress(strings[n], self._residual_params(y_hat, quality, kept, low, at))
            if not self.cfg.predict_uncorrected:  # the cells without the residual take column 0: only ``at`` painted
                cols = None if cells is None else torch.cat([cells.new_zeros(1), cells + 1])
                target = self.mfc.predict_cells(base if cols is None else base.index_select(1, cols), SYNTHESIS_BITS)
                target = self._corrected(target, self.res.correction_cells(r_hat, quality, SYNTHESIS_BITS, boost))
                return crop_levels(self._levels(base, target, kept, padded, at), self.cfg.levels, size)
            correction = self.res.correction_cells(r_hat, quality, SYNTHESIS_BITS, boost, cells, kept.numel())
            target = self._with_residual(self._prediction(base, torch.arange(kept.numel())), correction, cells)
        else:
            target = self._prediction(base, None)
        return crop_levels(self._levels(base, target, kept, padded), self.cfg.levels, size)
