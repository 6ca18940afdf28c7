"""Split-network interface: ``front`` runs on the edge, ``back`` on the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True)
class LetterboxGeometry:
    """How an original image was mapped into the network input (needed to map boxes back)."""

    orig_hw: tuple[int, int]
    input_hw: tuple[int, int]
    ratio: float
    pad_left: int
    pad_top: int


@dataclass
class FeatureSet:
    """Ordered, named pyramid levels of one image plus the geometry needed to finish the task."""

    levels: dict[str, torch.Tensor]
    geometry: LetterboxGeometry
    meta: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.levels)

    def numel(self) -> int:
        return sum(t.numel() for t in self.levels.values())


@dataclass
class Detections:
    """Boxes in original-image pixels (x1, y1, x2, y2), scores and COCO category ids."""

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(
        self, image_id: int, min_score: float = 0.0, names: dict[int, str] | None = None, file_name: str | None = None
    ) -> list[dict]:
        """COCO results format (xywh boxes) for the boxes scoring at least ``min_score``; with ``names`` each box
        also carries its class name ("category") and with ``file_name`` the file it came from (extra keys, which
        COCO tools ignore)."""
        out = []
        for (x1, y1, x2, y2), s, c in zip(
            self.boxes.tolist(), self.scores.tolist(), self.category_ids.tolist(), strict=True
        ):
            if s < min_score:
                continue
            rec = {
                "image_id": int(image_id),
                "category_id": int(c),
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(float(s), 5),
            }
            if names is not None:
                rec["category"] = names.get(int(c), str(int(c)))
            if file_name is not None:
                rec["file_name"] = file_name
            out.append(rec)
        return out


@runtime_checkable
class SplitNetwork(Protocol):
    """A task network that can be cut at its feature pyramid."""

    name: str
    level_names: tuple[str, ...]
    level_channels: tuple[int, ...]
    level_strides: tuple[int, ...]
    category_names: dict[int, str]  # category id -> class name

    def geometry(self, orig_hw: tuple[int, int]) -> LetterboxGeometry: ...

    def level_shapes(self, geometry: LetterboxGeometry) -> dict[str, tuple[int, int, int]]: ...

    def front(self, image: np.ndarray) -> FeatureSet: ...

    def back(self, features: FeatureSet) -> Detections: ...

    def detect(self, image: np.ndarray) -> Detections: ...


@runtime_checkable
class TaskMetric(Protocol):
    """What the learned codecs need of a task network beyond the split: where it looks (background skipping), how
    sensitive its head is to feature errors (the codec's metric), and its head outputs (training's task term)."""

    def objectness_map(self, levels: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, H, W) at the coarsest level: the highest objectness any anchor of any level predicts per cell."""
        ...

    def level_sensitivity(self, levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per level, a C x C matrix: the expected squared change of the head's outputs per feature error."""
        ...

    def head_outputs(self, levels: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The head's raw outputs per level (the reference of ``head_error``)."""
        ...

    def head_error(self, levels: dict[str, torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
        """The weighted change of the head's outputs between ``levels`` and ``reference`` (summed)."""
        ...


def strided_shapes(net, geometry: LetterboxGeometry) -> dict[str, tuple[int, int, int]]:
    """Each level's (channels, height, width) for a network whose levels are its input divided by their strides."""
    h, w = geometry.input_hw
    return {n: (c, h // s, w // s) for n, c, s in zip(net.level_names, net.level_channels, net.level_strides,
                                                       strict=True)}  # fmt: skip


def split_front(net, image: np.ndarray) -> FeatureSet:
    """The front half of a network with named parts (``transform``, ``body``, ``level_names``, ``device``): the
    split features on the CPU (where codecs code), whatever device the network runs on."""
    x, g = net.transform(image)
    levels = net.body(x.to(net.device))
    return FeatureSet({n: t.cpu() for n, t in zip(net.level_names, levels, strict=True)}, g)
