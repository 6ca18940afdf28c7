"""YOLOv5 v6 detector split at the neck outputs P3/P4/P5 (the inputs of the Detect head)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from mutualfc.tasks.base import Detections, FeatureSet, LetterboxGeometry, split_front, strided_shapes
from mutualfc.tasks.layers import C3, SPPF, Concat, ConvBnAct, Upsample2x

# COCO category ids of the 80 training classes, in class-index order.
COCO80_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip
# Their names, in the same order.
COCO80_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


class Letterbox:
    """Resize keeping aspect ratio so the long side is ``size``, pad to a multiple of ``stride`` (value 114)."""

    def __init__(self, size: int = 640, stride: int = 32, pad_value: int = 114):
        self.size, self.stride, self.pad_value = size, stride, pad_value

    def geometry(self, orig_hw: tuple[int, int]) -> LetterboxGeometry:
        h, w = orig_hw
        r = self.size / max(h, w)
        nh, nw = self.resized_hw((h, w), r)
        ih = int(math.ceil(nh / self.stride) * self.stride)
        iw = int(math.ceil(nw / self.stride) * self.stride)
        # split padding like YOLOv5 (round(d - 0.1) on the top/left side)
        top = int(round((ih - nh) / 2 - 0.1))
        left = int(round((iw - nw) / 2 - 0.1))
        return LetterboxGeometry((h, w), (ih, iw), r, left, top)

    @staticmethod
    def resized_hw(orig_hw: tuple[int, int], ratio: float) -> tuple[int, int]:
        """The image's size inside the letterbox: at least one pixel a side (a 1 x 20000 strip stays visible)."""
        return max(1, int(round(orig_hw[0] * ratio))), max(1, int(round(orig_hw[1] * ratio)))

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, LetterboxGeometry]:
        """HxWx3 uint8 RGB -> 1x3xHxW float tensor in [0, 1]."""
        g = self.geometry(image.shape[:2])
        h, w = g.orig_hw
        nh, nw = self.resized_hw((h, w), g.ratio)
        if (nh, nw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        canvas = np.full((*g.input_hw, 3), self.pad_value, dtype=np.uint8)
        canvas[g.pad_top : g.pad_top + nh, g.pad_left : g.pad_left + nw] = image
        x = torch.from_numpy(canvas).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        return x, g


class YOLOv5Body(nn.Module):
    """Backbone + PAN neck (upstream layers 0..23); returns P3, P4, P5."""

    def __init__(self, width: float = 0.25, depth: float = 0.33):
        super().__init__()

        def c(ch: int) -> int:
            return int(math.ceil(ch * width / 8) * 8)

        def n(k: int) -> int:
            return max(round(k * depth), 1)

        self.layers = nn.ModuleList(
            [
                ConvBnAct(3, c(64), 6, 2, 2),  # 0
                ConvBnAct(c(64), c(128), 3, 2),  # 1
                C3(c(128), c(128), n(3)),  # 2
                ConvBnAct(c(128), c(256), 3, 2),  # 3
                C3(c(256), c(256), n(6)),  # 4  stride 8
                ConvBnAct(c(256), c(512), 3, 2),  # 5
                C3(c(512), c(512), n(9)),  # 6  stride 16
                ConvBnAct(c(512), c(1024), 3, 2),  # 7
                C3(c(1024), c(1024), n(3)),  # 8
                SPPF(c(1024), c(1024), 5),  # 9  stride 32
                ConvBnAct(c(1024), c(512), 1, 1),  # 10
                Upsample2x(),  # 11
                Concat(),  # 12 (with 6)
                C3(c(1024), c(512), n(3), False),  # 13
                ConvBnAct(c(512), c(256), 1, 1),  # 14
                Upsample2x(),  # 15
                Concat(),  # 16 (with 4)
                C3(c(512), c(256), n(3), False),  # 17 -> P3
                ConvBnAct(c(256), c(256), 3, 2),  # 18
                Concat(),  # 19 (with 14)
                C3(c(512), c(512), n(3), False),  # 20 -> P4
                ConvBnAct(c(512), c(512), 3, 2),  # 21
                Concat(),  # 22 (with 10)
                C3(c(1024), c(1024), n(3), False),  # 23 -> P5
            ]
        )
        self.out_channels = (c(256), c(512), c(1024))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.layers
        x = m[0](x)
        x = m[1](x)
        x = m[2](x)
        x = m[3](x)
        x4 = m[4](x)
        x = m[5](x4)
        x6 = m[6](x)
        x = m[7](x6)
        x = m[8](x)
        x = m[9](x)
        x10 = m[10](x)
        x = m[13](torch.cat((m[11](x10), x6), 1))
        x14 = m[14](x)
        p3 = m[17](torch.cat((m[15](x14), x4), 1))
        p4 = m[20](torch.cat((m[18](p3), x14), 1))
        p5 = m[23](torch.cat((m[21](p4), x10), 1))
        return p3, p4, p5


class DetectHead(nn.Module):
    """Per-level 1x1 convolutions and YOLOv5 box decoding (anchors stored in stride units, as upstream)."""

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...], num_classes: int = 80):
        super().__init__()
        self.nc, self.na, self.no = num_classes, 3, num_classes + 5
        self.strides = strides
        self.m = nn.ModuleList(nn.Conv2d(ch, self.na * self.no, 1) for ch in channels)
        self.register_buffer("anchors", torch.zeros(len(channels), self.na, 2))

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """-> (B, N, 85) with xywh in input pixels, objectness and class probabilities."""
        out = []
        for i, x in enumerate(levels):
            b, _, h, w = x.shape
            y = self.m[i](x).view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).sigmoid()
            ar = {"dtype": y.dtype, "device": y.device}
            gy, gx = torch.meshgrid(torch.arange(h, **ar), torch.arange(w, **ar), indexing="ij")
            grid = torch.stack((gx, gy), 2).view(1, 1, h, w, 2)
            anchor_px = (self.anchors[i] * self.strides[i]).view(1, self.na, 1, 1, 2)
            xy = (y[..., :2] * 2 - 0.5 + grid) * self.strides[i]
            wh = (y[..., 2:4] * 2) ** 2 * anchor_px
            out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(b, -1, self.no))
        return torch.cat(out, 1)


