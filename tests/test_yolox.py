"""YOLOX-Nano, the second shipped network: written in the project, weights read from the upstream ONNX file with the
``onnx`` package, split at P3/P4/P5; its detections equal onnxruntime's on the whole graph."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mutualfc.errors import WeightsError
from mutualfc.images import load_image
from tests.conftest import EXAMPLE, SHARED_WEIGHTS

ONNX = SHARED_WEIGHTS / "yolox-nano-coco.onnx"
IMAGES = sorted((EXAMPLE / "images").glob("*.jpg"))


def need_onnx_weights():
    if not ONNX.is_file():
        pytest.skip("../shared/weights/yolox-nano-coco.onnx not present")


@pytest.fixture(scope="module")
def yolox():
    need_onnx_weights()
    from mutualfc.tasks import create_task

    return create_task("yolox-nano-coco")


def _raw(net, x: torch.Tensor) -> torch.Tensor:
    """The head's raw (N, 85) outputs, as the ONNX graph's ``output`` has them (boxes not decoded)."""
    with torch.no_grad():
        levels = net.body(x)
        return torch.cat([net.head.level_outputs(i, t).flatten(2) for i, t in enumerate(levels)], 2).transpose(1, 2)


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.stem)
def test_split_network_equals_onnxruntime_on_the_whole_graph(yolox, path):
    """Tolerance from the arithmetic: our float32 result differs from our own float64 evaluation of the same
    network by float32's rounding on this input; onnxruntime's float32 result carries rounding of the same kind,
    so the two float32 results may be apart by that much from each side (x 4 for the different summation
    orders), not more."""
    ort = pytest.importorskip("onnxruntime")
    import copy

    x, _ = yolox.transform(load_image(path))
    ours = _raw(yolox, x)[0].double()
    exact = _raw(copy.deepcopy(yolox).double(), x.double())[0]
    ref = torch.from_numpy(ort.InferenceSession(str(ONNX)).run(None, {"images": x.numpy()})[0][0]).double()
    noise = float((ours - exact).abs().amax())
    assert float((ours - ref).abs().amax()) <= 4 * noise + 1e-6
    assert noise < 1e-2  # and that rounding is small: a wrong weight or layer would be far outside it
    # the detections: the same boxes after the same decoding and NMS
    from mutualfc.tasks.yolox import postprocess

    def detections(raw):
        with torch.no_grad():
            levels = [t.shape[-2:] for t in yolox.body(x)]
        grids, strides = [], []
        for (h, w), s in zip(levels, yolox.level_strides, strict=True):
            gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            grids.append(torch.stack((gx, gy), 2).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(s)))
        grid, stride = torch.cat(grids).double(), torch.cat(strides).double()
        dec = torch.cat(((raw[:, :2] + grid) * stride, raw[:, 2:4].exp() * stride, raw[:, 4:]), 1)
        det = postprocess(dec, 0.3, yolox.iou)
        return det[det[:, 4].argsort(descending=True)]

    a, b = detections(ours), detections(ref)
    assert len(a) == len(b) and torch.equal(a[:, 5], b[:, 5])
    assert float((a[:, :4] - b[:, :4]).abs().amax()) < 0.05  # pixels at 416


def test_geometry_and_levels(yolox):
    g = yolox.geometry((480, 640))
    assert g.input_hw == (416, 416) and g.pad_left == g.pad_top == 0 and g.ratio == pytest.approx(0.65)
    assert yolox.level_shapes(g) == {"p3": (64, 52, 52), "p4": (128, 26, 26), "p5": (256, 13, 13)}
    fs = yolox.front(load_image(IMAGES[0]))
    assert {k: tuple(v.shape[1:]) for k, v in fs.levels.items()} == yolox.level_shapes(fs.geometry)
    det = yolox.back(fs)
    assert len(det) and np.all(np.isin(det.category_ids, list(yolox.category_names)))


def test_wrong_or_damaged_weights_are_refused_with_one_line(tmp_path):
    need_onnx_weights()
    from mutualfc.tasks import create_task

    cut = tmp_path / "cut.onnx"
    cut.write_bytes(ONNX.read_bytes()[:100_000])
    v5 = SHARED_WEIGHTS / "yolov5n-coco-v6.1.pth"
    for bad in (cut, v5, Path(__file__)):
        if not bad.is_file():
            continue
        with pytest.raises(WeightsError) as e:
            create_task("yolox-nano-coco", weights=bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)
    import onnx
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    node = helper.make_node("Conv", ["images", "w", "b"], ["out"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("images", 1, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", 1, [1, 8, 8, 8])], [w, b])  # fmt: skip
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(WeightsError, match="1 convolutions, yolox-nano-coco has .*: not its weights"):
        create_task("yolox-nano-coco", weights=other)


def test_tasks_lists_both_networks_with_their_levels_and_licences(capsys):
    import json

    from mutualfc.cli.main import main

    assert main(["tasks", "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) >= {"yolov5n-coco", "yolox-nano-coco"}
    x = rows["yolox-nano-coco"]
    assert x["id"] == 2 and x["license"].startswith("Apache-2.0") and x["input"].endswith("416")
    assert [(lv["name"], lv["channels"], lv["stride"]) for lv in x["levels"]] == [
        ("p3", 64, 8), ("p4", 128, 16), ("p5", 256, 32)
    ]  # fmt: skip
    assert 0 < x["metrics"]["coco-val212"]["map"] < 1


def test_containers_name_their_task_and_decoders_follow_it(tmp_path, capsys):
    """A YOLOX-Nano stream carries task id 2: `decode` without --task finishes it with YOLOX-Nano's back half, and a
    YOLOv5n stream in the same call with YOLOv5n's."""
    need_onnx_weights()
    import json

    from mutualfc import bitstream
    from mutualfc.cli.main import main
    from mutualfc.pipeline import Decoder
    from mutualfc.tasks import create_task

    for task, q in (("yolox-nano-coco", "30"), ("yolov5n-coco", "30")):
        args = ["-q", "encode", str(IMAGES[0]), "--task", task, "--codec", "hevc-feature", "--quality", q]
        assert main([*args, "--out-dir", str(tmp_path / task)]) == 0
    x_stream = next((tmp_path / "yolox-nano-coco").glob("*.mfc"))
    assert bitstream.unpack(x_stream.read_bytes())[0].task_id == 2
    files = [str(x_stream), str(next((tmp_path / "yolov5n-coco").glob("*.mfc")))]
    assert main(["-q", "decode", *files, "--detections", str(tmp_path / "d.json"), "--min-score", "0.3"]) == 0
    got = json.loads((tmp_path / "d.json").read_text())
    yolox = create_task("yolox-nano-coco")
    want = Decoder(yolox).decode(x_stream.read_bytes()).detections.to_coco(1, 0.3, yolox.category_names)
    assert [d["bbox"] for d in got if d["image_id"] == 1] == [d["bbox"] for d in want] and want
    assert "stream for task id 2" not in capsys.readouterr().err
    only_v5 = Decoder(create_task("yolov5n-coco"))
    with pytest.raises(Exception, match="stream for task id 2 \\(yolox-nano-coco\\); this decoder runs yolov5n-coco"):
        only_v5.decode(x_stream.read_bytes())
