"""Learnt mutual feature compression (after Liu et al., ICASSP 2023).

BFCNet codes the base (small-scale, high-level) pyramid levels with a hyperprior whose entropy parameters also use
a checkerboard spatial context and channel-group context (CompressAI latent codecs, decodable in parallel).
MFCNet predicts the remaining large-scale levels from the decoded base, so they cost no bits; an optional learned
residual stream refines the largest predicted level. One model covers the rate range through per-quality gain
vectors on the latent (continuous quality by interpolating neighbouring gains).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from compressai.layers import CheckerboardMaskedConv2d
from torch import nn


@dataclass
class MutualConfig:
    """Configuration as data: which levels form the base, latent sizes, number of qualities."""

    levels: tuple[str, ...] = ("p3", "p4", "p5")
    channels: tuple[int, ...] = (64, 128, 256)
    base: tuple[str, ...] = ("p4", "p5")  # coded by BFCNet; the others are predicted by MFCNet
    width: int = 128  # transform width N
    latent: int = 192  # latent channels M
    hyper: int = 96
    groups: tuple[int, ...] = (16, 16, 32, 64, 64)
    qualities: int = 8
    feature_scale: float = 0.25  # features are scaled by this before analysis (post-SiLU, heavy-tailed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MutualConfig:
        d = dict(d)
        for k in ("levels", "channels", "base", "groups"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


@contextlib.contextmanager
def reproducible_threads() -> Iterator[None]:
    """Entropy parameters must match to the last bit between encoder and decoder: intra-op parallelism changes
    float summation order, so coding always runs single-threaded whatever the caller set."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _conv(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, s, k // 2)


