"""Networks other than the shipped ones: a user's two-level network registered in a few lines, and torchvision's
Faster R-CNN R50-FPN at P2-P5 (four levels, random weights under a fixed seed) through train -> checkpoint -> encode
-> container -> decode -> detect."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mutualfc import bitstream
from mutualfc.codecs import create_codec
from mutualfc.errors import WeightsError
from mutualfc.tasks import create_task, describe_task, register_task
from mutualfc.tasks.base import Detections, FeatureSet, LetterboxGeometry
from mutualfc.tasks.metric import probed_sensitivity
from mutualfc.train import TrainConfig, build_feature_cache, export_checkpoint, train
from tests.conftest import EXAMPLE, ROOT

SMALL = {"width": 32, "hyper": 16, "residual": 8, "qualities": 4, "init_samples": 2000}  # no levels: the task's


class TwoLevelNet(nn.Module):
    """The smallest network that satisfies the split and task-metric protocols: two levels (strides 16 and 32), a
    1x1 head per level predicting objectness and a box."""

    name = "two-level-test"
    level_names = ("s16", "s32")
    level_channels = (12, 24)
    level_strides = (16, 32)
    category_names = {1: "thing"}

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 16, 16)
        self.down = nn.Conv2d(12, 24, 2, 2)
        self.heads = nn.ModuleList(nn.Conv2d(c, 5, 1) for c in self.level_channels)
        self.size = 128
        self.eval()

    def geometry(self, orig_hw):
        r = self.size / max(orig_hw)
        return LetterboxGeometry(tuple(orig_hw), (self.size, self.size), r, 0, 0)

    def level_shapes(self, g):
        return {n: (c, self.size // s, self.size // s)
                for n, c, s in zip(self.level_names, self.level_channels, self.level_strides, strict=True)}  # fmt: skip

    def load_upstream_state(self, state):
        self.load_state_dict(state)

    @torch.inference_mode()
    def front(self, image):
        g = self.geometry(image.shape[:2])
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        a = torch.relu(self.stem(x))
        return FeatureSet({"s16": a, "s32": torch.relu(self.down(a))}, g)

    @torch.inference_mode()
    def back(self, features):
        outs = self.head_outputs(features.levels)
        obj = torch.cat([o[0, 0].flatten() for o in outs])
        i = int(obj.argmax())
        s = float(obj[i])
        return Detections(np.array([[0.0, 0.0, 10.0, 10.0]]) * (i + 1), np.array([s]), np.array([1]))

    def detect(self, image):
        return self.back(self.front(image))

    def head_outputs(self, levels):
        return [torch.cat((h(levels[n])[:, :1].sigmoid(), h(levels[n])[:, 1:]), 1)
                for h, n in zip(self.heads, self.level_names, strict=True)]  # fmt: skip

    def head_error(self, levels, reference):
        return sum(((p - r) ** 2).sum() for p, r in zip(self.head_outputs(levels), reference, strict=True))

    @torch.no_grad()
    def objectness_map(self, levels):
        size = levels["s32"].shape[-2:]
        return torch.stack([F.adaptive_max_pool2d(o[:, :1], size) for o in self.head_outputs(levels)]).amax(0)

    def level_sensitivity(self, levels, samples=16, probes=4):
        return {n: probed_sensitivity(lambda t, i=i: self.heads[i](t), torch.ones_like, levels[n][:samples], probes)
                for i, n in enumerate(self.level_names)}  # fmt: skip


@pytest.fixture(scope="module")
def two_level_weights(tmp_path_factory):
    try:
        register_task(TwoLevelNet.name, TwoLevelNet)
    except WeightsError:
        pass  # registered by an earlier test module run in this process
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w2") / "two-level.pth"
    torch.save(TwoLevelNet().state_dict(), path)
    return path


def _train_and_export(task_name, weights, images, folder, model, crop, steps=2):
    cache = folder / "cache"
    build_feature_cache(create_task(task_name, weights=weights), images, cache, progress=False)
    cfg = TrainConfig(cache=str(cache), task=task_name, weights=str(weights), model=model, steps=steps, batch=2,
                      crop=crop, checkpoint_every=1, log_every=1)  # fmt: skip
    train(cfg, folder / "run", progress=False)
    out = folder / "codec.pt"
    export_checkpoint(folder / "run", out, "codec")
    return out


def test_a_two_level_network_registers_and_runs_train_encode_decode(two_level_weights, tmp_path, example_images):
    """A user's network in a few lines: registered by name, its levels drive the codec (no level or channel count
    from elsewhere), a few training steps give a checkpoint whose streams decode to the encoder's reconstruction."""
    with pytest.raises(WeightsError, match="declares no weights file"):
        create_task(TwoLevelNet.name)
    with pytest.raises(WeightsError, match="already registered"):
        register_task(TwoLevelNet.name, TwoLevelNet)
    assert describe_task(TwoLevelNet.name)["levels"][1] == {"name": "s32", "channels": 24, "stride": 32}
    ckpt = _train_and_export(TwoLevelNet.name, two_level_weights, EXAMPLE / "images", tmp_path, SMALL, crop=2)
    task = create_task(TwoLevelNet.name, weights=two_level_weights)
    for arch in ("mutual", "separate"):
        if arch == "separate":
            cfg = TrainConfig(cache=str(tmp_path / "cache"), task=TwoLevelNet.name, weights=str(two_level_weights),
                              model=SMALL | {"arch": "separate"}, steps=1, batch=2, crop=2)  # fmt: skip
            train(cfg, tmp_path / "sep", progress=False)
            export_checkpoint(tmp_path / "sep", tmp_path / "sep.pt", "sep")
        codec = create_codec(arch, task, checkpoint=str(ckpt if arch == "mutual" else tmp_path / "sep.pt"))
        assert codec.net.cfg.levels == ("s16", "s32") and codec.net.cfg.channels == (12, 24)
        features = task.front(example_images[0])
        for q in (0, 3):
            data = codec.encode(features, q)
            header, _ = bitstream.unpack(data)
            _, rec = codec.reconstruct(features, q)
            out = codec.decode(data)
            assert set(out.levels) == {"s16", "s32"}
            assert all(torch.equal(out.levels[k], rec.levels[k]) for k in rec.levels), (arch, q)
            assert len(task.back(out)) == 1


