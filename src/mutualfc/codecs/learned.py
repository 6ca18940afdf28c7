"""Learned feature codecs behind the common ``Codec`` interface: the mutual codec and its separate-scale baseline.

The container carries the original image size (the letterbox geometry and every level's shape follow from it and
the task network), the quality, and the checkpoint's CRC-32 as model tag; the payload streams are the skip mask, one
rANS stream per latent (hyper-latent, then per channel group the checkerboard anchors and non-anchors), then the
optional residual stream (docs/bitstream.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from mutualfc import bitstream
from mutualfc.codecs.base import FeatureCodec
from mutualfc.entropy import reproducible_threads
from mutualfc.errors import BitstreamError, MutualFCError
from mutualfc.models import TIER_STEP, CodingPlan, FeatureCompressionModel
from mutualfc.registry import CODEC_IDS
from mutualfc.tasks.base import FeatureSet, TaskMetric
from mutualfc.zoo import load_model

RESIDUAL_MODES = ("auto", "on", "off")
# Quality from which the finest level's residual stream is sent by default (below it that level is predicted from
# the decoded base alone). At low rates the base's bits buy more accuracy than the residual's; from here on the
# residual is the cheaper accuracy. Chosen on a fold of coco-train against pseudo-labels (docs/results.md).
# Explicit --residual wins.
RESIDUAL_FROM = 6.0
# Where the schedule sends the residual, a kept cell carries it only where it removes at least this much squared
# error (the codec's feature space) per estimated bit: a rate-distortion choice per cell, recorded in the residual's
# cell map. Chosen on the same fold (results/fidelity.md): at equal rate it is more accurate than sending it in every
# kept cell or choosing the cells by objectness. An explicit --residual on sends it in every kept cell.
RESIDUAL_RD = 0.25
# Objectness below which the encoder skips a stride-32 cell: the cell's mask bit is 0, it costs nothing else and
# decodes to the mean features. Where the detector on the original features predicts no object at all, the bits buy
# no accuracy. The threshold follows the quality: (quality, threshold) knots, geometric between them and constant
# beyond, chosen on a fold of coco-train against pseudo-labels (docs/results.md, results/skip-tune10.md).
SKIP_SCHEDULE: tuple[tuple[float, float], ...] = ((2.0, 0.3), (5.0, 0.1))
# Qualities above the model's top one (top .. top + 1; from a schedule's ``fidelity_from`` where it sets one) buy
# fidelity rather than rate: the residual stream is sent (as from RESIDUAL_FROM) and the skip threshold falls
# geometrically from the schedule's value at the top to this at top + 1. Explicit --residual / --skip-below win.
FIDELITY_SKIP_BELOW = 0.02  # 0.01 until this release: on the tuning fold 0.02 is more accurate at fewer bits
# ... and the cells it adds (objectness between the threshold and the top's) form a second tier whose base is coded
# at a lower quality: FIDELITY_TIER_SPAN below the top at top + 0, rising linearly to the top at top + 1 (no tier).
# Chosen on a fold of coco-train against pseudo-labels at two score cut-offs (results/fidelity.md): at equal rate the
# tiers keep the low-scoring detections that a higher threshold drops, for a fraction of the top quality's bits.
FIDELITY_TIER_SPAN = 3.0


@dataclass(frozen=True)
class Schedule:
    """The operating-point policy of one model: where the residual stream starts (``residual_from``), its per-cell
    rate-distortion threshold (``residual_rd``: one value, or (quality, threshold) knots like ``skip``), the skip
    thresholds (``skip``: (quality, threshold) knots), the fidelity range's lowest threshold and tier span, and
    ``fidelity_from``: the highest model quality used (None: the model's top). Above it a quality buys fidelity
    (more cells, the residual) rather than a finer quantiser: a model whose top qualities cost more bits than they
    return stops there, and the decoder, reading the schedule from the same checkpoint, decodes at it.
    It travels in the checkpoint (``meta["schedule"]``), so a model
    brings its own tuning; a checkpoint without one gets these defaults (the ones tuned for the YOLOv5n zoo model,
    above)."""

    residual_from: float = RESIDUAL_FROM
    residual_rd: float | tuple[tuple[float, float], ...] = RESIDUAL_RD
    skip: tuple[tuple[float, float], ...] = SKIP_SCHEDULE
    fidelity_skip_below: float = FIDELITY_SKIP_BELOW
    fidelity_tier_span: float = FIDELITY_TIER_SPAN
    fidelity_from: float | None = None
    source: str = "defaults (tuned for yolov5n-coco's mutual model)"

    @classmethod
    def from_meta(cls, meta: dict) -> Schedule:
        raw = meta.get("schedule") or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise MutualFCError(f"checkpoint schedule has unknown settings {unknown}; known: {sorted(known)}")
        for key in ("skip", "residual_rd"):
            if isinstance(raw.get(key), list | tuple):
                raw = raw | {key: tuple((float(q), float(t)) for q, t in raw[key])}
        return cls(**raw)

    def residual_rd_at(self, quality: float) -> float:
        """The residual's per-cell threshold at ``quality`` (knots: geometric between them, as the skip's)."""
        rd = self.residual_rd
        return float(rd) if isinstance(rd, int | float) else scheduled_skip_below(quality, rd)

    def to_dict(self) -> dict:
        return asdict(self)


class OperatingPoint(NamedTuple):
    """What a quality stands for: the model quality (gains), the residual mode, the skip threshold; the second
    tier: cells whose objectness is below ``tier_below`` (and at least ``skip_below``) are coded at the model
    quality minus ``tier_step / TIER_STEP``; and ``residual_rd``, the per-cell rate-distortion threshold of the
    residual stream (0: every kept cell carries it)."""

    quality: float
    residual: str
    skip_below: float
    tier_below: float = 0.0
    tier_step: int = 0
    residual_rd: float = 0.0


@torch.inference_mode()
@reproducible_threads()
def residual_pays(net: FeatureCompressionModel, levels: dict[str, torch.Tensor], coded: dict, bits: int,
                  rd_lambda: float) -> bool:  # fmt: skip
    """Rate-distortion decision on an image's residual stream (``coded``: what ``net.compress`` returned with it):
    keep it only if its ``bits`` cost less than ``rd_lambda`` times the squared error it removes (in the codec's
    feature space, per pixel: the units training used; only the finest level differs between the two
    reconstructions). Single-threaded like coding, so that the decision does not depend on the thread count."""
    k = net.cfg.levels[0]
    ref = net.normalized({k: levels[k]})[k]
    err = [(net.normalized({k: coded[m][k]})[k] - ref).pow(2).sum() for m in ("prediction", "levels")]
    return bits < rd_lambda * float(err[0] - err[1])  # both per pixel in training's loss: pixels cancel


def scheduled_skip_below(quality: float, schedule: tuple[tuple[float, float], ...] = SKIP_SCHEDULE) -> float:
    """The default skip threshold at ``quality``: geometric interpolation between the schedule's knots (sorted by
    quality), the end knots' values beyond them."""
    (q0, t0), *rest = schedule
    if quality <= q0:
        return t0
    for q1, t1 in rest:
        if quality <= q1:
            a = (quality - q0) / (q1 - q0)
            return t0 if t0 == t1 else t0 ** (1 - a) * t1**a
        q0, t0 = q1, t1
    return t0


