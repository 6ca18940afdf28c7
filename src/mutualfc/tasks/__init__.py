"""Registry of split task networks: ``create_task("yolov5n-coco", pretrained=True)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mutualfc.errors import WeightsError
from mutualfc.tasks.base import Detections, FeatureSet, LetterboxGeometry, SplitNetwork, TaskMetric
from mutualfc.tasks.rcnn import FasterRCNNDetector
from mutualfc.tasks.weights import WeightsSpec, read_weights, resolve_weights
from mutualfc.tasks.yolov5 import YOLOv5Detector
from mutualfc.tasks.yolox import YOLOXDetector


@dataclass(frozen=True)
class TaskEntry:
    builder: Callable[[], SplitNetwork]
    weights: WeightsSpec | None


YOLOV5N_COCO_WEIGHTS = WeightsSpec(
    state_dict_file="yolov5n-coco-v6.1.pth",
    upstream_file="yolov5n.pt",
    url="https://github.com/ultralytics/yolov5/releases/download/v6.1/yolov5n.pt",
    sha256="4f180cf23ba0717ada0badd6c685026d73d48f184d00fc159c2641284b2ac0a3",
    meta={
        "dataset": "COCO train2017",
        "classes": 80,
        "license": "AGPL-3.0 (Ultralytics)",
        "params": 1_881_736,
        # mutualfc eval --codec none --images coco-val212/images --annotations coco-val212/instances.json
        "metrics": {"coco-val212": {"map": 0.3082, "map50": 0.4785}},
    },  # fmt: skip
)

YOLOX_NANO_COCO_WEIGHTS = WeightsSpec(
    state_dict_file="yolox-nano-coco.onnx",
    upstream_file="yolox_nano.onnx",
    url="https://github.com/Megvii-BaseDetection/YOLOX/releases/download/0.1.1rc0/yolox_nano.onnx",
    sha256="e8af074932d4ed7e232278e3055cefcdea3edf178874a3694ae292649fb464dd",
    meta={
        "dataset": "COCO train2017",
        "classes": 80,
        "license": "Apache-2.0 (Megvii YOLOX)",
        "params": 904_481,
        # mutualfc detect --task yolox-nano-coco --images coco-val212/images --annotations coco-val212/instances.json
        "metrics": {"coco-val212": {"map": 0.2834, "map50": 0.4445}},
    },  # fmt: skip
)

FASTERRCNN_R50_FPN_COCO_WEIGHTS = WeightsSpec(
    state_dict_file="fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    upstream_file="fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    url="https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    sha256="258fb6c6",  # torchvision names its files by their hash's first hex digits: a prefix is what it publishes
    meta={
        "dataset": "COCO train2017",
        "classes": 91,
        "license": "BSD-3-Clause (torchvision)",
        "params": 41_808_406,
        "metrics": {},  # not measured here: the weights cannot be downloaded on this project's machines
    },
)

_REGISTRY: dict[str, TaskEntry] = {
    "yolov5n-coco": TaskEntry(lambda: YOLOv5Detector("yolov5n-coco", width=0.25, depth=0.33), YOLOV5N_COCO_WEIGHTS),
    "yolox-nano-coco": TaskEntry(lambda: YOLOXDetector("yolox-nano-coco"), YOLOX_NANO_COCO_WEIGHTS),
    "fasterrcnn-r50-fpn-coco": TaskEntry(
        lambda: FasterRCNNDetector("fasterrcnn-r50-fpn-coco"), FASTERRCNN_R50_FPN_COCO_WEIGHTS
    ),
}


def register_task(name: str, builder: Callable[[], SplitNetwork], weights: WeightsSpec | None = None) -> None:
    """Make a split network creatable by name (``create_task``, ``--task``, training): one registration per task.
    ``builder`` returns the network without weights; ``weights`` says where its weights file is found (None: only
    an explicit ``weights=`` file). A container names its task by the id in ``mutualfc.registry.TASK_IDS`` (0 for a
    task without one, which a decoder then takes to be its own)."""
    if name in _REGISTRY:
        raise WeightsError(f"task network {name!r} is already registered")
    _REGISTRY[name] = TaskEntry(builder, weights)


def list_tasks() -> list[str]:
    return sorted(_REGISTRY)


def create_task(
    name: str = "yolov5n-coco", pretrained: bool = True, weights: str | Path | None = None, download: bool = True
):
    """Build a split network by name; with ``pretrained`` its weights are resolved and loaded (``download``: the
    upstream file may be fetched when no local one is found)."""
    if name not in _REGISTRY:
        raise WeightsError(f"unknown task network {name!r}; choose from {', '.join(list_tasks())}")
    entry = _REGISTRY[name]
    net = entry.builder()
    if pretrained or weights:
        if entry.weights is None and not weights:
            raise WeightsError(f"{name} declares no weights file: pass one (weights=FILE, --weights FILE)")
        path = resolve_weights(entry.weights, weights, download=download)
        try:
            if hasattr(net, "load_weights_file"):  # a format of its own (e.g. ONNX)
                net.load_weights_file(path)
            else:
                net.load_upstream_state(read_weights(path))
        except (ValueError, KeyError) as e:
            raise WeightsError(f"{path}: not weights for {name} ({e})") from None
    return net


def describe_task(name: str) -> dict:
    """What ``mutualfc tasks`` lists: id, levels, input, weights file and licence, measured uncompressed mAP."""
    from mutualfc.registry import task_id

    entry = task_entry(name)
    net = entry.builder()  # no weights needed for its shape
    spec = entry.weights
    return {
        "name": name,
        "id": task_id(name),
        "levels": [
            {"name": n, "channels": c, "stride": s}
            for n, c, s in zip(net.level_names, net.level_channels, net.level_strides, strict=True)
        ],
        "input": _input_of(net),
        "weights": None if spec is None else spec.state_dict_file,
        "license": None if spec is None else spec.meta.get("license"),
        "params": None if spec is None else spec.meta.get("params"),
        "metrics": {} if spec is None else spec.meta.get("metrics", {}),
    }


def _input_of(net) -> str:
    """The pre-processing a network declares (its ``transform`` and size), or its input size."""
    t = getattr(net, "transform", None)
    if t is not None and hasattr(t, "size"):
        return f"{type(t).__name__} {t.size}"
    return str(getattr(net, "size", "not declared"))


def task_entry(name: str) -> TaskEntry:
    if name not in _REGISTRY:
        raise WeightsError(f"unknown task network {name!r}; choose from {', '.join(list_tasks())}")
    return _REGISTRY[name]


__all__ = [
    "Detections",
    "FeatureSet",
    "LetterboxGeometry",
    "SplitNetwork",
    "TaskMetric",
    "create_task",
    "describe_task",
    "list_tasks",
    "register_task",
    "task_entry",
]
