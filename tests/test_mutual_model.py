"""The mutual codec's network (untrained weights): real bits round-trip and decode reproducibly."""

import torch

from mutualfc.codecs.mutual import MutualConfig, MutualFeatureNet


def _levels(seed=0, h=15, w=20):
    g = torch.Generator().manual_seed(seed)
    return {
        "p3": torch.rand(1, 64, 4 * h, 4 * w, generator=g),
        "p4": torch.rand(1, 128, 2 * h, 2 * w, generator=g),
        "p5": torch.rand(1, 256, h, w, generator=g),
    }


def _net(**kw):
    torch.manual_seed(0)
    net = MutualFeatureNet(MutualConfig(width=32, latent=64, hyper=32, groups=(8, 8, 16, 32), **kw)).eval()
    net.update()
    return net


def test_decoded_levels_equal_training_path_reconstruction():
    net, lv = _net(), _levels()
    strings, meta = net.compress(lv, 2.5)
    dec = net.decompress(strings, meta["size"], 2.5)
    ref = net(lv, 2.5)["levels"]
    for k in lv:
        assert dec[k].shape == lv[k].shape
        torch.testing.assert_close(dec[k], ref[k], atol=1e-5, rtol=0)


def test_decoding_is_bit_identical_across_runs_and_thread_counts():
    net, lv = _net(base=("p5",)), _levels(1, h=9, w=13)  # odd sizes exercise padding
    strings, meta = net.compress(lv, 5)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = net.decompress(strings, meta["size"], 5)
        torch.set_num_threads(2)
        b = net.decompress(strings, meta["size"], 5)
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.get_num_threads() == n


def test_quality_controls_rate():
    net, lv = _net(), _levels(2)
    with torch.no_grad():
        net.bfc.gain.copy_(torch.linspace(0.2, 4.0, net.cfg.qualities).view(-1, 1, 1, 1).expand_as(net.bfc.gain))
    net.update()
    sizes = [sum(map(len, net.compress(lv, q)[0])) for q in (0, net.cfg.qualities - 1)]
    assert sizes[0] < sizes[1]