def _up(cin: int, cout: int) -> nn.Sequential:
    """x2 upsampling by sub-pixel convolution."""
    return nn.Sequential(_conv(cin, cout * 4, 3), nn.PixelShuffle(2))


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_conv(ch, ch), nn.GELU(), _conv(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _latent_codec(m: int, n_hyper: int, groups: tuple[int, ...], side_ch: int) -> HyperpriorLatentCodec:
    """Hyperprior + channel groups + checkerboard context (CompressAI latent codecs)."""
    h_a = nn.Sequential(_conv(m, n_hyper), nn.GELU(), _conv(n_hyper, n_hyper, 3, 2))
    h_s = nn.Sequential(_up(n_hyper, n_hyper), nn.GELU(), _conv(n_hyper, side_ch))
    channel_context = {
        f"y{k}": nn.Sequential(_conv(sum(groups[:k]), 96, 3), nn.GELU(), _conv(96, groups[k] * 2, 3))
        for k in range(1, len(groups))
    }
    per_group = {}
    for k, g in enumerate(groups):
        cin = g * 2 + (k > 0) * g * 2 + side_ch
        per_group[f"y{k}"] = CheckerboardLatentCodec(
            latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
            context_prediction=CheckerboardMaskedConv2d(g, g * 2, kernel_size=5, stride=1, padding=2),
            entropy_parameters=nn.Sequential(nn.Conv2d(cin, 128, 1), nn.GELU(), nn.Conv2d(128, g * 2, 1)),
        )
    return HyperpriorLatentCodec(
        latent_codec={
            "y": ChannelGroupsLatentCodec(groups=list(groups), channel_context=channel_context, latent_codec=per_group),
            "hyper": HyperLatentCodec(entropy_bottleneck=EntropyBottleneck(n_hyper), h_a=h_a, h_s=h_s, quantizer="ste"),
        }
    )


class BFCNet(nn.Module):
    """Basic feature compression of the base levels: analysis -> latent codec -> synthesis (at the coarsest level)."""

    def __init__(self, cfg: MutualConfig):
        super().__init__()
        ch = dict(zip(cfg.levels, cfg.channels, strict=True))
        n, m = cfg.width, cfg.latent
        # each base level is brought to the coarsest base resolution and concatenated
        self.inputs = nn.ModuleDict()
        for i, name in enumerate(cfg.base):
            factor = 2 ** (len(cfg.base) - 1 - i)
            layers: list[nn.Module] = [_conv(ch[name], n)]
            for _ in range(int(math.log2(factor))):
                layers += [nn.GELU(), _conv(n, n, 3, 2)]
            self.inputs[name] = nn.Sequential(*layers)
        self.g_a = nn.Sequential(_conv(n * len(cfg.base), n), ResBlock(n), _conv(n, n, 3, 2), ResBlock(n), _conv(n, m))
        self.g_s = nn.Sequential(_conv(m, n), ResBlock(n), _up(n, n), ResBlock(n), ResBlock(n))
        self.outputs = nn.ModuleDict()
        for i, name in enumerate(cfg.base):
            factor = 2 ** (len(cfg.base) - 1 - i)
            layers = [ResBlock(n)]
            for _ in range(int(math.log2(factor))):
                layers += [_up(n, n), nn.GELU()]
            layers.append(_conv(n, ch[name]))
            self.outputs[name] = nn.Sequential(*layers)
        self.latent_codec = _latent_codec(m, cfg.hyper, cfg.groups, cfg.hyper * 2)
        self.gain = nn.Parameter(torch.ones(cfg.qualities, m, 1, 1))
        self.inv_gain = nn.Parameter(torch.ones(cfg.qualities, m, 1, 1))

    def analysis(self, levels: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.g_a(torch.cat([self.inputs[k](levels[k]) for k in self.inputs], 1))

    def synthesis(self, y_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> shared decoded representation (coarsest base resolution) and the decoded base levels."""
        shared = self.g_s(y_hat)
        return shared, {k: self.outputs[k](shared) for k in self.outputs}


class MFCNet(nn.Module):
    """Predicts the non-base (larger) levels from BFCNet's decoded representation, coarse to fine; a decoded base
    level at an intermediate resolution is fused in on the way."""

    def __init__(self, cfg: MutualConfig):
        super().__init__()
        ch = dict(zip(cfg.levels, cfg.channels, strict=True))
        n = cfg.width
        self.order = [k for k in reversed(cfg.levels)][1:]  # coarse -> fine, below the coarsest level
        self.targets = [k for k in cfg.levels if k not in cfg.base]
        self.stages = nn.ModuleDict({k: nn.Sequential(_up(n, n), ResBlock(n), ResBlock(n)) for k in self.order})
        self.fuse = nn.ModuleDict({k: _conv(ch[k], n) for k in self.order if k in cfg.base})
        self.heads = nn.ModuleDict({k: _conv(n, ch[k]) for k in self.targets})

    def forward(self, shared: torch.Tensor, base_hat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h, out = shared, {}
        for name in self.order:
            h = self.stages[name](h)
            if name in self.fuse:
                h = h + self.fuse[name](base_hat[name])
            else:
                out[name] = self.heads[name](h)
        return out


class MutualFeatureNet(nn.Module):
    """BFCNet + MFCNet: ``forward`` for training (noisy/STE quantisation, likelihoods), ``compress`` and
    ``decompress`` for real bits (call ``update()`` first)."""

    def __init__(self, cfg: MutualConfig | None = None):
        super().__init__()
        self.cfg = cfg or MutualConfig()
        self.bfc = BFCNet(self.cfg)
        self.mfc = MFCNet(self.cfg)
        self.pad_multiple = 4  # at the coarsest level: latent (/2) and hyper-latent (/4) stay even-sized

    # -- helpers -------------------------------------------------------------------------------------------
    def _gains(self, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain vectors for a (possibly fractional) quality in [0, qualities-1], log-linearly interpolated."""
        q = min(max(float(quality), 0.0), self.cfg.qualities - 1.0)
        lo, hi = math.floor(q), math.ceil(q)
        t = q - lo
        g = self.bfc.gain.abs().clamp_min(1e-4)
        ig = self.bfc.inv_gain.abs().clamp_min(1e-4)
        gain = torch.exp((1 - t) * g[lo].log() + t * g[hi].log())
        inv = torch.exp((1 - t) * ig[lo].log() + t * ig[hi].log())
        return gain, inv

    def _prepare(self, levels: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        coarse = levels[self.cfg.levels[-1]]
        h, w = coarse.shape[-2:]
        ph = -h % self.pad_multiple
        pw = -w % self.pad_multiple
        out = {}
        for i, name in enumerate(self.cfg.levels):
            f = 2 ** (len(self.cfg.levels) - 1 - i)
            x = levels[name] * self.cfg.feature_scale
            out[name] = F.pad(x, (0, pw * f, 0, ph * f), mode="replicate") if (ph or pw) else x
        return out, (h, w)

    def _finish(self, shared, base_hat, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        pred = self.mfc(shared, base_hat)
        h, w = size
        out = {}
        for i, name in enumerate(self.cfg.levels):
            f = 2 ** (len(self.cfg.levels) - 1 - i)
            x = base_hat[name] if name in base_hat else pred[name]
            out[name] = x[..., : h * f, : w * f] / self.cfg.feature_scale
        return out

    # -- training --------------------------------------------------------------------------------------
    def forward(self, levels: dict[str, torch.Tensor], quality: float) -> dict:
        x, size = self._prepare(levels)
        gain, inv = self._gains(quality)
        y = self.bfc.analysis({k: x[k] for k in self.cfg.base}) * gain
        lc = self.bfc.latent_codec(y)
        shared, base_hat = self.bfc.synthesis(lc["y_hat"] * inv)
        return {"levels": self._finish(shared, base_hat, size), "likelihoods": lc["likelihoods"]}

    # -- real bits -------------------------------------------------------------------------------------
    @torch.inference_mode()
    @reproducible_threads()
    def compress(self, levels: dict[str, torch.Tensor], quality: float) -> tuple[list[bytes], dict]:
        x, size = self._prepare(levels)
        gain, _ = self._gains(quality)
        y = self.bfc.analysis({k: x[k] for k in self.cfg.base}) * gain
        out = self.bfc.latent_codec.compress(y)
        strings = [s[0] for s in out["strings"]]  # 2 checkerboard halves per channel group, then z; batch of 1
        return strings, {"size": size, "shape": out["shape"], "n_strings": len(strings)}

    @torch.inference_mode()
    @reproducible_threads()
    def decompress(self, strings: list[bytes], size: tuple[int, int], quality: float) -> dict[str, torch.Tensor]:
        h, w = size
        hp, wp = h + (-h % self.pad_multiple), w + (-w % self.pad_multiple)
        y_shape = (self.cfg.latent, hp // 2, wp // 2)
        shape = {"y": _y_shapes(self.cfg.groups, y_shape), "hyper": (hp // 4, wp // 4)}
        y_hat = self.bfc.latent_codec.decompress([[s] for s in strings], shape)["y_hat"]
        _, inv = self._gains(quality)
        shared, base_hat = self.bfc.synthesis(y_hat * inv)
        return self._finish(shared, base_hat, size)

    def update(self, force: bool = True) -> None:
        """Build the entropy coders' CDF tables (CompressAI) before ``compress``/``decompress``."""
        for m in self.modules():
            if isinstance(m, EntropyBottleneck):
                m.update(force=force)
        for m in self.modules():
            if isinstance(m, GaussianConditional):
                m.update_scale_table(_scale_table(), force=force)


def _scale_table(lo: float = 0.11, hi: float = 256.0, levels: int = 64) -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(lo), math.log(hi), levels))


def _y_shapes(groups: tuple[int, ...], y_shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    _, h, w = y_shape
    return [(g, h, w) for g in groups]
