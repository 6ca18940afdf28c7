"""Faster R-CNN ResNet-50 FPN (torchvision) split at the FPN outputs P2-P5, as MPEG's feature-coding work splits R-CNN
detectors: the edge sends P2..P5 (256 channels each, strides 4..32), the server recomputes P6 from P5 (torchvision's
``LastLevelMaxPool``) and runs the RPN and the box head.

Built from torchvision's parts without downloading anything (no ImageNet backbone either); the weights are a user's
torchvision checkpoint (``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`` or a fine-tuned one), read with
``torch.load(weights_only=True)``. Its BatchNorm is frozen, as torchvision's detection models have it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from torchvision.models._meta import _COCO_CATEGORIES
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import misc

from mutualfc.tasks.base import Detections, FeatureSet, LetterboxGeometry, strided_shapes
from mutualfc.tasks.metric import probed_sensitivity


class RCNNResize:
    """torchvision's ``GeneralizedRCNNTransform`` geometry: the short side to ``min_size`` unless the long side would
    pass ``max_size``, sizes floored, the batch padded to a multiple of 32 at the bottom and right."""

    def __init__(self, min_size: int = 800, max_size: int = 1333, divisible: int = 32):
        self.min_size, self.max_size, self.divisible = min_size, max_size, divisible
        self.size = f"short side {min_size}, long side <= {max_size}, padded to /{divisible}"

    def resized_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = orig_hw
        scale = min(self.min_size / float(min(h, w)), self.max_size / float(max(h, w)))
        return math.floor(float(h) * scale), math.floor(float(w) * scale)  # F.interpolate's output size

    def geometry(self, orig_hw: tuple[int, int]) -> LetterboxGeometry:
        rh, rw = self.resized_hw(orig_hw)
        d = self.divisible
        ratio = min(self.min_size / float(min(orig_hw)), self.max_size / float(max(orig_hw)))
        return LetterboxGeometry(tuple(orig_hw), (-(-rh // d) * d, -(-rw // d) * d), ratio, 0, 0)


class FasterRCNNDetector(nn.Module):
    """torchvision's Faster R-CNN R50-FPN as named parts with torchvision's own attribute names (so its checkpoints
    load as they are): ``transform``, ``backbone`` (-> P2..P5 and the pool level), ``rpn``, ``roi_heads``."""

    level_names = ("p2", "p3", "p4", "p5")
    level_strides = (4, 8, 16, 32)
    _fpn_keys = ("0", "1", "2", "3")

    def __init__(self, name: str, num_classes: int = 91, min_size: int = 800, max_size: int = 1333):
        super().__init__()
        self.name = name
        body = resnet50(weights=None, norm_layer=misc.FrozenBatchNorm2d)
        full = FasterRCNN(_resnet_fpn_extractor(body, 5), num_classes=num_classes, min_size=min_size,
                          max_size=max_size)  # fmt: skip
        self.rcnn_transform, self.backbone, self.rpn, self.roi_heads = (
            full.transform, full.backbone, full.rpn, full.roi_heads)  # fmt: skip
        self.transform = RCNNResize(min_size, max_size, full.transform.size_divisible)
        self.level_channels = (self.backbone.out_channels,) * len(self.level_names)
        # torchvision's COCO labels are the COCO category ids themselves (background and unused ids in between)
        self.category_names = {i: n for i, n in enumerate(_COCO_CATEGORIES) if i and n != "N/A"}
        self.eval()

    # -- weights -------------------------------------------------------------------------------------
    def load_upstream_state(self, state: dict[str, torch.Tensor]) -> None:
        """A torchvision Faster R-CNN R50-FPN state dict (``model.state_dict()``); every key and shape must match."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if missing or extra:
            raise ValueError(f"{len(missing)} missing keys (e.g. {missing[:1]}), {len(extra)} unexpected (e.g. "
                             f"{extra[:1]}): not a torchvision Faster R-CNN R50-FPN state dict")  # fmt: skip
        wrong = [k for k in own if own[k].shape != state[k].shape]
        if wrong:
            raise ValueError(f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}")
        self.load_state_dict(state)

    # -- split interface -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.backbone.body.conv1.weight.device

    def geometry(self, orig_hw: tuple[int, int]) -> LetterboxGeometry:
        return self.transform.geometry(orig_hw)

    def level_shapes(self, geometry: LetterboxGeometry) -> dict[str, tuple[int, int, int]]:
        return strided_shapes(self, geometry)

    @torch.inference_mode()
    def front(self, image: np.ndarray) -> FeatureSet:
        """RGB uint8 (H, W, 3) -> P2..P5 on the CPU (torchvision's own normalisation, resize and padding)."""
        g = self.geometry(image.shape[:2])
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).to(self.device).float() / 255.0
        batch, _ = self.rcnn_transform([x])
        if tuple(batch.tensors.shape[-2:]) != g.input_hw or tuple(batch.image_sizes[0]) != self.transform.resized_hw(
            g.orig_hw
        ):  # the geometry the decoder derives from the image size must be torchvision's
            got = tuple(batch.tensors.shape[-2:])
            raise RuntimeError(f"torchvision resized {g.orig_hw} to {got}, not {g.input_hw}")
        levels = self.backbone(batch.tensors)  # OrderedDict "0".."3" and "pool" (P6, recomputed on the server)
        return FeatureSet({n: levels[k].cpu() for n, k in zip(self.level_names, self._fpn_keys, strict=True)}, g)

    def _server_levels(self, levels: dict[str, torch.Tensor]) -> OrderedDict:
        """P2..P5 and the pool level P6, recomputed from P5 on the server (torchvision's LastLevelMaxPool)."""
        out = OrderedDict((k, levels[n].float().to(self.device)) for n, k in zip(self.level_names, self._fpn_keys,
                                                                                  strict=True))  # fmt: skip
        out["pool"] = F.max_pool2d(out["3"], 1, 2, 0)
        return out

    @torch.inference_mode()
    def back(self, features: FeatureSet) -> Detections:
        g = features.geometry
        resized = self.transform.resized_hw(g.orig_hw)
        feats = self._server_levels(features.levels)
        shape_only = torch.zeros((), device=self.device).expand(1, 3, *g.input_hw)  # the RPN reads only its shape
        images = ImageList(shape_only, [resized])
        proposals, _ = self.rpn(images, feats)
        dets, _ = self.roi_heads(feats, proposals, images.image_sizes)
        det = self.rcnn_transform.postprocess(dets, images.image_sizes, [g.orig_hw])[0]
        return Detections(det["boxes"].cpu().numpy().astype(np.float64), det["scores"].cpu().numpy().astype(np.float64),
                          det["labels"].cpu().numpy().astype(np.int64))  # fmt: skip

    def detect(self, image: np.ndarray) -> Detections:
        return self.back(self.front(image))

    # -- task metric: the RPN head, the part of the back half that looks at every level cell by cell ----------
    def _rpn_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, A + 4A, H, W): the anchors' objectness probabilities and box deltas of one level."""
        head = self.rpn.head
        t = head.conv(x)
        return torch.cat((head.cls_logits(t).sigmoid(), head.bbox_pred(t)), 1)

    def output_weights(self, p: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Objectness 1 everywhere, each anchor's box deltas its objectness squared (they matter where it fires)."""
        a = self.rpn.head.cls_logits.out_channels
        obj = p.narrow(dim, 0, a)
        box = (obj**2).repeat_interleave(4, dim)
        return torch.cat((torch.ones_like(obj), box), dim)

    def head_outputs(self, levels: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [self._rpn_outputs(levels[n].to(self.device)) for n in self.level_names]

    def head_error(self, levels: dict[str, torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for p, ref in zip(self.head_outputs(levels), reference, strict=True):
            total = total + (self.output_weights(ref) * (p - ref) ** 2).sum()
        return total.to(levels[self.level_names[0]].device)

    @torch.no_grad()
    def objectness_map(self, levels: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, H, W) at the coarsest level: the highest anchor objectness of any level inside each cell."""
        size = levels[self.level_names[-1]].shape[-2:]
        a = self.rpn.head.cls_logits.out_channels
        out = None
        for name in self.level_names:
            obj = self._rpn_outputs(levels[name].to(self.device).float())[:, :a].amax(1, keepdim=True)
            m = F.adaptive_max_pool2d(obj, size)
            out = m if out is None else torch.maximum(out, m)
        return out.to(levels[self.level_names[-1]].device)

    def level_sensitivity(self, levels: dict[str, torch.Tensor], samples: int = 16, probes: int = 8):
        """Per level, (C, C) float64: the RPN head's expected weighted output change per feature error."""
        return {n: probed_sensitivity(self._rpn_outputs, self.output_weights, levels[n][:samples].to(self.device),
                                      probes, seed=i).to(levels[n].device)
                for i, n in enumerate(self.level_names)}  # fmt: skip


def random_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A Faster R-CNN R50-FPN state dict with torchvision's initialisation under a fixed seed: a real network to run
    the whole pipeline where the trained weights cannot be downloaded (tests, CI)."""
    torch.manual_seed(seed)
    return FasterRCNNDetector("random").state_dict()
