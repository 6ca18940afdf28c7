"""The mutual and separate networks (small, untrained): real bits round-trip and decode reproducibly."""

import functools

import pytest
import torch

from mutualfc.codecs.mutual import MutualConfig, build_network
from mutualfc.tasks import create_task

SMALL = {"width": 32, "min_width": 16, "hyper": 16, "residual": 8, "qualities": 4, "init_samples": 2000}


def _levels(seed=0, h=15, w=20, n=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "p3": torch.rand(n, 64, 4 * h, 4 * w, generator=g) * 3 - 0.3,
        "p4": torch.rand(n, 128, 2 * h, 2 * w, generator=g) * 2 - 0.3,
        "p5": torch.rand(n, 256, h, w, generator=g) - 0.3,
    }


@functools.cache
def _head():
    """YOLOv5n with random weights: its Detect head gives a real (if untrained) sensitivity for the task metric."""
    torch.manual_seed(5)
    return create_task("yolov5n-coco", pretrained=False)


def _sensitivity(levels):
    return _head().level_sensitivity(levels)


def _init(net, levels):
    net.init_from_data(levels, _sensitivity(levels))
    return net


def _net(arch="mutual", **kw):
    torch.manual_seed(0)
    net = build_network(MutualConfig(arch=arch, **(SMALL | kw)))
    _init(net, _levels(9, 8, 8, n=4))
    net.eval()
    net.update()
    return net


@pytest.mark.parametrize("arch", ["mutual", "separate"])
def test_decoded_levels_equal_encoder_reconstruction_and_training_path(arch):
    net, lv = _net(arch), _levels()
    strings, meta = net.compress(lv, 2.5)
    dec = net.decompress(strings, meta["size"], 2.5)
    ref = net(lv, 2.5)["levels"]
    for k in lv:
        assert dec[k].shape == lv[k].shape
        assert torch.equal(dec[k], meta["levels"][k])
    err = max(float((dec[k] - ref[k].detach()).abs().mean() / lv[k].abs().mean()) for k in lv)
    assert err < 1e-3, err  # the training path (eval mode) models the coded path


def test_decoding_is_bit_identical_across_runs_and_thread_counts():
    net, lv = _net(base=("p5",)), _levels(1, h=9, w=13)  # odd sizes exercise padding; P4 and P3 predicted
    strings, meta = net.compress(lv, 3)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = net.decompress(strings, meta["size"], 3)
        torch.set_num_threads(2)
        b = net.decompress(strings, meta["size"], 3)
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], meta["levels"][k]) for k in a)
    assert torch.get_num_threads() == n


def test_quality_controls_rate_and_residual_is_optional():
    net, lv = _net(), _levels(2)
    sizes = [sum(map(len, net.compress(lv, q)[0])) for q in (0, net.cfg.qualities - 1)]
    assert sizes[0] < sizes[1]
    with_res, _ = net.compress(lv, 2)
    without, meta = net.compress(lv, 2, residual=False)
    assert len(with_res) == len(without) + 1
    dec = net.decompress(without, meta["size"], 2)
    assert all(torch.equal(dec[k], meta["levels"][k]) for k in dec)


@pytest.mark.parametrize("metric", ["task", "std"])
def test_closed_form_initialisation_reconstructs_before_training(metric):
    """Metric + PCA transforms + least-squares prediction: at init the network already reconstructs its training
    data, measured in its own feature space (the task metric deliberately ignores what the detector ignores)."""
    net = build_network(MutualConfig(**SMALL, metric=metric))
    lv = _levels(3, 8, 8, n=4)
    _init(net, lv)
    net.eval()
    with torch.no_grad():
        out, ref = net.normalized(net(lv, 3)["levels"]), net.normalized(lv)
    for k in ("p4", "p5"):  # complete transform: only quantisation error remains
        nmse = ((out[k] - ref[k]) ** 2).mean() / ref[k].var()
        assert nmse < 0.05, (k, float(nmse))


def test_task_metric_predicts_how_the_detector_output_moves():
    """e^T S e from ``level_sensitivity`` matches the weighted change of the Detect head's sigmoid outputs under a
    small feature perturbation (objectness everywhere, boxes and classes weighted by objectness squared)."""
    task, lv = _head(), _levels(4, 6, 6)
    sens = task.level_sensitivity(lv)
    g = torch.Generator().manual_seed(0)
    for i, k in enumerate(task.level_names):
        s = sens[k]
        assert torch.allclose(s, s.T) and torch.linalg.eigvalsh(s).min() > -1e-9
        e = torch.randn(lv[k].shape[1], generator=g, dtype=torch.float64) * 1e-4
        x = lv[k].double()
        head = task.head.m[i].double()
        na, no = task.head.na, task.head.no
        with torch.no_grad():
            p0 = head(x).sigmoid().view(1, na, no, *x.shape[-2:])
            p1 = head(x + e.view(1, -1, 1, 1)).sigmoid().view_as(p0)
        w = torch.ones_like(p0)
        w[:, :, :4] = w[:, :, 5:] = 0
        w = w + (1 - w) * p0[:, :, 4:5] ** 2
        actual = float((w * (p1 - p0) ** 2).sum() / (x.shape[-2] * x.shape[-1]))
        predicted = float(e @ s @ e)
        assert predicted == pytest.approx(actual, rel=0.02), k
        with torch.no_grad():  # the exact term training adds measures the same thing
            task.double()
            moved = {n: lv[n].double() + (e.view(1, -1, 1, 1) if n == k else 0) for n in task.level_names}
            ref = task.head_outputs({n: lv[n].double() for n in task.level_names})
            exact = float(task.head_error(moved, ref)) / (x.shape[-2] * x.shape[-1])
            task.float()
        assert exact == pytest.approx(actual, rel=1e-6), k


def test_legacy_configs_keep_their_metric():
    old = MutualConfig().to_dict()
    for key in ("metric", "metric_eps", "metric_scale", "gains"):
        old.pop(key)
    assert MutualConfig.from_dict(old).metric == "std"  # a complete config from before the task metric
    assert MutualConfig.from_dict({"arch": "mutual"}).metric == "task"  # a partial one gets today's defaults
    with pytest.raises(ValueError, match="level_sensitivity"):
        build_network(MutualConfig(**SMALL)).init_from_data(_levels(3, 4, 4))


def test_residual_stream_is_a_rate_distortion_decision():
    net, lv = _net(), _levels(6)
    n = net.latent_streams(net.cfg)
    cheap, meta0 = net.compress(lv, 1, rd_lambda=0.0)  # distortion worth nothing: never pay for the residual
    dear, meta1 = net.compress(lv, 1, rd_lambda=1e12)  # distortion worth everything: always send it
    assert (len(cheap), meta0["residual"]) == (n, False)
    assert (len(dear), meta1["residual"]) == (n + 1, True)
    for strings, meta in ((cheap, meta0), (dear, meta1)):
        dec = net.decompress(strings, meta["size"], 1)
        assert all(torch.equal(dec[k], meta["levels"][k]) for k in dec)


def test_config_errors():
    with pytest.raises(ValueError, match="predicted level"):
        build_network(MutualConfig(base=("p3", "p4", "p5")))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network(MutualConfig(arch="nope"))