RCNN = "fasterrcnn-r50-fpn-coco"


@pytest.fixture(scope="module")
def rcnn_weights(tmp_path_factory):
    from mutualfc.tasks.rcnn import random_weights

    path = tmp_path_factory.mktemp("rcnn") / "fasterrcnn-random-seed0.pth"
    torch.save(random_weights(0), path)
    return path


def test_faster_rcnn_split_equals_torchvision_and_names_its_weights(rcnn_weights, example_images, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """Built without downloading anything; front + back (P6 recomputed from P5 on the server) give torchvision's
    own Faster R-CNN detections; no weights: one line naming the file it needs; a foreign file: one line."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.ops import misc

    row = describe_task(RCNN)
    assert [(x["name"], x["channels"], x["stride"]) for x in row["levels"]] == [
        ("p2", 256, 4), ("p3", 256, 8), ("p4", 256, 16), ("p5", 256, 32)]  # fmt: skip
    monkeypatch.setenv("MUTUALFC_WEIGHTS_DIR", str(tmp_path))  # an empty folder: no download is tried
    with pytest.raises(WeightsError, match="fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"):
        create_task(RCNN)
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3)}, foreign)
    with pytest.raises(WeightsError, match="not a torchvision Faster R-CNN"):
        create_task(RCNN, weights=foreign)
    net = create_task(RCNN, weights=rcnn_weights)
    net.roi_heads.score_thresh = 0.0  # random weights score below torchvision's 0.05
    image = example_images[1]
    split = net.back(net.front(image))
    ref = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, norm_layer=misc.FrozenBatchNorm2d,
                                  box_score_thresh=0.0).eval()  # fmt: skip
    ref.load_state_dict(torch.load(rcnn_weights, weights_only=True))
    with torch.no_grad():
        want = ref([torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255])[0]
    assert len(split) == len(want["scores"]) > 0
    np.testing.assert_array_equal(split.category_ids, want["labels"].numpy())
    # the same operations in the same order: equal up to float32 rounding of the box arithmetic
    np.testing.assert_allclose(split.boxes, want["boxes"].numpy(), atol=1e-3)
    np.testing.assert_allclose(split.scores, want["scores"].numpy(), atol=1e-6)


def _cli(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "mutualfc.cli.main", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_four_level_faster_rcnn_trains_encodes_decodes_and_detects(rcnn_weights, tmp_path):
    """P2-P5 with random weights: the mutual codec codes P4 + P5 and predicts P2 + P3; a few training steps ->
    checkpoint -> `mutualfc encode` -> container (task id in the header) -> `mutualfc decode` -> detections, and the
    decoded features equal the encoder's own reconstruction."""
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((EXAMPLE / "images").glob("*.jpg"))[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    ckpt = _train_and_export(RCNN, rcnn_weights, images, tmp_path, SMALL, crop=4)
    task = create_task(RCNN, weights=rcnn_weights)
    codec = create_codec("mutual", task, checkpoint=str(ckpt))
    assert codec.net.cfg.base == ("p4", "p5") and codec.net.targets == ("p2", "p3")
    first = sorted(images.glob("*.jpg"))[0]
    common = ["--task", RCNN, "--weights", rcnn_weights, "--checkpoint", ckpt]
    _cli("encode", *common, "--codec", "mutual", "--quality", 2, "--residual", "on", first, "--out-dir", "enc",
         cwd=tmp_path)  # fmt: skip
    data = (tmp_path / "enc" / f"{first.stem}.mfc").read_bytes()
    header, _ = bitstream.unpack(data)
    from mutualfc.registry import task_name

    assert task_name(header.task_id) == RCNN
    _cli("decode", *common, tmp_path / "enc" / f"{first.stem}.mfc", "--detections", "det.json", "--features", "f",
         "--min-score", 0, cwd=tmp_path)  # fmt: skip
    decoded = np.load(next((tmp_path / "f").glob("*.npz")))
    from mutualfc.images import load_image

    features = task.front(load_image(first))
    _, rec = create_codec("mutual", task, checkpoint=str(ckpt), residual="on").reconstruct(features, 2)
    for k in ("p2", "p3", "p4", "p5"):
        np.testing.assert_array_equal(decoded[k][0] if decoded[k].ndim == 4 else decoded[k], rec.levels[k][0].numpy())
    dets = json.loads((tmp_path / "det.json").read_text())
    want = task.back(FeatureSet(rec.levels, features.geometry))
    assert len(dets) == int((want.scores >= 0).sum()) and {d["category_id"] for d in dets} <= set(range(1, 91))


def test_no_level_name_or_channel_count_outside_the_task_modules():
    """The codec, trainer, loss, cache, anchors and evaluation follow the task: grep finds no level name and no
    shipped network's channel list."""
    where = ["src/mutualfc/*.py", ":!src/mutualfc/tasks"]
    for pattern in (r"[\"'][pP][2-6][\"']", r"64, ?128, ?256|256, ?256, ?256"):
        r = subprocess.run(["git", "grep", "-n", "-E", pattern, "--", *where], capture_output=True, text=True,
                           cwd=ROOT)  # fmt: skip
        assert r.stdout == "", r.stdout
