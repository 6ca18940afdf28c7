"""The mutual and separate networks (small, untrained): real bits round-trip and decode reproducibly."""

import pytest
import torch

from mutualfc.codecs.mutual import MutualConfig, build_network

SMALL = {"width": 32, "min_width": 16, "hyper": 16, "residual": 8, "qualities": 4, "init_samples": 2000}


def _levels(seed=0, h=15, w=20, n=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "p3": torch.rand(n, 64, 4 * h, 4 * w, generator=g) * 3 - 0.3,
        "p4": torch.rand(n, 128, 2 * h, 2 * w, generator=g) * 2 - 0.3,
        "p5": torch.rand(n, 256, h, w, generator=g) - 0.3,
    }


def _net(arch="mutual", **kw):
    torch.manual_seed(0)
    net = build_network(MutualConfig(arch=arch, **(SMALL | kw)))
    net.init_from_data(_levels(9, 8, 8, n=4))
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


def test_closed_form_initialisation_reconstructs_before_training():
    """PCA transforms + least-squares prediction: at init the network already reconstructs its training data."""
    net = build_network(MutualConfig(**SMALL))
    lv = _levels(3, 8, 8, n=4)
    net.init_from_data(lv)
    net.eval()
    with torch.no_grad():
        out = net(lv, 3)["levels"]
    for k in ("p4", "p5"):  # complete transform: only quantisation error remains
        nmse = ((out[k] - lv[k]) ** 2).mean() / lv[k].var()
        assert nmse < 0.05, (k, float(nmse))


def test_config_errors():
    with pytest.raises(ValueError, match="predicted level"):
        build_network(MutualConfig(base=("p3", "p4", "p5")))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network(MutualConfig(arch="nope"))
