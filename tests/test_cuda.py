"""--device cuda for every documented path: the task network on the GPU, exact coding on the CPU. Runs where CUDA
is present (skipped elsewhere, as in CI); run on a lent GPU machine (see the closing notes in results/cuda.md)."""

import json

import numpy as np
import pytest
import torch

from mutualfc.cli.main import main
from tests.conftest import EXAMPLE, need_shared_weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
IMAGES = sorted((EXAMPLE / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def tasks():
    need_shared_weights()
    from mutualfc.tasks import create_task

    return create_task("yolov5n-coco"), create_task("yolov5n-coco").to("cuda")


def test_task_metric_takes_cpu_levels_on_a_gpu_network(tasks):
    cpu, gpu = tasks
    from mutualfc.images import load_image

    levels = cpu.front(load_image(IMAGES[0])).levels
    got = gpu.objectness_map(levels)
    assert got.device.type == "cpu"
    # cuDNN may round both operands to TF32 (10 fractional bits): each logit within 2**-10 of sum |w| |x| (two
    # roundings of 2**-11), and the sigmoid's slope is at most 1/4
    bound = 0.0
    for i, name in enumerate(cpu.level_names):
        w = cpu.head.m[i].weight[4 :: cpu.head.no].abs()  # the objectness rows
        bound = max(bound, float(torch.nn.functional.conv2d(levels[name].abs(), w).amax()) * 2.0**-10 / 4)
    assert float((got - cpu.objectness_map(levels)).abs().amax()) <= bound
    sens = gpu.level_sensitivity(levels)
    assert all(v.device.type == "cpu" for v in sens.values())


@pytest.mark.parametrize("quality", [4, 7.75])
def test_gpu_encoded_streams_decode_on_the_cpu_to_the_gpu_decoders_features(tasks, quality):
    """The encoder's front half and skip decisions run on the GPU; the stream decodes exactly anywhere, and the CPU
    and GPU decoders give the same features (decoding is integer arithmetic on the CPU either way)."""
    import mutualfc
    from mutualfc.images import load_image

    cpu, gpu = tasks
    image = load_image(IMAGES[1])
    data = mutualfc.Encoder(gpu, mutualfc.load_codec("mutual", gpu)).encode(image, quality)
    on_cpu = mutualfc.Decoder(cpu).decode(data)
    on_gpu = mutualfc.Decoder(gpu).decode(data)
    for k, v in on_cpu.features.levels.items():
        assert torch.equal(v, on_gpu.features.levels[k])
    assert len(on_cpu.detections) > 0


def test_cli_paths_with_device_cuda(tmp_path, capsys):
    need_shared_weights()
    enc = ["-q", "encode", *map(str, IMAGES), "--codec", "mutual", "--quality", "4", "--device", "cuda"]
    assert main([*enc, "--out-dir", str(tmp_path / "gpu")]) == 0
    assert main(["-q", "decode", str(tmp_path / "gpu"), "--detections", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())
    out = tmp_path / "e.jsonl"
    ev = ["-q", "eval", "--codec", "mutual", "--param", "4", "--images", str(EXAMPLE / "images"), "--annotations",
          str(EXAMPLE / "instances.json"), "--device", "cuda"]  # fmt: skip
    assert main([*ev, "--out", str(out)]) == 0
    assert main([*ev, "--out", str(out), "--jobs", "2"]) == 0
    a, b = (json.loads(x) for x in out.read_text().splitlines())
    assert a["bits"] == b["bits"] and a["map"] == b["map"] and b["executor"]["kind"] == "processes"
    assert np.isfinite(a["map"]) and a["map"] > 0.2