def non_max_suppression(
    pred: torch.Tensor, conf: float = 0.001, iou: float = 0.65, max_det: int = 300, max_nms: int = 30000
) -> torch.Tensor:
    """Multi-label class-wise NMS on one image's (N, 85) predictions -> (K, 6) x1y1x2y2, score, class."""
    pred = pred[pred[:, 4] > conf]
    if not len(pred):
        return pred.new_zeros((0, 6))
    scores = pred[:, 5:] * pred[:, 4:5]
    xy, wh = pred[:, :2], pred[:, 2:4] / 2
    boxes = torch.cat((xy - wh, xy + wh), 1)
    i, j = (scores > conf).nonzero(as_tuple=True)
    det = torch.cat((boxes[i], scores[i, j, None], j[:, None].float()), 1)
    if len(det) > max_nms:
        det = det[det[:, 4].argsort(descending=True)[:max_nms]]
    keep = torchvision.ops.batched_nms(det[:, :4], det[:, 4], det[:, 5].long(), iou)[:max_det]
    return det[keep]


class YOLOv5Detector(nn.Module):
    """YOLOv5 v6 as named parts: ``transform`` (letterbox), ``body`` (-> P3/P4/P5), ``head`` (Detect)."""

    level_names = ("p3", "p4", "p5")
    level_strides = (8, 16, 32)

    def __init__(self, name: str, width: float, depth: float, category_ids: tuple[int, ...] = COCO80_CATEGORY_IDS):
        super().__init__()
        self.name = name
        self.transform = Letterbox(640, 32, 114)
        self.body = YOLOv5Body(width, depth)
        self.level_channels = self.body.out_channels
        self.head = DetectHead(self.level_channels, self.level_strides, len(category_ids))
        self.category_ids = np.asarray(category_ids)
        self.category_names = dict(zip(COCO80_CATEGORY_IDS, COCO80_NAMES, strict=True))
        self.conf, self.iou, self.max_det = 0.001, 0.65, 300
        self.eval()

    # -- weights -------------------------------------------------------------------------------------
    @staticmethod
    def upstream_to_local(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map upstream keys ``model.<i>.*`` to ``body.layers.<i>.*`` / ``head.*`` (``model.24``)."""
        out = {}
        for k, v in state.items():
            if not k.startswith("model."):
                raise KeyError(k)
            _, idx, rest = k.split(".", 2)
            out[f"head.{rest}" if int(idx) == 24 else f"body.layers.{idx}.{rest}"] = v
        return out

    def load_upstream_state(self, state: dict[str, torch.Tensor]) -> None:
        local = self.upstream_to_local(state)
        own = self.state_dict()
        missing = sorted(set(own) - set(local))
        unexpected = sorted(set(local) - set(own))
        bad = [k for k in own if k in local and own[k].shape != local[k].shape]
        if missing or unexpected or bad:
            raise ValueError(
                f"weights do not fit {self.name}: {len(missing)} missing, {len(unexpected)} unexpected, "
                f"{len(bad)} wrong-shaped tensors (e.g. {(missing + unexpected + bad)[:1]})"
            )
        self.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in local.items()})

    # -- split interface -----------------------------------------------------------------------------
    def geometry(self, orig_hw: tuple[int, int]) -> LetterboxGeometry:
        return self.transform.geometry(orig_hw)

    def level_shapes(self, geometry: LetterboxGeometry) -> dict[str, tuple[int, int, int]]:
        return strided_shapes(self, geometry)

    @property
    def device(self) -> torch.device:
        return self.head.m[0].weight.device

    @torch.inference_mode()
    def front(self, image: np.ndarray) -> FeatureSet:
        """-> the split features, on the CPU (where codecs code) whatever device the network runs on."""
        return split_front(self, image)

    @torch.inference_mode()
    def back(self, features: FeatureSet) -> Detections:
        levels = [features.levels[n].float().to(self.device) for n in self.level_names]
        pred = self.head(levels)[0].cpu()
        det = non_max_suppression(pred, self.conf, self.iou, self.max_det)
        g = features.geometry
        boxes = det[:, :4].clone()
        boxes[:, [0, 2]] -= g.pad_left
        boxes[:, [1, 3]] -= g.pad_top
        boxes /= g.ratio
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, g.orig_hw[1])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, g.orig_hw[0])
        return Detections(
            boxes.numpy().astype(np.float64),
            det[:, 4].numpy().astype(np.float64),
            self.category_ids[det[:, 5].long().numpy()],
        )

    def detect(self, image: np.ndarray) -> Detections:
        return self.back(self.front(image))

    @torch.no_grad()
    def level_sensitivity(self, levels: dict[str, torch.Tensor], samples: int = 200_000) -> dict[str, torch.Tensor]:
        """How much a feature error at each level changes the detections, as a (C, C) float64 matrix per level.

        The Detect head is a 1x1 convolution plus sigmoid, so to first order an error ``e`` in one position's feature
        vector moves the outputs by ``diag(s') W e``. Objectness errors count everywhere; box and class errors count
        in proportion to objectness squared (they only matter where there is an object). The matrix is that
        quadratic form averaged over the given positions: a codec that measures distortion as ``e^T S e`` spends
        its bits where the detector looks (e.g. on low-variance channels that carry objectness)."""
        out = {}
        for i, name in enumerate(self.level_names):  # on the head's device; the matrices where the levels were
            x = levels[name].to(self.device).double().permute(0, 2, 3, 1).reshape(-1, levels[name].shape[1])
            if x.shape[0] > samples:
                x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(i))[:samples]]
            na, no = self.head.na, self.head.no
            w = self.head.m[i].weight.double().view(na, no, -1)
            b = self.head.m[i].bias.double().view(na, no)
            s = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            for a in range(na):
                p = torch.sigmoid(x @ w[a].T + b[a])
                weight = (p * (1 - p)) ** 2 * self.output_weights(p, dim=1)
                s += w[a].T @ (weight.sum(0)[:, None] * w[a])
            out[name] = (s / max(x.shape[0], 1)).to(levels[name].device)
        return out

    @staticmethod
    def output_weights(p: torch.Tensor, dim: int) -> torch.Tensor:
        """Importance of each head output (along ``dim``, 85 = xywh, objectness, 80 classes) given the reference
        outputs ``p``: objectness 1 everywhere, boxes and classes objectness squared."""
        obj = p.narrow(dim, 4, 1)
        w = (obj**2).expand_as(p).clone()
        w.narrow(dim, 4, 1).fill_(1.0)
        return w

    def head_outputs(self, levels: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The head's sigmoid outputs per level, (B, anchors, 85, H, W)."""
        out = []
        for i, name in enumerate(self.level_names):
            x = levels[name].to(self.device)
            out.append(self.head.m[i](x).view(x.shape[0], self.head.na, self.head.no, *x.shape[-2:]).sigmoid())
        return out

    @torch.no_grad()
    def objectness_map(self, levels: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, H, W) at the coarsest level: the highest objectness any anchor of any level predicts inside each
        cell. An encoder that has the features can tell where the detector sees nothing at all."""
        size = levels[self.level_names[-1]].shape[-2:]
        rows = [4 + a * self.head.no for a in range(self.head.na)]  # only the objectness outputs are computed
        out = None
        for i, name in enumerate(self.level_names):  # on the head's device, the map where the levels were
            conv, x = self.head.m[i], levels[name].to(self.device).float()
            w = conv.weight[rows].view(len(rows), -1)  # a 1x1 convolution with 3 outputs as a matrix product:
            p = torch.matmul(w, x.flatten(2)).add_(conv.bias[rows].view(-1, 1))  # ~10x faster than conv2d on CPU
            p = p.view(x.shape[0], len(rows), *x.shape[-2:]).sigmoid()
            m = F.adaptive_max_pool2d(p.amax(1, keepdim=True), size)
            out = m if out is None else torch.maximum(out, m)
        return out.to(levels[self.level_names[-1]].device)

    def head_error(self, levels: dict[str, torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
        """Sum over positions of the weighted squared change of the head's outputs against ``reference``
        (``head_outputs`` of the original features): the exact quantity ``level_sensitivity`` linearises, so it
        still sees large errors (e.g. an error that lifts a confidently-background objectness)."""
        total = 0.0
        for p, ref in zip(self.head_outputs(levels), reference, strict=True):
            total = total + (self.output_weights(ref, dim=2) * (p - ref) ** 2).sum()
        return total.to(levels[self.level_names[0]].device)