class LearnedFeatureCodec(FeatureCodec):
    """A trained network from the zoo (or a checkpoint) behind the codec interface, with every operating-point
    decision in one place: which model quality, skip threshold and residual mode a quality stands for
    (``operating_point``), and whether an image's residual stream pays for itself (``residual_pays``)."""

    param_name = "quality"
    default_params: ClassVar[tuple[float, ...]] = (0, 1, 2, 3, 4, 5, 6, 7)
    arch: ClassVar[str]  # the network architecture its checkpoints hold (``MutualConfig.arch``)

    @classmethod
    def param_help(cls) -> str:
        return "quality 0..8 (zoo models: 0..7 rate points, fractions interpolate; 7..8 fidelity)"

    def __init__(
        self,
        task=None,
        checkpoint: str | None = None,
        residual: bool | str | None = None,
        skip_below: float | None = None,
        residual_rd: float | None = None,
    ):
        super().__init__(task)
        if task is None:
            raise MutualFCError(f"the {self.name} codec needs a task network")
        self.model = load_model(self.name, task.name, checkpoint, arch=self.arch)
        self.net = self.model.net
        residual = {True: "on", False: "off"}.get(residual, residual)
        if residual is not None and residual not in RESIDUAL_MODES:
            raise MutualFCError(f"residual must be one of {', '.join(RESIDUAL_MODES)}, got {residual!r}")
        self.residual = residual  # None: on from RESIDUAL_FROM (when the model has a residual stream)
        self.residual_rd = None if residual_rd is None else float(residual_rd)  # None: RESIDUAL_RD where scheduled
        if self.residual_rd is not None and not 0 <= self.residual_rd < float("inf"):
            raise MutualFCError(f"residual rate-distortion threshold must be finite and >= 0, got {self.residual_rd:g}")
        self.skip_below = None if skip_below is None else float(skip_below)  # None: SKIP_SCHEDULE
        if self.skip_below is not None and not 0 <= self.skip_below < 1:
            raise MutualFCError(f"skip threshold must be in [0, 1), got {self.skip_below:g}")
        if self.skip_below != 0 and not isinstance(task, TaskMetric):
            raise MutualFCError(f"{task.name} gives no objectness map; use a skip threshold of 0")
        self.schedule = Schedule.from_meta(self.model.meta)  # the model's own operating-point policy
        self.top = self.net.cfg.qualities - 1  # the model's highest quality; top + 1 is the fidelity point
        cap = self.schedule.fidelity_from
        if cap is not None and not 0 <= cap <= self.top:
            raise MutualFCError(f"checkpoint schedule: fidelity_from {cap:g} is not a model quality (0..{self.top})")
        self.cap = float(self.top if cap is None else cap)  # the highest model quality the schedule uses
        self.default_params = tuple(float(x) for x in range(self.top + 2))
        self._level = task.level_names[-1]

    @property
    def model_tag(self) -> int:
        return self.model.tag

    def describe(self, param: float | None = None) -> dict:
        tiers = {}
        if param is None:
            residual = "schedule" if self.residual is None else self.residual
            tau = "schedule" if self.skip_below is None else self.skip_below
        else:
            op = self.operating_point(param)
            residual, tau = op.residual, op.skip_below
            if op.tier_step:
                tiers = {"tier_below": round(op.tier_below, 6), "tier_quality": op.quality - op.tier_step / TIER_STEP}
            if op.residual_rd:
                tiers["residual_rd"] = op.residual_rd
        return super().describe() | {"checkpoint": self.model.meta.get("name"), "schedule": self.schedule.source,
                                     "residual": residual,
                                     "skip_below": tau if isinstance(tau, str) else round(tau, 6), **tiers}  # fmt: skip

    def check_param(self, param: float) -> float:
        return self._check_quality(super().check_param(param))

    def _check_quality(self, q: float) -> float:
        if not 0 <= q <= self.top + 1:
            raise MutualFCError(f"{self.name} quality must be in 0..{self.top + 1}, got {q:g}")
        return q

    def operating_point(self, quality: float) -> OperatingPoint:
        """What ``quality`` stands for: up to the cap (the model's top quality, or the schedule's ``fidelity_from``)
        the codec's settings (the threshold from SKIP_SCHEDULE, the residual stream from RESIDUAL_FROM, unless set
        explicitly); above it (fidelity, up to top + 1) the cap's gains with the residual stream on and the
        threshold moving geometrically from the schedule's value at the cap to FIDELITY_SKIP_BELOW, unless set
        explicitly; the cells below the cap's threshold form the second tier (FIDELITY_TIER_SPAN). Where the
        schedule sends the residual, its cells are a
        rate-distortion choice (RESIDUAL_RD); an explicit "on" sends it in every kept cell. An explicit
        ``residual_rd`` sets the threshold wherever the residual is on."""
        residual, sc, cap = self.residual, self.schedule, self.cap
        if residual is None:
            wanted = quality >= sc.residual_from or quality > cap
            residual = "on" if wanted and self.net.has_residual else "off"
        rd = sc.residual_rd_at(min(quality, cap)) if self.residual is None else 0.0  # explicit "on": all cells
        rd = (rd if self.residual_rd is None else self.residual_rd) if residual == "on" else 0.0
        if quality <= cap:
            tau = scheduled_skip_below(quality, sc.skip) if self.skip_below is None else self.skip_below
            return OperatingPoint(quality, residual, tau, residual_rd=rd)
        t = (quality - cap) / (self.top + 1 - cap)  # 0 at the cap, 1 at the fidelity point
        tau, top_tau = self.skip_below, scheduled_skip_below(cap, sc.skip)
        if tau is None:
            tau = top_tau ** (1 - t) * sc.fidelity_skip_below**t
        step = min(round(sc.fidelity_tier_span * TIER_STEP * (1 - t)), round(cap * TIER_STEP))
        if tau >= top_tau or not step or not self.net.has_tiers:  # no cells below the cap's threshold
            return OperatingPoint(cap, residual, tau, residual_rd=rd)
        return OperatingPoint(cap, residual, tau, top_tau, step, rd)

    def rd_lambda(self, quality: float) -> float | None:
        """The Lagrange multiplier the checkpoint was trained with at ``quality`` (geometric between qualities);
        None when the checkpoint does not record it or measured distortion in another space."""
        tc = self.model.meta.get("train_cfg") or {}
        lo, hi = tc.get("lambda_min"), tc.get("lambda_max")
        if lo is None or hi is None:
            return None
        return float(lo) * (float(hi) / float(lo)) ** (quality / max(self.net.cfg.qualities - 1, 1))

    def plan(self, x: FeatureSet, param: float) -> CodingPlan:
        """Every decision about coding ``x`` at ``param``, resolved once: the operating point (the model's schedule,
        explicit options winning) and, where it skips, the cells the task's objectness keeps (and the second tier).
        The residual mode "auto" is planned as on; ``_compress`` drops the stream where it does not pay."""
        op = self.operating_point(self._check_quality(float(np.float16(param))))  # the decoder only sees float16
        use = op.residual == "on" or (op.residual == "auto" and self.rd_lambda(op.quality) is not None)
        plan = CodingPlan(op.quality, residual=use, residual_rd=op.residual_rd)
        if op.skip_below > 0:
            with reproducible_threads():  # it decides what is coded: not the thread count's floats (YOLOX's differ)
                objectness = self.task.objectness_map(x.levels)
            plan = plan.replace(keep=objectness >= op.skip_below)
            if op.tier_step:
                plan = plan.replace(low_keep=objectness < op.tier_below, low_step=op.tier_step)
        return plan

    def _compress(self, x: FeatureSet, param: float, reconstruct: bool = True) -> tuple[list[bytes], dict]:
        plan = self.plan(x, param)
        strings, meta = self.net.compress(x.levels, plan, reconstruct=reconstruct)
        n, use = self.net.stream_count(), plan.residual
        if use and self.residual == "auto":  # only an explicit "auto" weighs the stream after coding it
            bits = 8 * sum(len(s) for s in strings[n:])
            if not residual_pays(self.net, x.levels, meta, bits, self.rd_lambda(plan.quality)):
                strings, meta = strings[:n], meta | {"levels": meta["prediction"]}
                use = False
        return strings, meta | {"residual": use, "plan": plan}

    def encode_streams(self, x: FeatureSet, param: float) -> list[bytes]:
        # only an explicit "auto" residual weighs the encoder's two reconstructions (``residual_pays``)
        return self._compress(x, param, reconstruct=self.residual == "auto")[0]

    def reconstruct(self, x: FeatureSet, param: float) -> tuple[list[bytes], FeatureSet]:
        """Encode and return the encoder's own reconstruction (identical to what ``decode`` yields)."""
        strings, meta = self._compress(x, param)
        return strings, FeatureSet(meta["levels"], x.geometry)

    def decode_streams(self, header: bitstream.Header, streams: list[bytes]) -> FeatureSet:
        if not 0 <= header.param <= self.top + 1:
            raise BitstreamError(f"quality {header.param:g} outside 0..{self.top + 1}")
        q = min(header.param, self.cap)  # above the schedule's cap: its gains (the rest is in the streams)
        if not (1 <= header.width <= 16384 and 1 <= header.height <= 16384):
            raise BitstreamError(f"implausible image size {header.width}x{header.height}")
        geometry = self.task.geometry((header.height, header.width))
        shape = self.task.level_shapes(geometry)[self._level]
        try:
            levels = self.net.decompress(streams, tuple(shape[1:]), q)
        except (ValueError, RuntimeError, IndexError) as e:  # a malformed payload, or a level not finite
            raise BitstreamError(f"cannot decode {self.name} payload: {str(e).splitlines()[0]}") from None
        return FeatureSet(levels, geometry)

    def quality_for_bpp(self, x: FeatureSet, target_bpp: float, pixels: int, steps: int = 8) -> tuple[float, bytes]:
        """Highest quality whose container fits ``target_bpp`` (bisection on the continuous quality; rate grows
        with quality). Falls back to quality 0 when even that is over budget."""
        lo, hi = 0.0, float(self.top + 1)
        best = self.encode(x, lo)
        if 8 * len(best) / pixels > target_bpp:
            return lo, best
        top = self.encode(x, hi)
        if 8 * len(top) / pixels <= target_bpp:
            return hi, top
        for _ in range(steps):
            mid = float(np.float16((lo + hi) / 2))
            data = self.encode(x, mid)
            if 8 * len(data) / pixels <= target_bpp:
                lo, best = mid, data
            else:
                hi = mid
        return lo, best


class MutualCodec(LearnedFeatureCodec):
    """Learnt mutual feature codec (after Liu et al., ICASSP 2023): BFCNet codes the task's base levels (its
    coarsest), MFCNet predicts the finer ones from them; an optional residual stream of the finest level (--residual
    off|auto|on) refines it."""

    name = "mutual"
    codec_id = CODEC_IDS["mutual"]
    arch = "mutual"


class MutualFastCodec(MutualCodec):
    """The mutual codec with a lighter entropy model, for encoders and decoders short of time: three channel groups
    instead of five (fewer sequential decoding steps), a hyper-latent of half the channels, and a residual stream of
    half the components with a narrower context trunk. Its own zoo models and codec id; its top accuracy is below
    ``mutual``'s (README: the trade-off measured for each network)."""

    name = "mutual-fast"
    codec_id = CODEC_IDS["mutual-fast"]


class SeparateCodec(LearnedFeatureCodec):
    """Separate-scale baseline: the same learned codec applied to each level independently."""

    name = "separate"
    codec_id = CODEC_IDS["separate"]
    arch = "separate"
