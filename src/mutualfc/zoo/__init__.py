"""Model zoo: trained feature codecs loadable by name (``load_model("mutual", "yolov5n-coco")``).

Checkpoints ship inside the package (``zoo/checkpoints``), declared here with their SHA-256 and measured metrics
(metadata, from results/), as torchvision declares weights next to models. A checkpoint stores its configuration,
the task network it was trained for, and its entropy-coder tables (so ``compress`` works right after loading, with
the exact tables the encoder used).
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mutualfc.errors import MutualFCError
from mutualfc.models import FeatureCompressionModel, MutualConfig, build_network
from mutualfc.zoo.packing import export_state, load_packed, pack_state, unpack_state

CHECKPOINTS = Path(__file__).parent / "checkpoints"


@dataclass(frozen=True)
class ZooEntry:
    name: str  # codec name
    task: str  # task network the codec was trained for
    file: str
    sha256: str
    notes: str = ""
    # measured on coco-val212 (results/learned.md, results/learned_bdrate.json); BD-rates in %, pchip on monotone
    # envelopes, mAP@[.5:.95]
    metrics: dict = field(default_factory=dict)
    arch: str = ""  # the network architecture it holds, if not ``name`` (a variant: "mutual-fast" holds "mutual")


ZOO: dict[tuple[str, str], ZooEntry] = {
    (e.name, e.task): e
    for e in (
        ZooEntry(
            "mutual",
            "yolov5n-coco",
            "mutual_yolov5n-coco.pt",
            "3d70b0172f5b298ef1a14fda7ca085c313c3328bea573629b39195771116bf17",
            "BFCNet {P4,P5} + MFCNet P3 (+ 512-component P3 residual, sent from quality 6; kept cells without a "
            "residual decode P3 to the mean features); task metric, linear transforms, skip-schedule training on "
            "1,755 coco-train images",
            {  # coco-val212, the codec's defaults (skip schedule, residual from 6 in the cells where it pays,
                # fidelity tiers), results/learned.md
                "bd_rate_vs_hevc_feature": -97.2,
                "bd_rate_vs_hevc_image": -86.8,
                "bd_rate_vs_vvc_feature": -96.8,
                "bd_rate_vs_vvc_image": -85.3,
                "bd_rate_vs_separate": -67.3,
                "bpp_range": (0.0095, 0.410),
                "map_range": (0.0969, 0.3060),
            },
        ),  # fmt: skip
        ZooEntry(
            "mutual-fast",
            "yolov5n-coco",
            "mutual-fast_yolov5n-coco.pt",
            "9136205aeebf889db565274302bd5b5947cbab35a1722489666bdefb9b3eac91",
            "the mutual network with a lighter entropy model: 3 channel groups (2, 4, 18), 64-channel hyper-latent, "
            "256-component P3 residual with a 32-channel context trunk; the zoo mutual model's linear transforms, "
            "MFCNet and gains, then 5,000 + 3,000 + 4,000 steps on 1,755 coco-train images (64-channel trunk), then "
            "4,000 + 4,000 training only the residual and a 32-channel trunk; the mutual schedule",
            {  # coco-val212, the codec's defaults, results/learned.md, results/mutual-fast/README.md
                "bd_rate_vs_hevc_feature": -97.2,
                "bd_rate_vs_hevc_image": -86.8,
                "bd_rate_vs_vvc_feature": -96.9,
                "bd_rate_vs_vvc_image": -85.7,
                "bd_rate_vs_separate": -65.4,
                "bd_rate_vs_mutual": 2.9,
                "bpp_range": (0.0104, 0.403),
                "map_range": (0.1155, 0.3030),
            },
            arch="mutual",
        ),
        ZooEntry(
            "separate",
            "yolov5n-coco",
            "separate_yolov5n-coco.pt",
            "2c6f11ddd1ac6400b6607d612c7acd7d2d3571b9d1b013e0751deda04ffb3556",
            "one codec per level; task metric, linear transforms (trained without skipping in the loop)",
            {
                "bd_rate_vs_hevc_feature": -91.1,
                "bd_rate_vs_hevc_image": -60.5,
                "bd_rate_vs_vvc_feature": -89.6,
                "bd_rate_vs_vvc_image": -51.9,
                "bpp_range": (0.0386, 0.806),
                "map_range": (0.0814, 0.3036),
            },  # fmt: skip
        ),
        ZooEntry(
            "mutual",
            "yolox-nano-coco",
            "mutual_yolox-nano-coco.pt",
            "0cd942e38ba253d448e556ba33de516c1d43f2cc4c57eb4e82750d929d622f83",
            "BFCNet {P4,P5} + MFCNet P3 (+ 512-component P3 residual); task metric from YOLOX-Nano's decoupled head "
            "(autograd probes); 1,200 + 3,000 + 2,500 steps on 1,755 coco-train images; skip thresholds tuned on "
            "coco-train fold 0/8 (the checkpoint's schedule; model quality capped at 6, qualities above it buy "
            "fidelity)",
            {  # coco-val212, the checkpoint's schedule, results/yolox/learned.md
                "bd_rate_vs_hevc_feature": -66.2,
                "bd_rate_vs_hevc_image": -59.7,
                "bd_rate_vs_vvc_feature": -65.4,
                "bd_rate_vs_vvc_image": -52.5,
                "bd_rate_vs_separate": -47.3,
                "bpp_range": (0.0274, 0.661),
                "map_range": (0.1602, 0.2823),
            },
        ),
        ZooEntry(
            "mutual-fast",
            "yolox-nano-coco",
            "mutual-fast_yolox-nano-coco.pt",
            "be76d05834a5d0dc5a80f6f6d85f3025534241539b48007395ccd9ea04cd3492",
            "the mutual network with a lighter entropy model: 3 channel groups (2, 4, 18), 64-channel hyper-latent, "
            "256-component P3 residual with a 32-channel context trunk; from the zoo YOLOX mutual model's linear "
            "transforms, MFCNet and gains, 1,250 + 3,500 + 2,500 steps on 1,755 coco-train images; the YOLOX mutual "
            "schedule",
            {  # coco-val212, the checkpoint's schedule, results/yolox/learned.md, results/mutual-fast/README.md
                "bd_rate_vs_hevc_feature": -71.0,
                "bd_rate_vs_hevc_image": -65.8,
                "bd_rate_vs_vvc_feature": -70.4,
                "bd_rate_vs_vvc_image": -59.3,
                "bd_rate_vs_separate": -50.9,
                "bd_rate_vs_mutual": -8.9,
                "bpp_range": (0.0240, 0.522),
                "map_range": (0.1839, 0.2793),
            },
            arch="mutual",
        ),
        ZooEntry(
            "separate",
            "yolox-nano-coco",
            "separate_yolox-nano-coco.pt",
            "ab4b78d81d13894d71603eb1b534a3a4f1a75ae395b7974438989104b4a34632",
            "one codec per level; task metric from YOLOX-Nano's head; 800 + 2,000 steps on 1,755 coco-train images",
            {
                "bd_rate_vs_hevc_feature": -33.1,
                "bd_rate_vs_hevc_image": -24.8,
                "bd_rate_vs_vvc_feature": -31.7,
                "bd_rate_vs_vvc_image": -3.9,
                "bpp_range": (0.0817, 0.764),
                "map_range": (0.1375, 0.2806),
            },
        ),
    )
}


def list_models() -> list[tuple[str, str]]:
    return sorted(ZOO)


@dataclass
class LoadedModel:
    net: FeatureCompressionModel
    meta: dict
    tag: int  # CRC-32 of the checkpoint file: the model identity written into every bitstream


def read_checkpoint(path: str | Path, expect_sha256: str = "") -> tuple[dict, bytes]:
    """A zoo-format checkpoint (``{"meta", "model"}``), read with ``weights_only=True`` (no code in the file runs);
    -> it and the file's bytes. One-line MutualFCError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise MutualFCError(f"codec checkpoint not found: {path}")
    raw = path.read_bytes()
    if expect_sha256 and hashlib.sha256(raw).hexdigest() != expect_sha256:
        raise MutualFCError(f"codec checkpoint {path} does not match its declared SHA-256 (damaged or replaced)")
    try:
        ck = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        meta, state = ck["meta"], ck["model"]
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise MutualFCError(f"{path} is not a mutualfc codec checkpoint ({type(e).__name__})") from None
    return {"meta": meta, "model": state}, raw


