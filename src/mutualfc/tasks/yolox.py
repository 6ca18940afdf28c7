"""YOLOX-Nano split at the three PAFPN outputs that feed the decoupled head (P3 / P4 / P5).

Written from the published architecture (Ge et al., 2021: Focus stem, CSPDarknet with SPP, PAFPN, decoupled head,
depthwise-separable convolutions at depth 0.33 / width 0.25). The weights come from the upstream ONNX export, read
with the ``onnx`` package (protobuf: no pickle, no code runs); its BatchNorm is folded into the convolutions, so every
convolution here has a bias.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from mutualfc.errors import WeightsError
from mutualfc.tasks.base import Detections, FeatureSet, LetterboxGeometry, split_front, strided_shapes
from mutualfc.tasks.metric import probed_sensitivity
from mutualfc.tasks.yolov5 import COCO80_CATEGORY_IDS, COCO80_NAMES


class Conv(nn.Module):
    """Convolution (BatchNorm folded: with bias) + SiLU; ``depthwise``: a k x k depthwise one, then a 1x1."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, depthwise: bool = False):
        super().__init__()
        if depthwise:
            self.convs = nn.ModuleList([nn.Conv2d(c_in, c_in, k, s, k // 2, groups=c_in), nn.Conv2d(c_in, c_out, 1)])
        else:
            self.convs = nn.ModuleList([nn.Conv2d(c_in, c_out, k, s, k // 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.silu(conv(x))
        return x


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 1), Conv(c, c, 3, depthwise=True), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class CSPLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool = True):
        super().__init__()
        hidden = c_out // 2
        self.cv1, self.cv2 = Conv(c_in, hidden, 1), Conv(c_in, hidden, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(n)))
        self.cv3 = Conv(2 * hidden, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x), self.cv2(x)  # in this order: the upstream graph's (weights are matched by order)
        return self.cv3(torch.cat((self.m(a), b), 1))


class SPP(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernels: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        hidden = c_in // 2
        self.cv1, self.cv2, self.kernels = Conv(c_in, hidden, 1), Conv(hidden * (len(kernels) + 1), c_out, 1), kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [F.max_pool2d(x, k, 1, k // 2) for k in self.kernels], 1))


class YOLOXBody(nn.Module):
    """Focus + CSPDarknet + PAFPN -> (P3, P4, P5) at strides 8, 16, 32."""

    def __init__(self, w: int = 16):
        super().__init__()
        self.stem = Conv(12, w, 3)
        self.dark2 = nn.Sequential(Conv(w, 2 * w, 3, 2, True), CSPLayer(2 * w, 2 * w, 1))
        self.dark3 = nn.Sequential(Conv(2 * w, 4 * w, 3, 2, True), CSPLayer(4 * w, 4 * w, 3))
        self.dark4 = nn.Sequential(Conv(4 * w, 8 * w, 3, 2, True), CSPLayer(8 * w, 8 * w, 3))
        self.dark5 = nn.Sequential(
            Conv(8 * w, 16 * w, 3, 2, True), SPP(16 * w, 16 * w), CSPLayer(16 * w, 16 * w, 1, False)
        )
        self.lateral0 = Conv(16 * w, 8 * w, 1)
        self.c3_p4 = CSPLayer(16 * w, 8 * w, 1, False)
        self.reduce1 = Conv(8 * w, 4 * w, 1)
        self.c3_p3 = CSPLayer(8 * w, 4 * w, 1, False)
        self.down2 = Conv(4 * w, 4 * w, 3, 2, True)
        self.c3_n3 = CSPLayer(8 * w, 8 * w, 1, False)
        self.down1 = Conv(8 * w, 8 * w, 3, 2, True)
        self.c3_n4 = CSPLayer(16 * w, 16 * w, 1, False)
        self.out_channels = (4 * w, 8 * w, 16 * w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Focus: space-to-depth in the order top-left, bottom-left, top-right, bottom-right
        x = torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)
        c3 = self.dark3(self.dark2(self.stem(x)))
        c4 = self.dark4(c3)
        c5 = self.dark5(c4)
        top = self.lateral0(c5)
        mid = self.c3_p4(torch.cat((F.interpolate(top, scale_factor=2.0, mode="nearest"), c4), 1))
        fine = self.reduce1(mid)
        p3 = self.c3_p3(torch.cat((F.interpolate(fine, scale_factor=2.0, mode="nearest"), c3), 1))
        p4 = self.c3_n3(torch.cat((self.down2(p3), fine), 1))
        p5 = self.c3_n4(torch.cat((self.down1(p4), top), 1))
        return p3, p4, p5


class DecoupledHead(nn.Module):
    """Per level: a 1x1 stem, then two 3x3 (depthwise) branches for classes and for box + objectness."""

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...], num_classes: int = 80, width: int = 64):
        super().__init__()
        self.strides, self.nc = strides, num_classes
        self.stems = nn.ModuleList(Conv(c, width, 1) for c in channels)
        self.cls_convs = nn.ModuleList(nn.Sequential(Conv(width, width, 3, 1, True), Conv(width, width, 3, 1, True))
                                       for _ in channels)  # fmt: skip
        self.reg_convs = nn.ModuleList(nn.Sequential(Conv(width, width, 3, 1, True), Conv(width, width, 3, 1, True))
                                       for _ in channels)  # fmt: skip
        self.cls_preds = nn.ModuleList(nn.Conv2d(width, num_classes, 1) for _ in channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(width, 4, 1) for _ in channels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(width, 1, 1) for _ in channels)

    def level_outputs(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """(B, 85, H, W): raw box offsets, objectness and class probabilities of level ``i``."""
        x = self.stems[i](x)
        cls = self.cls_preds[i](self.cls_convs[i](x))
        reg_feat = self.reg_convs[i](x)
        return torch.cat((self.reg_preds[i](reg_feat), self.obj_preds[i](reg_feat).sigmoid(), cls.sigmoid()), 1)

    def objectness(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.obj_preds[i](self.reg_convs[i](self.stems[i](x))).sigmoid()

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """-> (B, N, 85): xywh in input pixels, objectness, class probabilities."""
        out = []
        for i, x in enumerate(levels):
            y = self.level_outputs(i, x)
            b, _, h, w = y.shape
            y = y.flatten(2).transpose(1, 2)
            gy, gx = torch.meshgrid(torch.arange(h, device=y.device), torch.arange(w, device=y.device), indexing="ij")
            grid = torch.stack((gx, gy), 2).view(1, -1, 2).to(y.dtype)
            s = self.strides[i]
            out.append(torch.cat(((y[..., :2] + grid) * s, y[..., 2:4].exp() * s, y[..., 4:]), -1))
        return torch.cat(out, 1)


def postprocess(pred: torch.Tensor, conf: float = 0.001, iou: float = 0.65) -> torch.Tensor:
    """One image's (N, 85) predictions -> (K, 6) x1y1x2y2, score, class: the best class per box, class-wise NMS."""
    cls_conf, cls = pred[:, 5:].max(1)
    score = pred[:, 4] * cls_conf
    keep = score >= conf
    pred, score, cls = pred[keep], score[keep], cls[keep]
    xy, wh = pred[:, :2], pred[:, 2:4] / 2
    boxes = torch.cat((xy - wh, xy + wh), 1)
    order = torchvision.ops.batched_nms(boxes, score, cls, iou)
    return torch.cat((boxes[order], score[order, None], cls[order, None].to(boxes.dtype)), 1)


class TopLeftResize:
    """YOLOX's pre-processing: the long side resized to ``size``, the image at the top-left of a ``size`` x ``size``
    canvas of ``pad_value``, BGR, 0..255 (no normalisation)."""

    def __init__(self, size: int = 416, pad_value: int = 114):
        self.size, self.pad_value = size, pad_value

    def geometry(self, orig_hw: tuple[int, int]) -> LetterboxGeometry:
        r = min(self.size / orig_hw[0], self.size / orig_hw[1])
        return LetterboxGeometry(tuple(orig_hw), (self.size, self.size), r, 0, 0)

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, LetterboxGeometry]:
        g = self.geometry(image.shape[:2])
        h, w = g.orig_hw
        nh, nw = max(1, int(h * g.ratio)), max(1, int(w * g.ratio))  # upstream truncates
        if (nh, nw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        canvas = np.full((self.size, self.size, 3), self.pad_value, dtype=np.uint8)
        canvas[:nh, :nw] = image[..., ::-1]  # RGB -> BGR
        return torch.from_numpy(canvas).permute(2, 0, 1).unsqueeze(0).float(), g


def read_onnx_convs(path: str | Path) -> list[tuple[str, torch.Tensor, torch.Tensor | None, int]]:
    """The convolutions of an ONNX graph in graph order: (node name, weight, bias, groups). Read with ``onnx``
    (protobuf only). One-line errors for a file that is not an ONNX model."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsError("reading ONNX weights needs the onnx package: pip install onnx") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: protobuf's own errors vary
        raise WeightsError(f"{path}: not an ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    init = {t.name: t for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        missing = [n for n in node.input[1:] if n not in init]
        if missing:
            raise WeightsError(f"{path}: convolution {node.name or node.output[0]} has no stored weight {missing[0]}")
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = torch.from_numpy(numpy_helper.to_array(init[node.input[1]]).copy())
        bias = torch.from_numpy(numpy_helper.to_array(init[node.input[2]]).copy()) if len(node.input) > 2 else None
        out.append((node.name or node.output[0], weight, bias, groups))
    return out


class YOLOXDetector(nn.Module):
    """YOLOX-Nano as named parts: ``transform`` (top-left resize, BGR), ``body`` (-> P3/P4/P5), ``head``
    (decoupled)."""

    level_names = ("p3", "p4", "p5")
    level_strides = (8, 16, 32)
    input_size = 416

    def __init__(self, name: str, width: int = 16, category_ids: tuple[int, ...] = COCO80_CATEGORY_IDS):
        super().__init__()
        self.name = name
        self.transform = TopLeftResize(self.input_size, 114)
        self.body = YOLOXBody(width)
        self.level_channels = self.body.out_channels
        self.head = DecoupledHead(self.level_channels, self.level_strides, len(category_ids), 4 * width)
        self.category_ids = np.asarray(category_ids)
        self.category_names = dict(zip(COCO80_CATEGORY_IDS, COCO80_NAMES, strict=True))
        self.conf, self.iou = 0.001, 0.65
        self.eval()

    # -- weights -------------------------------------------------------------------------------------
    def execution_order(self) -> list[nn.Conv2d]:
        """Every convolution in the order a forward pass runs them (the order an exported graph lists them)."""
        order: list[nn.Conv2d] = []
        hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in self.modules()
                 if isinstance(m, nn.Conv2d)]  # fmt: skip
        try:
            with torch.no_grad():
                self.head(list(self.body(torch.zeros(1, 3, 64, 64, device=self.device))))
        finally:
            for h in hooks:
                h.remove()
        return order

    def load_weights_file(self, path: str | Path) -> None:
        """Weights from the upstream ONNX export (BatchNorm folded), matched to this network's convolutions in
        execution order; every shape and group count must agree."""
        convs = read_onnx_convs(path)
        own = self.execution_order()
        if len(convs) != len(own):
            raise WeightsError(f"{path}: {len(convs)} convolutions, {self.name} has {len(own)}: not its weights")
        for (name, w, b, groups), conv in zip(convs, own, strict=True):
            if w.shape != conv.weight.shape or groups != conv.groups or b is None:
                want = f"{tuple(conv.weight.shape)} in {conv.groups}"
                raise WeightsError(
                    f"{path}: convolution {name} is {tuple(w.shape)} in {groups} groups, {self.name} expects {want}"
                )
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(b)

    # -- split interface -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.head.cls_preds[0].weight.device

    def geometry(self, orig_hw: tuple[int, int]) -> LetterboxGeometry:
        return self.transform.geometry(orig_hw)

    def level_shapes(self, geometry: LetterboxGeometry) -> dict[str, tuple[int, int, int]]:
        return strided_shapes(self, geometry)

    @torch.inference_mode()
    def front(self, image: np.ndarray) -> FeatureSet:
        """-> the split features, on the CPU (where codecs code) whatever device the network runs on."""
        return split_front(self, image)

    @torch.inference_mode()
    def back(self, features: FeatureSet) -> Detections:
        levels = [features.levels[n].float().to(self.device) for n in self.level_names]
        det = postprocess(self.head(levels)[0].cpu(), self.conf, self.iou)
        boxes = det[:, :4] / features.geometry.ratio
        return Detections(boxes.numpy().astype(np.float64), det[:, 4].numpy().astype(np.float64),
                          self.category_ids[det[:, 5].long().numpy()])  # fmt: skip

    def detect(self, image: np.ndarray) -> Detections:
        return self.back(self.front(image))

    # -- task metric (the learned codecs' distortion, skipping and training term) ---------------------
    @staticmethod
    def output_weights(p: torch.Tensor, dim: int) -> torch.Tensor:
        """Importance of each head output along ``dim`` (4 box offsets, objectness, 80 classes) given the reference
        outputs ``p``: objectness 1 everywhere, boxes and classes objectness squared (they matter where there is
        an object)."""
        obj = p.narrow(dim, 4, 1)
        w = (obj**2).expand_as(p).clone()
        w.narrow(dim, 4, 1).fill_(1.0)
        return w

    def head_outputs(self, levels: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The head's outputs per level, (B, 85, H, W), on the head's device."""
        return [self.head.level_outputs(i, levels[n].to(self.device)) for i, n in enumerate(self.level_names)]

    def head_error(self, levels: dict[str, torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for p, ref in zip(self.head_outputs(levels), reference, strict=True):
            total = total + (self.output_weights(ref, dim=1) * (p - ref) ** 2).sum()
        return total.to(levels[self.level_names[0]].device)

    @torch.no_grad()
    def objectness_map(self, levels: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, H, W) at the coarsest level: the highest objectness any level predicts inside each cell."""
        size = levels[self.level_names[-1]].shape[-2:]
        out = None
        for i, name in enumerate(self.level_names):
            m = F.adaptive_max_pool2d(self.head.objectness(i, levels[name].to(self.device).float()), size)
            out = m if out is None else torch.maximum(out, m)
        return out.to(levels[self.level_names[-1]].device)

    def level_sensitivity(self, levels: dict[str, torch.Tensor], samples: int = 16, probes: int = 8):
        """Per level, (C, C) float64: the expected squared change of the head's weighted outputs per feature
        error (``probed_sensitivity``: the head is not one 1x1 convolution), from the first ``samples`` images."""
        out = {}
        for i, name in enumerate(self.level_names):
            x = levels[name][:samples].to(self.device)
            s = probed_sensitivity(lambda t, i=i: self.head.level_outputs(i, t),
                                   lambda p: self.output_weights(p, dim=1), x, probes, seed=i)  # fmt: skip
            out[name] = s.to(levels[name].device)
        return out
