"""The learned codecs' configuration, stored in every checkpoint (configs as data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# Designs retired in 0.2.0 (the non-linear transforms, the per-level "std" metric, configs from before the task
# metric): checkpoints that use them are read by mutualfc 0.1.0, git commit ff5f32e.
LEGACY_RELEASE = "mutualfc 0.1.0 (git commit ff5f32e)"
_RETIRED = {"metric": "task", "transform": "linear"}  # field -> the only value this release reads


@dataclass
class MutualConfig:
    """Architecture of a mutual or separate feature codec."""

    arch: str = "mutual"  # "mutual" (BFCNet + MFCNet) or "separate" (one codec per level)
    # the task network's levels, fine -> coarse, each half the size of the previous, and their channels: required
    # (the trainer takes them from the task, ``train.model_defaults``); a codec knows no network of its own
    levels: tuple[str, ...] = ()
    channels: tuple[int, ...] = ()
    base: tuple[str, ...] = ()  # coded by BFCNet, the finer levels predicted by MFCNet; () = the 2 coarsest (1 of 2)
    width: int = 128  # width of the trunk that gives the residual stream its context
    latent: int = 0  # latent channels; 0 = as many as the packed base has (a complete transform)
    hyper: int = 128
    groups: tuple[int, ...] = (1, 1, 2, 4, 16)  # relative sizes of the latent's channel groups (context order)
    residual: int = 128  # channels of the finest level's residual latent; 0 = no residual stream
    # whether kept cells that carry no residual take MFCNet's prediction of the finer levels (True) or the mean
    # features, as skipped cells do (False: where no residual corrects it, the detector does better without it)
    predict_uncorrected: bool = True
    qualities: int = 8
    gains: tuple[float, float] = (1.0, 32.0)  # initial latent gains of the lowest and the highest quality
    init_samples: int = 20000  # positions used for the closed-form (PCA / least-squares) initialisation
    metric_eps: float = 1e-5  # floor of the sensitivity's eigenvalues, relative to the largest (keeps it invertible)
    metric_scale: float = 50.0  # brings the whitened features to a range where quantisation steps of 1 are coarse

    def __post_init__(self) -> None:
        if not self.levels or len(self.levels) != len(self.channels):
            raise ValueError(
                f"levels {self.levels} and channels {self.channels} must name the task's levels, one "
                "channel count each (take them from the task: mutualfc.train.model_defaults)"
            )
        if not self.base:  # the two coarsest levels, or the coarsest when there are only two
            self.base = tuple(self.levels[-min(2, max(len(self.levels) - 1, 1)) :])
        unknown = [b for b in self.base if b not in self.levels]
        if unknown:
            raise ValueError(f"base levels {unknown} are not among the levels {self.levels}")
        if not self.groups or min(self.groups) <= 0:
            raise ValueError(f"channel groups {self.groups} must be positive")
        if self.arch not in ("mutual", "separate"):
            raise ValueError(f"unknown architecture {self.arch!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MutualConfig:
        """The config a checkpoint stored; ValueError for a retired design (naming the release that reads it)."""
        if "min_width" in d and "metric" not in d:  # a complete config of the releases before the task metric
            raise ValueError(f"checkpoint from before the task metric; {LEGACY_RELEASE} reads it")
        for name, value in _RETIRED.items():
            if d.get(name, value) != value:
                raise ValueError(f"checkpoint uses the retired {name} {d[name]!r}; {LEGACY_RELEASE} reads it")
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})

    def latent_groups(self, packed: int) -> tuple[int, tuple[int, ...]]:
        """-> latent channels and channel-group sizes for a base that packs into ``packed`` channels."""
        m = self.latent or packed
        total = sum(self.groups)
        sizes = [max(1, round(m * g / total)) for g in self.groups[:-1]]
        return m, (*sizes, m - sum(sizes))

    def packer_args(self) -> dict:
        """What a ``LevelPacker`` needs of this config besides the levels it packs."""
        return {"levels": self.levels, "channels": self.channels, "eps": self.metric_eps, "scale": self.metric_scale}