def config_of(meta: dict, path: str | Path) -> MutualConfig:
    """The checkpoint's model configuration; one-line MutualFCError for a retired design."""
    try:
        return MutualConfig.from_dict(meta["model_cfg"])
    except (ValueError, TypeError, KeyError) as e:
        raise MutualFCError(f"{path}: {e}") from None


def load_model(name: str, task: str, checkpoint: str | Path | None = None, arch: str | None = None) -> LoadedModel:
    """The trained network for codec ``name`` and task network ``task`` (or a user's ``checkpoint``), ready to code;
    ``arch``: the architecture the codec runs (default: the zoo entry's, else ``name``)."""
    entry = ZOO.get((name, task))
    arch = arch or (entry.arch if entry is not None else "") or name
    if checkpoint is None:
        if entry is None:
            have = ", ".join(f"{n} for {t}" for n, t in list_models())
            raise MutualFCError(f"no trained {name!r} codec for task {task!r} in the zoo (have: {have})")
        path = CHECKPOINTS / entry.file
        ck, raw = read_checkpoint(path, entry.sha256)
    else:
        path = Path(checkpoint)
        ck, raw = read_checkpoint(path)
    meta = ck["meta"]
    if meta.get("task") != task:
        raise MutualFCError(f"codec checkpoint was trained for task {meta.get('task')!r}, not {task!r}")
    cfg = config_of(meta, path)
    if cfg.arch != arch:
        raise MutualFCError(f"codec checkpoint holds a {cfg.arch!r} model, not {arch!r}")
    net = build_network(cfg)
    try:
        load_packed(net, ck["model"])
    except RuntimeError as e:
        raise MutualFCError(
            f"codec checkpoint does not fit the {name} architecture: {str(e).splitlines()[0]}"
        ) from None
    return LoadedModel(net.eval(), meta, zlib.crc32(raw))


__all__ = ["ZOO", "LoadedModel", "ZooEntry", "config_of", "export_state", "list_models", "load_model", "load_packed",
           "pack_state", "read_checkpoint", "unpack_state"]  # fmt: skip
