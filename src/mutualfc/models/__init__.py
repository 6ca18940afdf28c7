"""The learned codecs' networks (CompressAI ``CompressionModel``s composed of latent codecs): BFCNet, MFCNet, the
residual coder, and the mutual and separate networks built from a ``MutualConfig``."""

from mutualfc.models.base import (
    ENTROPY_TABLES,
    TIER_STEP,
    FeatureCompressionModel,
    decode_mask,
    decode_tiers,
    encode_mask,
    encode_tiers,
    is_entropy_table,
)
from mutualfc.models.bfc import BFCNet
from mutualfc.models.config import LEGACY_RELEASE, MutualConfig
from mutualfc.models.gain import GainUnit
from mutualfc.models.mfc import MFCNet
from mutualfc.models.mutual import MutualFeatureNet
from mutualfc.models.plan import CodingPlan
from mutualfc.models.residual import MAX_BOOST, ResidualCoder, decode_residual_info, encode_residual_info
from mutualfc.models.separate import SeparateFeatureNet


def build_network(cfg: MutualConfig) -> MutualFeatureNet | SeparateFeatureNet:
    """The network a configuration describes (configs as data: checkpoints store ``cfg.to_dict()``)."""
    return {"mutual": MutualFeatureNet, "separate": SeparateFeatureNet}[cfg.arch](cfg)


def is_linear_transform(name: str) -> bool:
    """Whether a parameter belongs to a closed-form linear transform (PCA analysis/synthesis, least-squares
    prediction): the trainer keeps these frozen and checkpoints keep them in float16."""
    return any(part in {"lin_a", "lin_s", "lin"} for part in name.split("."))


__all__ = ["ENTROPY_TABLES", "LEGACY_RELEASE", "MAX_BOOST", "TIER_STEP", "BFCNet", "CodingPlan",
           "FeatureCompressionModel", "GainUnit", "MFCNet", "MutualConfig", "MutualFeatureNet", "ResidualCoder",
           "SeparateFeatureNet",
           "build_network", "decode_mask", "decode_residual_info", "decode_tiers", "encode_mask",
           "encode_residual_info", "encode_tiers", "is_entropy_table", "is_linear_transform"]  # fmt: skip
