"""kMAC per pixel: the counter agrees with an independent count of the network's convolutions, the codec's parts are
counted (its exact integer path included), external codecs are reported as not counted, and the CLI prints it."""

import json

import pytest
from torch import nn

from mutualfc.cli.main import main as cli
from mutualfc.codecs import create_codec
from mutualfc.eval.complexity import measure
from tests.conftest import need_shared_weights


def _conv_macs(module: nn.Module, fn, *args) -> int:
    """Multiply-accumulates of every convolution ``fn`` runs, from the layers' shapes (forward hooks)."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]  # in/groups x kh x kw
        total += out.numel() * k

    hooks = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        fn(*args)
    finally:
        for h in hooks:
            h.remove()
    return total


def test_front_and_back_match_an_independent_count_and_codec_parts_are_counted(task, example_images):
    need_shared_weights()
    image = example_images[0]
    pixels = image.shape[0] * image.shape[1]
    plain = measure(task, None, None, [image])
    assert plain.encoder is None and plain.decoder is None and plain.symbols_per_pixel is None
    assert plain.front * 1000 * pixels == pytest.approx(_conv_macs(task, task.front, image), rel=1e-9)
    features = task.front(image)
    assert plain.back * 1000 * pixels == pytest.approx(_conv_macs(task, task.back, features), rel=1e-9)
    low, high = (measure(task, create_codec("mutual", task), q, [image]) for q in (0, 7.75))
    assert low.front == plain.front and low.back == plain.back
    assert 0 < low.decoder < high.decoder and 0 < low.encoder < high.encoder  # the residual stream's work
    assert 0 < low.symbols_per_pixel < high.symbols_per_pixel
    hevc = measure(task, create_codec("hevc-image", task), 37, [image])
    assert hevc.encoder is None and hevc.decoder is None and hevc.front == plain.front  # x265 is not counted


def test_complexity_command_prints_json_lines(capsys):
    need_shared_weights()
    assert cli(["complexity", "--codec", "mutual", "--quality", "0,4", "--limit", "1", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["param"] for r in rows] == [0.0, 4.0]
    assert all(r["kmac_per_pixel"]["decoder"] > 0 and r["kmac_per_pixel"]["images"] == 1 for r in rows)
    assert cli(["complexity", "--codec", "mutual", "--images", "/nonexistent"]) == 2
    assert "image folder not found: /nonexistent" in capsys.readouterr().err
