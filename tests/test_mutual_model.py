"""The mutual and separate networks (small, untrained): real bits round-trip and decode reproducibly."""

import copy
import functools
import math

import pytest
import torch
from compressai.entropy_models import GaussianConditional
from compressai.latent_codecs import GaussianConditionalLatentCodec
from compressai.layers import CheckerboardMaskedConv2d
from compressai.models.base import get_scale_table

from mutualfc.codecs.learned import residual_pays
from mutualfc.entropy import SymbolReader, SymbolWriter, code_gaussian
from mutualfc.models import LEGACY_RELEASE, MutualConfig, build_network, encode_tiers
from mutualfc.models.base import unpack_bits
from mutualfc.models.bfc import SYNTHESIS_BITS
from mutualfc.models.gain import INV_GAIN_BITS, boost_factor
from mutualfc.nn.context import context_at
from mutualfc.nn.exact import ACT_BITS, to_fixed, wide_weights
from mutualfc.nn.sparse import affine, conv_at, stack_at, trunk_at
from mutualfc.tasks import create_task
from mutualfc.zoo import load_model, pack_state, unpack_state

# the levels of the task these tests borrow (a codec config names its task's levels; none are built in)
LEVELS = {"levels": ("p3", "p4", "p5"), "channels": (64, 128, 256)}
SMALL = {"width": 32, "hyper": 16, "residual": 8, "qualities": 4, "init_samples": 2000} | LEVELS


def random_levels(seed=0, h=15, w=20, n=1):
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


def init_closed_form(net, levels):
    net.init_from_data(levels, _sensitivity(levels))
    return net


def _net(arch="mutual", **kw):
    torch.manual_seed(0)
    net = build_network(MutualConfig(arch=arch, **(SMALL | kw)))
    init_closed_form(net, random_levels(9, 8, 8, n=4))
    net.eval()
    net.update()
    return net


@pytest.mark.parametrize("arch", ["mutual", "separate"])
def test_decoded_levels_equal_encoder_reconstruction_and_training_path(arch):
    net, lv = _net(arch), random_levels()
    strings, meta = net.compress(lv, 2.5)
    dec = net.decompress(strings, meta["size"], 2.5)
    ref = net(lv, 2.5)["levels"]
    for k in lv:
        assert dec[k].shape == lv[k].shape
        assert torch.equal(dec[k], meta["levels"][k])
    # the training path (eval mode, float) models the coded path (fixed point): in the codec's feature space, where
    # distortion is measured, they differ by a few percent of the coding error (means on a 1/256 grid move a few
    # symbols by one step)
    coded, trained, original = (net.normalized({k: v.detach() for k, v in d.items()}) for d in (dec, ref, lv))
    for k in lv:
        gap = float((coded[k] - trained[k]).pow(2).mean() / (original[k] - trained[k]).pow(2).mean())
        assert gap < 0.06, (k, gap)


def test_decoding_is_bit_identical_across_runs_and_thread_counts():
    net, lv = _net(base=("p5",)), random_levels(1, h=9, w=13)  # odd sizes exercise padding; P4 and P3 predicted
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


def test_derived_weights_follow_the_weights_between_images_and_are_checked_once_per_image():
    """The exact layers' derived weights are cached until the weights change: a change between two images (in
    place, or a parameter or buffer replaced) is seen by the next one (a stream of the new weights, not the old),
    while inside one image's coding (``coding_scope``) each cache is checked once, and from one image to the next
    the model's tensors are checked once."""
    from mutualfc.nn import exact
    from mutualfc.nn.caching import cached, coding_scope

    net, lv = _net(), random_levels(1)
    before = net.compress(lv, 3)[0]
    first = net.bfc.latent_codec.latent_codec["y"].latent_codec["y0"].entropy_parameters[0]
    with torch.no_grad():
        first.weight.mul_(0.5)  # in place: the same tensor, a new version
    after = net.compress(lv, 3)[0]
    assert after != before
    with torch.no_grad():
        first.weight.mul_(2.0)
    assert net.compress(lv, 3)[0] == before
    # replaced rather than changed: a new parameter object, new storage under the same object, a new buffer
    first.weight = torch.nn.Parameter(first.weight.detach() * 0.5)
    assert net.compress(lv, 3)[0] == after
    first.weight.data = first.weight.detach() * 2.0
    assert net.compress(lv, 3)[0] == before
    gc = net.bfc.latent_codec.latent_codec["y"].latent_codec["y0"].latent_codec["y"].gaussian_conditional
    table = gc.scale_table
    gc.scale_table = table * 1.5  # coarser scales: other streams
    assert net.compress(lv, 3)[0] != before
    gc.scale_table = table
    assert net.compress(lv, 3)[0] == before
    carried = net.__dict__["_mutualfc_scope"]  # nothing changed since: the same look-ups, checked once
    assert net.compress(lv, 3)[0] == before and net.__dict__["_mutualfc_scope"] is carried
    builds = []
    conv = torch.nn.Conv2d(3, 2, 1)
    with coding_scope():
        for _ in range(3):
            cached(conv, "probe", exact.weight_tensors(conv), lambda: builds.append(1) or len(builds))
        with torch.no_grad():
            conv.weight.add_(1.0)  # within a scope the first look-up stands
        assert cached(conv, "probe", exact.weight_tensors(conv), lambda: builds.append(1) or len(builds)) == 1
    assert cached(conv, "probe", exact.weight_tensors(conv), lambda: builds.append(1) or len(builds)) == 2


def test_quality_controls_rate_and_residual_is_optional():
    net, lv = _net(), random_levels(2)
    sizes = [sum(map(len, net.compress(lv, q)[0])) for q in (0, net.cfg.qualities - 1)]
    assert sizes[0] < sizes[1]
    with_res, _ = net.compress(lv, 2)
    without, meta = net.compress(lv, 2, residual=False)
    assert len(with_res) == len(without) + 1
    dec = net.decompress(without, meta["size"], 2)
    assert all(torch.equal(dec[k], meta["levels"][k]) for k in dec)


def test_closed_form_initialisation_reconstructs_before_training():
    """Metric + PCA transforms + least-squares prediction: at init the network already reconstructs its training
    data, measured in its own feature space (the task metric deliberately ignores what the detector ignores)."""
    net = build_network(MutualConfig(**SMALL))
    lv = random_levels(3, 8, 8, n=4)
    init_closed_form(net, lv)
    net.eval()
    with torch.no_grad():
        out, ref = net.normalized(net(lv, 3)["levels"]), net.normalized(lv)
    for k in ("p4", "p5"):  # complete transform: only quantisation error remains
        nmse = ((out[k] - ref[k]) ** 2).mean() / ref[k].var()
        assert nmse < 0.05, (k, float(nmse))


def test_task_metric_predicts_how_the_detector_output_moves():
    """e^T S e from ``level_sensitivity`` matches the weighted change of the Detect head's sigmoid outputs under a
    small feature perturbation (objectness everywhere, boxes and classes weighted by objectness squared)."""
    task, lv = _head(), random_levels(4, 6, 6)
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


def test_retired_designs_are_refused_naming_the_release_that_reads_them():
    old = MutualConfig(**LEVELS).to_dict() | {"metric": "task", "transform": "linear", "min_width": 32}  # 0.1.0's
    assert MutualConfig.from_dict(old) == MutualConfig(**LEVELS)
    pre_metric = {k: v for k, v in old.items() if k not in ("metric", "transform")}
    for legacy in (old | {"transform": "nonlinear"}, old | {"metric": "std"}, pre_metric):
        with pytest.raises(ValueError, match=LEGACY_RELEASE.replace("(", r"\(").replace(")", r"\)")):
            MutualConfig.from_dict(legacy)
    assert MutualConfig.from_dict({"arch": "separate", "metric": "task", **LEVELS}).arch == "separate"


def _wide_bound(w, b, x, err, bits):
    """``w x + b`` in float64 and a bound on how far ``exact.wide_linear`` of ``wide_weights(w, b, bits)`` can be from
    it, for fixed-point inputs within ``err`` of ``x``: the input error through ``|w|``, the weights rounded to
    2**-e (``e`` per output), the bias to 2**-(e + bits), and the result to 2**-bits (half a unit each)."""
    e = wide_weights(w, b, bits)[3].double().view(-1, 1)
    y = w @ x + (0 if b is None else b.view(-1, 1))
    bound = w.abs() @ err + 2.0 ** -(e + 1) * (x.abs() + err).sum(0) + 2.0 ** -(e + bits + 1) + 2.0 ** -(bits + 1)
    return y, bound


def _levels_bound(pack, u, err, bits):
    """Packed codec-space columns (within ``err`` of ``u``) -> each level's (C, f * f * N) feature blocks as the
    decoder's ``fixed_to_blocks`` computes them, and the bound on its error: ``_wide_bound`` of the inverse metric,
    the mean rounded to 2**-bits, the float32 result to 2**-24 relative."""
    out = {}
    sizes = list(pack.ch.values())
    for k, part, perr in zip(pack.names, u.split(sizes), err.split(sizes), strict=True):
        c = pack.ch[k] // pack.factor[k] ** 2
        unproj, mean = getattr(pack, f"unproj_{k}").double().view(c, c), getattr(pack, f"mean_{k}").double().view(c, 1)
        x, bound = _wide_bound(unproj, None, part.reshape(c, -1), perr.reshape(c, -1), bits)
        out[k] = (x + mean, bound + 2.0 ** -(bits + 1) + (x + mean).abs() * 2.0**-24)
    return out


def _decoded_blocks(pack, levels, n):
    return {k: v.double().reshape(v.shape[0], -1) for k, v in pack.gather_cells(levels, torch.arange(n), 10).items()}


def test_linear_design_learns_only_entropy_models_and_gains():
    """The transforms are the closed-form ones: decoding is the PCA synthesis of the gain-scaled, quantised latent
    (inverse gain tied to 1 / gain), and the prediction is the least-squares map. The decoder computes them in fixed
    point; the float64 reference must lie within the bound its roundings allow (derived here, not tuned: an
    error of the decoder's own arithmetic, or a wrong transform, lands far outside it)."""
    lin = _net()
    gain, inv = lin.bfc.gain(1.5)
    assert torch.allclose(gain * inv, torch.ones_like(gain))
    lv = random_levels(4, h=8, w=10)  # even sizes: no padding
    strings, meta = lin.compress(lv, 3, residual=False)
    y_hat = lin.bfc.latent_codec.decompress([strings[1]], lin.coded_mask(None, meta["size"]))["y_hat"]
    y = y_hat.double().reshape(y_hat.shape[1], -1) * 2.0**-ACT_BITS  # the coded latent, 80 cells
    # the format's inverse gains (INV_GAIN_BITS fractional bits); the product rounded to SYNTHESIS_BITS
    inv = lin.bfc.gain.inverse_fixed(3).view(-1, 1) * 2.0**-INV_GAIN_BITS
    g = lin.bfc.gain(3)[0].double().view(-1, 1)  # tied: 1 / gain to within that rounding (and float32's)
    assert bool(((inv * g - 1).abs() <= 2.0 ** -(INV_GAIN_BITS + 1) * g + 2.0**-23).all())
    d_err = torch.full_like(y, 2.0 ** -(SYNTHESIS_BITS + 1))
    s = lin.bfc.lin_s
    base, base_err = _wide_bound(s.weight.double().flatten(1), s.bias.double(), y * inv, d_err, SYNTHESIS_BITS)
    m = lin.mfc.lin
    pred, pred_err = _wide_bound(m.weight.double().flatten(1), m.bias.double(), base, base_err, SYNTHESIS_BITS)
    for pack, u, err in ((lin.bfc.pack, base, base_err), (lin.mfc.pack, pred, pred_err)):
        decoded = _decoded_blocks(pack, meta["levels"], y.shape[1])
        for k, (ref, bound) in _levels_bound(pack, u, err, SYNTHESIS_BITS).items():
            assert bool(((decoded[k] - ref).abs() <= bound).all()), k
            tight = float(bound.amax().detach()) < 0.5 * float(ref.std().detach())
            assert tight, f"{k}: the bound is too loose to catch a wrong transform"


def test_residual_stream_is_a_rate_distortion_decision():
    net, lv = _net(), random_levels(6)
    n = net.stream_count()
    strings, meta = net.compress(lv, 1, residual=True)
    assert len(strings) == n + 1
    bits = 8 * len(strings[-1])
    assert not residual_pays(net, lv, meta, bits, 0.0)  # distortion worth nothing: never pay for the residual
    assert residual_pays(net, lv, meta, bits, 1e12)  # distortion worth everything: always send it
    for coded, levels in ((strings[:-1], meta["prediction"]), (strings, meta["levels"])):
        dec = net.decompress(coded, meta["size"], 1)  # either choice decodes exactly
        assert all(torch.equal(dec[k], levels[k]) for k in dec)


def _decision_inputs(res, q, k=300, seed=3):
    """Prediction errors ``d`` and ``alt`` (C, K), their residual latents and Gaussians, as the encoder has them."""
    n, r = res.lin_s.out_channels, res.lin_s.in_channels
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, k, generator=g) * 2
    alt = d + torch.randn(n, k, generator=g)
    y = affine(res.lin_a, d) * res.gain(q)[0].view(-1, 1)
    return y, d, alt, torch.cat([torch.rand(r, k, generator=g) * 3 + 0.2, torch.randn(r, k, generator=g)])


@pytest.mark.parametrize("zoo", [False, True])
@torch.no_grad()
def test_residual_decision_from_the_latents_equals_the_synthesis_path(zoo):
    """The encoder's residual decision measures each cell's error from its latents (V'V, the analysis being the
    synthesis' transpose) instead of through the synthesis: the same up to float32 rounding, bounded here from the
    operands (the direct path's n-channel sums of squares and r-term products, the analysis' n-term sums)."""
    if zoo:
        res = load_model("mutual-fast", "yolov5n-coco").net.res
    else:  # an analysis bias that is not -V'b (a PCA pair has it): the latents are offset, the error is not
        res = _net().res
        res.lin_a.bias.add_(torch.linspace(-2, 2, res.lin_a.out_channels))
    q = 6.5
    y, d, alt, params = inputs = _decision_inputs(res, q)
    assert res._transposed_parts() is not None
    short, bits = res.error_removed(*inputs, q, 0)
    direct, bits_direct = res.error_removed(*inputs, q, 0, direct=True)
    assert torch.equal(bits, bits_direct)
    # float rounding bounds (|fl(x.y) - x.y| <= n u |x|.|y|): the direct path's float32 synthesis and n squares,
    # the short path's float32 analysis (in its cross term) and n squares of d - b
    n, r, u = res.lin_s.out_channels, res.lin_s.in_channels, 2.0**-24
    b, v, gain = (
        t.double() for t in (res.lin_s.bias.view(-1, 1), res.lin_s.weight.flatten(1), res.gain(q)[0].view(-1, 1))
    )
    means = params[r:].double()
    c = ((torch.round(y.double() - means) + means).float() / gain.float()).double()  # the decoded latent, as coded
    e = d.double() - b - v @ c
    direct_err = (2 * e.abs() * (r * u * (v.abs() @ c.abs()) + u * e.abs())).sum(0) + n * u * e.pow(2).sum(0)
    analysis = v.abs().T @ d.double().abs() + res.lin_a.bias.double().abs().view(-1, 1)
    short_err = 2 * (c.abs() * ((n + 2) * u * analysis + u * (y.double() / gain).abs())).sum(0)
    tol = direct_err + short_err + n * u * (d.double() - b).pow(2).sum(0)
    assert ((short - direct).abs() <= tol).all()
    assert (short != direct).any()  # two computations, not one path twice
    thr = float(direct.median() / bits.median())  # a threshold that splits the cells
    clear = (direct - thr * bits).abs() > tol
    assert clear.sum() > y.shape[1] // 2
    assert torch.equal(res.worth(*inputs, q, 0, thr)[clear], (direct >= thr * bits)[clear])
    moved = _net().res  # an analysis that is no longer the transpose: the synthesis path, bit for bit
    moved.lin_a.weight.mul_(1.01)
    assert moved._transposed_parts() is None
    inputs = _decision_inputs(moved, q)
    assert torch.equal(moved.error_removed(*inputs, q, 0)[0], moved.error_removed(*inputs, q, 0, direct=True)[0])


def test_config_errors():
    with pytest.raises(ValueError, match="predicted level"):
        build_network(MutualConfig(base=("p3", "p4", "p5"), **LEVELS))
    with pytest.raises(ValueError, match="unknown architecture"):
        MutualConfig(arch="nope", **LEVELS)
    with pytest.raises(ValueError, match="must be positive"):
        MutualConfig(groups=(1, 0), **LEVELS)
    with pytest.raises(ValueError, match="must name the task's levels"):
        MutualConfig()  # no network of its own
    with pytest.raises(ValueError, match="not among the levels"):
        MutualConfig(base=("p6",), **LEVELS)
    assert MutualConfig(**LEVELS).base == ("p4", "p5")  # the two coarsest by default


def test_checkpoints_store_a_pca_analysis_as_the_transpose_of_its_synthesis():
    state = _net().state_dict()
    packed = pack_state(state)
    assert "bfc.lin_a.weight" not in packed and "res.lin_a.weight" not in packed
    back = unpack_state(packed)
    for k in ("bfc.lin_a", "res.lin_a"):
        assert torch.allclose(back[k + ".weight"], state[k + ".weight"], atol=1e-3)
        assert torch.allclose(back[k + ".bias"], state[k + ".bias"], atol=1e-2)
    state["bfc.lin_a.weight"] = state["bfc.lin_a.weight"] * 1.01  # no longer the PCA pair: stored as it is
    assert "bfc.lin_a.weight" in pack_state(state)


def test_seeded_tensors_travel_as_their_seed_and_draw_the_same_values_everywhere():
    """A seeded tensor is stored as (seed, exponent, shape) and unpacked to the very values ``seeded_tensor`` drew
    (numpy's frozen legacy stream: the first values are fixed forever); a tensor the seed does not draw is refused;
    a PCA analysis derived from a seeded synthesis still unpacks."""
    from mutualfc.zoo.packing import seeded_tensor

    assert seeded_tensor((5,), 0, 0).tolist() == [684.0, 559.0, -395.0, 1216.0, -1213.0]
    state = _net().state_dict()
    shape = tuple(state["bfc.lin_s.weight"].shape)
    state["bfc.lin_s.weight"] = seeded_tensor(shape, 7, -14)
    state["bfc.lin_a.weight"] = state["bfc.lin_s.weight"].flatten(1).T.reshape(state["bfc.lin_a.weight"].shape)
    state["bfc.lin_a.bias"], state["bfc.lin_s.bias"] = (
        torch.zeros_like(state[f"bfc.{k}.bias"]) for k in ("lin_a", "lin_s")
    )
    packed = pack_state(state, {"bfc.lin_s.weight": (7, -14)})
    assert packed["bfc.lin_s.weight::seeded"].tolist() == [7, -14, *shape] and "bfc.lin_s.weight" not in packed
    back = unpack_state(packed)
    assert torch.equal(back["bfc.lin_s.weight"], state["bfc.lin_s.weight"])
    assert torch.equal(back["bfc.lin_a.weight"], state["bfc.lin_a.weight"])
    with pytest.raises(ValueError, match="not the tensor seed 8 draws"):
        pack_state(state, {"bfc.lin_s.weight": (8, -14)})


@pytest.mark.parametrize("arch", ["mutual", "separate"])
def test_skipped_cells_cost_almost_nothing_and_decode_to_the_mean(arch):
    net, lv = _net(arch), random_levels(7, h=8, w=10)
    full, _ = net.compress(lv, 3)
    assert net.compress(lv, 3, keep=torch.ones(1, 1, 8, 10, dtype=torch.bool))[0] == full  # keep-all = no mask
    keep = torch.zeros(1, 1, 8, 10, dtype=torch.bool)
    keep[..., :4, :5] = True
    part, meta = net.compress(lv, 3, keep=keep)
    none, _ = net.compress(lv, 3, keep=torch.zeros_like(keep))
    assert sum(map(len, none)) < sum(map(len, part)) < sum(map(len, full))
    # the decoder reads the mask (first stream): skipped cells and the hyper-latent over them are not coded at all
    assert len(part[0]) == len(none[0]) == 10 and full[0] == b""
    assert all(len(s) <= 8 for s in none[1:])
    dec = net.decompress(part, meta["size"], 3)
    assert all(torch.equal(dec[k], meta["levels"][k]) for k in dec)
    # a skipped cell decodes to (close to) the packer's mean features, a kept one to (close to) its own
    pack = net.bfc.pack if arch == "mutual" else net.codecs["p5"].pack
    mean = pack.mean_p5.view(-1)
    skipped, kept = (dec["p5"][0, :, 7, 9], lv["p5"][0, :, 7, 9]), (dec["p5"][0, :, 1, 1], lv["p5"][0, :, 1, 1])
    assert (skipped[0] - mean).norm() < 0.25 * (skipped[1] - mean).norm()
    assert (kept[0] - kept[1]).norm() < 0.5 * (kept[1] - mean).norm()


@pytest.mark.parametrize("arch", ["mutual", "separate"])
def test_training_forward_counts_no_bits_for_skipped_cells(arch):
    """``forward(..., keep)`` (training) prices skipped cells as coding does: likelihood 1, latent 0."""
    net, lv = _net(arch), random_levels(8, h=8, w=10)
    net.train()
    none = net(lv, 2, keep=torch.zeros(1, 1, 8, 10, dtype=torch.bool))
    assert all(bool((v == 1).all()) for v in none["likelihoods"].values())
    keep = torch.zeros(1, 1, 8, 10, dtype=torch.bool)
    keep[..., :4, :] = True
    part, full = net(lv, 2, keep=keep), net(lv, 2)

    def bits(out):
        return sum(float(-v.detach().log2().sum()) for v in out["likelihoods"].values())

    assert 0 < bits(part) < bits(full)


def test_networks_evaluated_at_coded_cells_equal_the_whole_map():
    """Real coding evaluates each network only where it is read (columns of coded cells): the values equal the
    whole-map convolutions there, for plain, strided, stacked and masked-context convolutions."""
    torch.manual_seed(0)
    x = torch.randn(1, 6, 9, 11)
    idx = torch.tensor([0, 5, 17, 40, 98])  # corners and edges included
    for conv in (torch.nn.Conv2d(6, 4, 3, 1, 1), torch.nn.Conv2d(6, 4, 1), torch.nn.Conv2d(6, 4, 5, 1, 2)):
        full = conv(x).flatten(2)[0][:, idx]
        torch.testing.assert_close(conv_at(conv, x, idx), full, rtol=1e-5, atol=1e-5)
    down = torch.nn.Conv2d(6, 4, 3, 2, 1)
    out_idx = torch.tensor([0, 3, 11, 29])  # in the 5 x 6 output
    torch.testing.assert_close(conv_at(down, x, out_idx), down(x).flatten(2)[0][:, out_idx], rtol=1e-5, atol=1e-5)
    nn = torch.nn
    stack = nn.Sequential(nn.Conv2d(6, 8, 1), nn.GELU(), nn.Conv2d(8, 8, 3, 1, 1), nn.GELU(), nn.Conv2d(8, 2, 1))
    torch.testing.assert_close(stack_at(stack, x, idx), stack(x).flatten(2)[0][:, idx], rtol=1e-5, atol=1e-5)
    ctx = CheckerboardMaskedConv2d(6, 12, kernel_size=5, stride=1, padding=2, groups=6)
    torch.testing.assert_close(context_at(ctx, x, idx), ctx(x).flatten(2)[0][:, idx], rtol=1e-5, atol=1e-5)


def test_fixed_point_context_and_hyper_synthesis_at_cells_equal_the_whole_map():
    """The compiled context convolution (grouped, masked) and the hyper synthesis evaluated as columns (its
    up-convolution only under the cells it feeds, shuffled without a map) give, at the coded cells, the same integers
    as the whole-map exact layers."""
    from mutualfc.nn import exact

    torch.manual_seed(2)
    ctx = CheckerboardMaskedConv2d(6, 12, kernel_size=5, stride=1, padding=2, groups=6)
    x = to_fixed(torch.randn(1, 6, 9, 11) * 30)
    w, b = exact.scaled_params(ctx)
    whole = exact.floor_activations(torch.nn.functional.conv2d(x, w.view(ctx.weight.shape), b, 1, 2, 1, 6))
    for idx in (torch.tensor([0, 5, 17, 40, 98]), torch.arange(99), torch.tensor([50])):
        assert torch.equal(context_at(ctx, x, idx), whole.flatten(2)[0][:, idx])
    nonzero = torch.tensor([3, 14, 15, 26, 37, 60, 61, 72, 97])  # a map that is 0 elsewhere: only these are read
    x0 = torch.zeros_like(x).flatten(2).index_copy_(2, nonzero, x.flatten(2)[..., nonzero]).view_as(x)
    whole0 = exact.floor_activations(torch.nn.functional.conv2d(x0, w.view(ctx.weight.shape), b, 1, 2, 1, 6))
    for idx in (torch.tensor([4, 16, 25, 38, 50, 71, 98]), torch.arange(99)):
        assert torch.equal(context_at(ctx, x0, idx, {}, nonzero), whole0.flatten(2)[0][:, idx])
    net = _net()
    hyper = net.bfc.latent_codec.latent_codec["hyper"]
    (up, shuffle), act, last = hyper.h_s
    z_hat = to_fixed(torch.randn(1, up.in_channels, 4, 5) * 3)
    u = exact.activation(act, shuffle(exact.conv2d(up, z_hat)))
    whole = exact.conv2d(last, u).flatten(2)[0]
    for kept in (torch.tensor([0, 9, 21, 22, 79]), torch.arange(80), torch.tensor([44])):
        assert torch.equal(hyper._synthesis_at(z_hat, (8, 10), kept), whole[:, kept])


def test_channel_context_from_the_coded_columns_equals_the_whole_map():
    """``cell_stack.stack_at_cells`` (the channel context's first layer at the coded cells only, one zero-input
    column for every other cell) gives, at the coded cells, in any order, the same integers as the exact layers on
    the whole map that is 0 off those cells; other stacks are left to ``stack_at``."""
    from mutualfc.nn import cell_stack, exact

    torch.manual_seed(3)
    nn = torch.nn
    layers = nn.Sequential(
        nn.Conv2d(7, 10, 1), nn.GELU(), nn.Conv2d(10, 9, 3, padding=1), nn.GELU(), nn.Conv2d(9, 12, 1)
    )
    for kept in (torch.tensor([98, 0, 10, 88, 45, 46, 56]), torch.randperm(99), torch.tensor([50])):
        x = torch.zeros(1, 7, 9, 11, dtype=torch.float64)
        x.view(7, -1)[:, kept] = to_fixed(torch.randn(7, kept.numel()) * 30)
        a = exact.activation(layers[1], exact.conv2d(layers[0], x))
        hidden = exact.activation(layers[3], exact.conv2d(layers[2], a))
        whole = exact.conv2d(layers[4], hidden).flatten(2)[0]
        cols = x.view(7, -1)[:, kept].contiguous()
        assert cell_stack.applies(layers, cols)
        assert torch.equal(cell_stack.stack_at_cells(layers, cols, kept, (9, 11)), whole[:, kept])
        # without the last layer (composed with the next one, bitstream version 6): the hidden channels
        got = cell_stack.stack_at_cells(layers, cols, kept, (9, 11), with_last=False)
        assert torch.equal(got, hidden.flatten(2)[0][:, kept])
    assert not cell_stack.applies(layers[:3], cols)
    assert not cell_stack.applies(layers, cols.float())


def test_trunks_with_residual_blocks_evaluated_at_cells_equal_the_whole_map():
    """``trunk_at`` (the residual stream's context, computed only where its entropy parameters read it) gives the
    whole map's values there: to float tolerance on float inputs, the same integers on fixed-point ones."""
    from mutualfc.nn.layers import ResBlock

    torch.manual_seed(1)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(6, 8, 1), ResBlock(8), ResBlock(8)).eval()
    x = torch.randn(1, 6, 9, 11)
    idx = torch.tensor([0, 5, 17, 40, 98])
    with torch.no_grad():
        torch.testing.assert_close(trunk_at(trunk, x, idx), trunk(x).flatten(2)[0][:, idx], rtol=1e-4, atol=1e-5)
    net = _net()
    y_hat = to_fixed(torch.randn(1, net.bfc.lin_a.out_channels, 6, 7) * 4)
    whole = net.bfc.context(y_hat, 2).flatten(2)[0]
    for at in (idx[idx < 42], torch.arange(42), torch.tensor([20])):
        part = net.bfc.context(y_hat, 2, at=at).flatten(2)[0]
        assert torch.equal(part[:, at], whole[:, at])
        assert not part.flatten(1)[:, torch.ones(42, dtype=torch.bool).index_fill_(0, at, False)].any()
    # a latent that is 0 outside its kept cells (as decoded), part of them in a lower tier: the trunk's first layer
    # runs at the kept cells only, and the others take its zero-input column
    kept = torch.tensor([1, 2, 8, 9, 10, 22, 30, 41])
    y_kept = torch.zeros_like(y_hat).view(1, -1, 42).index_copy_(2, kept, y_hat.view(1, -1, 42)[..., kept])
    y_kept = y_kept.view(y_hat.shape)
    tier = (1.0, torch.tensor([0, 3, 5]))  # indexes among the kept cells
    wholes = [net.bfc.context(y_kept, 2, kept, low).flatten(2)[0] for low in (None, tier)]
    assert not torch.equal(*wholes)
    for low, whole in zip((None, tier), wholes, strict=True):
        for at in (idx[idx < 42], torch.arange(42), torch.tensor([20]), kept):
            assert torch.equal(net.bfc.context(y_kept, 2, kept, low, at=at).flatten(2)[0][:, at], whole[:, at])


def test_floor_scale_latents_are_left_out_only_when_all_are_at_their_mean():
    """Latents at the scale table's floor are not coded when one flag says they all round to their mean; any other
    value there sets the flag and everything is coded: decoding stays exact either way."""
    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table(), force=True)
    codec = GaussianConditionalLatentCodec(gaussian_conditional=gc)
    scales = torch.full((4, 50), 0.01)
    scales[:, :10] = 3.0  # 40 values with real scales, 160 at the floor
    means = torch.randn(4, 50)
    params = torch.cat([scales, means])
    sizes = {}
    at_mean = means + (scales > 1) * torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 2
    one_off = at_mean.clone()
    one_off[2, 30] += 3.0  # a floor-scale latent three steps from its mean
    for name, y in {"at mean": at_mean, "one off": one_off}.items():
        w = SymbolWriter()
        enc = code_gaussian(w, codec, y, params)
        data = w.finish()
        dec = code_gaussian(SymbolReader(data + b"\0" * 4096), codec, None, params)
        assert torch.equal(enc, dec) and torch.equal(dec, torch.round(y - means) + means)
        sizes[name] = len(data)
        assert w.symbol_count == 1 + (40 if name == "at mean" else 200)  # the flag, then the coded latents
    assert sizes["one off"] > sizes["at mean"]


def test_compiled_gaussian_coding_equals_the_tensor_reference():
    """Fixed-point Gaussian coding (one compiled step per side) writes the reference's bytes and decodes its values,
    with and without floor-scale latents, all at their means or one off, and across the two paths both ways."""
    from mutualfc.entropy.gaussian import (
        code_gaussian_at,
        code_gaussian_reference,
        scale_indexes,
        scale_thresholds,
    )

    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table(), force=True)
    codec = GaussianConditionalLatentCodec(gaussian_conditional=gc)
    fixed_scales = torch.arange(-300.0, 2**17, 7.0, dtype=torch.float64)  # every threshold's neighbours and beyond
    fixed_scales = torch.cat([fixed_scales, (scale_thresholds(gc) + torch.tensor([[-1.0], [0.0], [1.0]])).flatten()])
    assert torch.equal(scale_indexes(gc, fixed_scales), torch.searchsorted(scale_thresholds(gc), fixed_scales))
    g = torch.Generator().manual_seed(3)
    for case in range(12):
        scales = torch.exp(torch.empty(6, 40).uniform_(math.log(0.05), math.log(300), generator=g))
        if case % 3 == 0:
            scales[:, ::2] = 0.01  # floor-scale latents
        means = torch.randn(6, 40, generator=g) * 20
        y = (means + scales * torch.randn(6, 40, generator=g)).double()
        if case % 3 == 0 and case % 2:
            y[:, ::2] = means[:, ::2].double()  # every floor-scale latent at its mean: left out behind the flag
        params = torch.cat([torch.round(p.double() * 2**ACT_BITS) for p in (scales, means)])
        streams, decoded = [], []
        for code in (code_gaussian, code_gaussian_reference):
            w = SymbolWriter()
            decoded.append(code(w, codec, y, params))
            streams.append(w.finish())
        assert streams[0] == streams[1] and torch.equal(decoded[0], decoded[1])
        for code in (code_gaussian, code_gaussian_reference):
            assert torch.equal(code(SymbolReader(streams[0]), codec, None, params), decoded[0])
        # from a last layer's accumulator (fractions: floored here), decoded values scattered into a map's columns
        acc = params + torch.rand(params.shape, generator=g, dtype=torch.float64)
        at = torch.randperm(70, generator=g)[:40]
        w, out = SymbolWriter(), torch.full((6, 70), 7.0, dtype=torch.float64)
        code_gaussian_at(w, codec, y, acc, out, at)
        assert w.finish() == streams[0] and torch.equal(out[:, at], decoded[0])
        back = torch.full((6, 70), 7.0, dtype=torch.float64)
        code_gaussian_at(SymbolReader(streams[0]), codec, None, acc, back, at)
        assert torch.equal(back, out) and (back[:, ~torch.isin(torch.arange(70), at)] == 7).all()


def test_wide_linear_is_exact_on_both_of_its_paths():
    """The one-product path (bounded inputs) and the split path (large inputs) give the exact integer result."""
    from mutualfc.nn.exact import ACT_LIMIT, wide_linear, wide_weights

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 300, generator=g), torch.randn(48, generator=g)
    weights = wide_weights(w, b, 14)
    b_int, e, full = weights.bias, weights.shift, weights.whole
    for peak in (2.0**10, ACT_LIMIT):  # the first takes one product, the second must split
        x = torch.round((torch.rand(300, 7, generator=g, dtype=torch.float64) * 2 - 1) * peak)
        assert (int(x.abs().amax()) * weights.row_bound < weights.fast_bound) == (peak < 2**20)
        acc = [sum(int(full[o, i]) * int(x[i, n]) for i in range(300)) + int(b_int[o]) for o in range(48) for n in
               range(7)]  # fmt: skip
        ref = [(a + ((1 << (int(e[o]) - 1)) if e[o] > 0 else 0)) >> int(e[o]) for o, a in
               zip([o for o in range(48) for _ in range(7)], acc, strict=True)]  # fmt: skip
        ref = torch.tensor(ref, dtype=torch.float64).clamp(-ACT_LIMIT, ACT_LIMIT).view(48, 7)
        assert torch.equal(wide_linear(weights, x), ref)


def test_wide_linear_gives_the_same_bits_as_rows_and_as_columns(monkeypatch):
    """A narrow product runs as rows (``x.T @ w.T``, ``exact.few_columns``), a wide one as columns: both orders give
    the same bits (signed zeros included) on either side of the threshold, and the exact integers."""
    from mutualfc.nn import exact

    g = torch.Generator().manual_seed(3)
    weights = exact.wide_weights(torch.randn(40, 120, generator=g), torch.randn(40, generator=g), 14)
    for n in (1, 2, exact.FEW_COLUMNS, exact.FEW_COLUMNS + 1):
        x = torch.round(torch.randn(120, n, generator=g, dtype=torch.float64) * 2**14)
        x[:, 0] = 0.0  # the bias alone: products of -0.0 and +0.0
        assert int(x.abs().amax()) * weights.row_bound < weights.fast_bound  # the one-product path
        out = {}
        for few in (0, 10**6):
            monkeypatch.setattr(exact, "FEW_COLUMNS", few)
            out[few] = exact.wide_linear(weights, x)
        assert out[0].shape == (40, n) and out[0].is_contiguous() and out[10**6].is_contiguous()
        assert out[0].numpy().tobytes() == out[10**6].numpy().tobytes()
        acc = weights.whole.numpy().astype(object) @ x.numpy().astype(object)  # Python integers: exact
        ref = [[(int(a) + int(b) + ((1 << (int(e) - 1)) if e > 0 else 0)) >> int(e) for a in row]
               for row, b, e in zip(acc, weights.bias, weights.shift, strict=True)]  # fmt: skip
        ref = torch.tensor(ref, dtype=torch.float64).clamp(-exact.ACT_LIMIT, exact.ACT_LIMIT)
        assert torch.equal(out[0], ref)


def test_affine_activations_equal_the_product_then_the_activation_bit_for_bit():
    """The compiled bias-floor-activation pass after the product does the same float64 operations as the torch
    steps it replaces: the same bits, signed zeros included."""
    from mutualfc.nn.exact import ACT_BITS, activations, affine_activations, affine_columns, scaled_params

    g = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(40, 24, 1)
    w, b = scaled_params(conv)
    x = torch.round(torch.randn(40, 9, generator=g, dtype=torch.float64) * 2**ACT_BITS * 4)
    x[:, 0] = 0.0  # a column of zeros: the bias alone, floored
    for act in (torch.nn.GELU(), torch.nn.Identity(), None):
        got, ref = affine_activations(w, x, b, act), activations(affine_columns(w, x, b), act)
        assert got.shape == ref.shape and got.numpy().tobytes() == ref.numpy().tobytes()


def test_exact_gelu_is_the_rounded_gelu_everywhere():
    """Inside [-8, 8) the table's round(GELU(k / 256) * 256); 0 below, the input itself above, exactly: the compiled
    pass over columns (contiguous or a transposed view) and the tensor reference alike."""
    import math

    from mutualfc.nn.exact import ACT_LIMIT, gelu, gelu_reference

    x = torch.cat([torch.arange(-3000.0, 3000.0), torch.tensor([-ACT_LIMIT, -2049.0, 2047.0, 2048.0, ACT_LIMIT])])
    x = x.double()
    s = 2**ACT_BITS
    ref = [0 if k < -8 * s else k if k >= 8 * s - 1 else round(0.5 * k * (1 + math.erf(k / s / math.sqrt(2)))) for k
           in x.long().tolist()]  # fmt: skip
    ref = [float(v) for v in ref]
    assert gelu_reference(x).tolist() == ref and gelu(x).tolist() == ref
    assert gelu(x.view(-1, 1)).flatten().tolist() == ref
    assert gelu(x[:6000].view(1, 6, 10, 100)).flatten().tolist() == ref[:6000]  # a map
    cols = x[:6000].view(60, 100).T  # a transposed view
    assert torch.equal(gelu(cols), torch.tensor(ref[:6000], dtype=torch.float64).view(60, 100).T)


def test_layer_outputs_are_floored_clamped_and_activated_in_one_pass():
    """``activations_from_rows`` (a product's rows -> activation columns) equals floor, clamp, then GELU or nothing,
    on fractions, both signs and values beyond the activation limit."""
    from torch import nn

    from mutualfc.nn.exact import ACT_LIMIT, activations, activations_from_rows, floor_activations, gelu_reference

    g = torch.Generator().manual_seed(5)
    acc = torch.randn(70, 33, generator=g, dtype=torch.float64) * 3000
    acc[0, :4] = torch.tensor([4 * ACT_LIMIT, -4 * ACT_LIMIT, -2048.5, 2047.5], dtype=torch.float64)
    floored = floor_activations(acc.T.clone())
    assert torch.equal(activations_from_rows(acc), floored)
    assert torch.equal(activations_from_rows(acc, nn.Identity()), floored)
    assert torch.equal(activations_from_rows(acc, nn.GELU()), gelu_reference(floored))
    with pytest.raises(ValueError, match="ReLU"):
        activations_from_rows(acc, nn.ReLU())
    # ``activations``: the same in place, on columns
    for act, want in ((None, floored), (nn.GELU(), gelu_reference(floored))):
        cols = acc.T.contiguous()
        assert activations(cols, act) is cols and torch.equal(cols, want)


def test_integer_layers_round_half_up_exactly():
    """An entropy-model layer (``scaled_params`` + ``floor_activations``) gives floor(acc * 2**-e + 1/2), clamped,
    as ``requantize`` defines it, for the integer accumulator computed in Python integers, whatever the weights'
    exponent (e >= 1 and e <= 0)."""
    from mutualfc.nn.exact import ACT_LIMIT, int_params, requantize
    from mutualfc.nn.sparse import affine

    g = torch.Generator().manual_seed(1)
    for peak in (0.05, 3000.0):  # small weights: e >= 1; weights above 2**11: e <= 0
        conv = torch.nn.Conv2d(40, 6, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(6, 40, 1, 1, generator=g) * peak)
            conv.bias.copy_(torch.randn(6, generator=g) * 4)
        w, b, _ = int_params(conv)
        _, e = torch.frexp(conv.weight.detach().double().flatten(1).abs().amax(1))
        x = torch.round(torch.randn(40, 9, generator=g, dtype=torch.float64) * 2000)
        out = affine(conv, x)
        for o in range(6):
            ee = int(11 - e[o]) if peak < 1 else int(torch.minimum(11 - e[o], 50 - ACT_BITS - torch.frexp(
                conv.bias[o].detach().double().abs().clamp_min(1.0))[1]))  # fmt: skip
            bias = round(float(conv.bias.detach()[o]) * 2.0 ** (ee + ACT_BITS))
            for n in range(9):
                acc = sum(int(w[o, i]) * int(x[i, n]) for i in range(40)) + bias
                ref = (2 * acc + 2**ee) // 2 ** (ee + 1) if ee >= 1 else acc * 2 ** (-ee)
                assert out[o, n] == max(-ACT_LIMIT, min(ACT_LIMIT, ref)), (peak, o, n)
        _, b_int, inv = int_params(conv)  # the folded scales give the reference form's integers
        assert torch.equal(out, requantize(torch.nn.functional.linear(x.T, w.flatten(1), b_int).T, inv))


def test_dequantization_rounds_half_up_exactly_with_each_columns_multipliers():
    """``exact.rescale`` (the decoder's inverse gains, one compiled pass) is floor(x m / 2**s + 1/2), clamped, for
    the integers computed in Python, the tier's columns by their own multipliers; the tensor form gives the same."""
    from mutualfc.nn.exact import ACT_LIMIT, rescale

    g = torch.Generator().manual_seed(2)
    x = torch.round(torch.randn(5, 12, generator=g, dtype=torch.float64) * 2**20)
    x[0, [0, 2, 3, 4]] = torch.tensor(
        [3.0, -3.0, 2**27, -(2**27)], dtype=torch.float64
    )  # halves (3 * 2**15 / 2**16), clamped values
    m = torch.randint(1, 2**20, (5,), generator=g).double()
    m[0] = 2**15
    other, cols = torch.randint(1, 2**20, (5,), generator=g).double(), torch.tensor([1, 7, 8])
    out = rescale(x, m, 16, other, cols)
    for c in range(5):
        for j in range(12):
            mult = int((other if j in cols.tolist() else m)[c])
            ref = (2 * int(x[c, j]) * mult + 2**16) // 2**17
            assert out[c, j] == max(-ACT_LIMIT, min(ACT_LIMIT, ref)), (c, j)
    assert float(out[0, 0]) == 2.0 and float(out[0, 2]) == -1.0  # half up, also below zero
    tensor_form = rescale(x.clone().requires_grad_(), m, 16, other, cols)  # not compiled: a tensor that needs grad
    assert torch.equal(tensor_form.detach(), out)


def test_tiers_residual_cells_and_boost_round_trip_and_trade_bits_for_error():
    """The second tier (kept cells whose base is coded at a lower quality, signalled in the mask stream), the
    residual stream limited to some kept cells, and a finer residual (boost, in a fourth stream) all decode to the
    encoder's reconstruction; each moves rate and error the way it should."""
    net, lv = _net(), random_levels(8, h=8, w=10)
    keep = torch.ones(1, 1, 8, 10, dtype=torch.bool)
    keep[..., 6:, :] = False
    low = torch.zeros_like(keep)
    low[..., :, 5:] = True
    n = net.stream_count()

    def code(**kw):
        strings, meta = net.compress(lv, 3, residual=True, keep=keep, **kw)
        dec = net.decompress(strings, meta["size"], 3)
        assert all(torch.equal(dec[k], meta["levels"][k]) for k in dec)
        # float64: the decoded values and the inputs are exact there, so the sums carry no machine-dependent rounding
        err = sum(float((dec[k].double() - lv[k].double())[..., : 8 * 2 ** (2 - i), :].pow(2).sum())
                  for i, k in enumerate(dec))  # fmt: skip
        return strings, sum(map(len, strings)), err, residual_error(dec)

    def residual_error(dec):
        """The squared P3 error inside the residual's own components (the part the residual codes; the rest is
        what its few components cannot represent, which no finer quantization changes), over the kept cells."""
        pack = copy.deepcopy(net.res.pack).double()
        with torch.no_grad():
            diff = pack.pack({"p3": dec["p3"].double()}) - pack.pack({"p3": lv["p3"].double()})
            z = torch.einsum("rc,bchw->brhw", net.res.lin_a.weight.double().flatten(1), diff)
        return float(z[..., :6, :].pow(2).sum())

    plain, plain_bytes, plain_err, plain_res = code()
    assert len(plain) == n + 1  # the defaults need no fourth stream
    tiered, tiered_bytes, tiered_err, _ = code(low_keep=low, low_step=16)  # quality 3 - 16/8 = 1 on the right half
    assert len(tiered) == n + 1 and len(tiered[0]) > len(plain[0])
    assert tiered_bytes < plain_bytes and tiered_err > plain_err
    # boost 4 = gains x 4: the residual's quantization error (in its components) falls about 16-fold
    boosted, boosted_bytes, _, boosted_res = code(boost=4)
    assert boosted[n + 1] == bytes([4]) and boosted_bytes > plain_bytes and boosted_res < plain_res / 4
    cells = low & keep
    part, part_bytes, part_err, _ = code(residual_keep=cells)
    assert len(part[n + 1]) == 1 + (int(keep.sum()) + 7) // 8 and part_bytes < plain_bytes and part_err > plain_err
    _, _, all_err, _ = code(residual_keep=keep)  # every kept cell: the same as no map
    assert all_err == plain_err


def test_residual_cells_are_a_rate_distortion_choice():
    """With a threshold the encoder sends the residual only in the cells where it removes that much error per
    estimated bit: a higher threshold codes fewer cells (fewer bytes, more error), every choice decodes to the
    encoder's reconstruction, and the estimated bits track the real stream's size."""
    net, lv = _net(), random_levels(9, h=8, w=10)
    n = net.stream_count()
    out = []
    for rd in (0.0, 10.0, 30.0, 1e9):
        strings, meta = net.compress(lv, 5, residual=True, residual_rd=rd)
        dec = net.decompress(strings, meta["size"], 5)
        assert all(torch.equal(dec[k], meta["levels"][k]) for k in dec)
        cells = 80 if len(strings) == n + 1 else int(unpack_bits(strings[n + 1][1:], 80).sum())
        out.append((cells, len(strings[n]), float((dec["p3"] - lv["p3"]).pow(2).sum())))
    assert [c for c, _, _ in out] == sorted((c for c, _, _ in out), reverse=True) and out[-1][0] == 0 < out[1][0]
    assert all(a[1] >= b[1] and a[2] <= b[2] for a, b in zip(out[:-1], out[1:], strict=False))
    assert out[0][0] == 80 and out[1][0] < 80  # a threshold of 0 keeps every cell, as without one


def test_estimated_bits_track_the_coded_stream():
    """The encoder's bit estimate (for its rate-distortion choices) is the size of what the coder writes."""
    from mutualfc.entropy import gaussian_bits

    codec = _net().res.codec
    g = torch.Generator().manual_seed(0)
    scales = torch.exp(torch.empty(64, 50).uniform_(math.log(0.2), math.log(20), generator=g))
    means = torch.randn(64, 50, generator=g) * 5
    fixed = [torch.round(p.double() * 2**ACT_BITS) for p in (scales, means)]
    params = torch.cat(fixed if codec.chunks[0] == "scales" else fixed[::-1])
    y = (means + scales * torch.randn(64, 50, generator=g)).double()
    writer = SymbolWriter()
    code_gaussian(writer, codec, y, params)
    real, estimate = 8 * len(writer.finish()), float(gaussian_bits(codec, y, params).sum())
    assert real == pytest.approx(estimate, rel=0.03) and estimate > 5000


def test_estimated_bits_by_table_equal_the_normal_cdfs_to_rounding():
    """The bits table's look-ups (the compiled pass for fixed-point parameters, and the tensor form for real ones)
    give the information content computed from the two normal CDFs, up to the rounding of the logarithm and of the
    sum over C channels (a few units in the last place of each: C * 2**-50 relative bounds them), including the
    distances beyond the table, which cost the 30-bit floor. Fails when a look-up reads the wrong scale, the wrong
    distance, or the mean at the wrong scale."""
    from mutualfc.entropy import gaussian_bits
    from mutualfc.entropy.gaussian import scale_indexes

    codec = _net().res.codec
    gc = codec.gaussian_conditional
    g = torch.Generator().manual_seed(1)
    c, k = 64, 300
    idx = torch.randint(0, gc.scale_table.numel(), (c, k), generator=g)
    scales = gc.scale_table[idx].double() * torch.empty(c, k).uniform_(0.9, 1.0, generator=g).double()
    means = torch.randn(c, k, generator=g).double() * 5
    y = means + scales * torch.randn(c, k, generator=g).double() * 3
    y[:, :5] += 1e4  # far beyond every scale: the floor
    fixed = [torch.round(t * 2**ACT_BITS) for t in (scales, means)]
    real = [t * 2.0**-ACT_BITS for t in fixed]  # the same Gaussians as real numbers (exact in float32)
    order = (lambda t: t) if codec.chunks[0] == "scales" else (lambda t: t[::-1])  # noqa: E731
    for params, scale in ((torch.cat(order(fixed)), fixed[0]), (torch.cat(order(real)).float(), real[0].float())):
        table_scale = gc.scale_table[scale_indexes(gc, scale)].double()
        v = torch.round(y.float().double() - real[1]).abs()
        p = torch.special.ndtr((0.5 - v) / table_scale) - torch.special.ndtr((-0.5 - v) / table_scale)
        reference = -torch.log2(p.clamp_min(2.0**-30)).sum(0)
        torch.testing.assert_close(gaussian_bits(codec, y.float(), params), reference, rtol=c * 2.0**-50, atol=0)
    params = torch.cat(order(fixed))
    assert torch.equal(gaussian_bits(codec, y.float(), params)[:5], torch.full((5,), 30.0 * c, dtype=torch.float64))


def test_levels_painted_from_the_exact_products_equal_the_blocks_painted():
    """The decoder's one pass from the packed fixed-point columns to the maps equals the blocks (``fixed_to_blocks``)
    painted (``paint``): for kept cells in any order, a single column for every cell, and no kept cell. Fails when
    a cell takes another's column or a value is converted otherwise."""
    net = _net()
    g = torch.Generator().manual_seed(2)
    size = (6, 9)
    for pack in (net.bfc.pack, net.mfc.pack):
        for kept, n in ((torch.randperm(54, generator=g)[:20], 21), (torch.arange(54), 1), (torch.arange(0), 1)):
            u = torch.randint(-(2**20), 2**20, (pack.channels, n), generator=g).double()
            want = pack.paint(pack.split_blocks(pack.fixed_to_blocks(u, SYNTHESIS_BITS)), kept, size)
            got = pack.paint_fixed(u, SYNTHESIS_BITS, kept, size)
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_cells_gathered_from_unpadded_levels_read_them_as_padded():
    """The encoder gathers the coded cells' blocks from the levels as they come (odd sizes included): the same
    values as from the replicate-padded copy it used to make, at every cell of the padded grid (edges included),
    in the compiled pass and in the tensor form (int32 cells). Fails when a block reads past the last row or
    column instead of repeating it."""
    from mutualfc.nn.packing import pad_levels

    net = _net()
    lv = random_levels(7, h=7, w=9)
    padded, size = pad_levels(lv, net.cfg.levels, net.pad_multiple)
    grid = tuple(padded[net.cfg.levels[-1]].shape[-2:])
    assert grid != size  # 7 x 9 pads to 8 x 10
    cells = torch.arange(grid[0] * grid[1])
    for pack in (net.bfc.pack, net.mfc.pack):
        for at in (cells, cells.int()):
            got = pack.gather_cells(lv, at, grid[1])
            want = pack.gather_cells(padded, at, grid[1])
            assert all(torch.equal(got[k], want[k]) for k in want)


def test_malformed_tier_and_residual_settings_are_refused():
    net, lv = _net(), random_levels(8, h=8, w=10)
    low = torch.zeros(1, 1, 8, 10, dtype=torch.bool)
    low[..., :, 5:] = True
    strings, meta = net.compress(lv, 3, residual=True, low_keep=low, low_step=8, residual_keep=~low, boost=2)
    size, n = meta["size"], net.stream_count()
    cases = {
        "skip mask with tiers": [strings[0][:-1], *strings[1:]],  # tier bits cut short
        "below 0": [strings[0][:10] + bytes([255]) + strings[0][11:], *strings[1:]],  # quality 3 - 255/8 < 0
        "boost": [*strings[: n + 1], bytes([99]) + strings[n + 1][1:]],
        "residual cell map": [*strings[: n + 1], strings[n + 1] + b"\0"],
        "streams": [*strings, b""],
    }
    for reason, bad in cases.items():
        with pytest.raises(ValueError, match=reason):
            net.decompress(bad, size, 3)
    with pytest.raises(ValueError, match="outside"):
        encode_tiers(None, (8, 10), low.flatten(), 0)
    with pytest.raises(ValueError, match="below 0"):  # the encoder refuses what the decoder would
        net.compress(lv, 3, low_keep=low, low_step=25)


def test_gain_boost_is_an_exact_power_of_the_square_root_of_two():
    assert [boost_factor(b) for b in (0, 2, 4, 7)] == [1.0, 2.0, 4.0, 8 * math.sqrt(2.0)]
    net = _net()
    plain, boosted = net.res.gain.inverse_fixed(2.5), net.res.gain.inverse_fixed(2.5, 2)
    assert (boosted - plain / 2).abs().max() <= 0.5 and not torch.equal(boosted, plain)
    with pytest.raises(ValueError, match="outside"):
        boost_factor(-1)


def test_uncorrected_cells_can_decode_to_the_mean_features():
    """With ``predict_uncorrected`` off, kept cells that carry no residual get the skipped cells' P3 (the mean
    features) instead of MFCNet's prediction; the base and the residual's cells are as before, and the stream
    decodes to the encoder's reconstruction."""
    lv = random_levels(4, h=8, w=10)
    keep = torch.ones(1, 1, 8, 10, dtype=torch.bool)
    keep[..., :, 8:] = False  # columns 8, 9 skipped
    some = keep.clone()
    some[..., 4:, :] = False  # residual on the top half only
    on, off = _net(), _net(predict_uncorrected=False)
    skipped = None
    for kw in ({"residual": False}, {"residual": True, "residual_keep": some}):
        a = on.compress(lv, 2, keep=keep, **kw)[1]["levels"]
        strings, meta = off.compress(lv, 2, keep=keep, **kw)
        b = off.decompress(strings, meta["size"], 2)
        assert all(torch.equal(b[k], meta["levels"][k]) for k in b)
        assert torch.equal(a["p4"], b["p4"]) and torch.equal(a["p5"], b["p5"])
        skipped = b["p3"][..., :4, 32:36]
        rows = range(2) if kw["residual"] is False else range(4, 8)  # cells without a residual
        for y in rows:
            assert torch.equal(b["p3"][..., 4 * y : 4 * y + 4, :4], skipped)
            assert not torch.equal(a["p3"][..., 4 * y : 4 * y + 4, :4], skipped)
        if kw["residual"]:
            assert torch.equal(a["p3"][..., :16, :32], b["p3"][..., :16, :32])  # the residual's cells
    trained = off(lv, 2)["prediction"]["p3"]
    assert torch.equal(trained[..., :4, :4], trained[..., 4:8, 8:12])  # every cell the mean features
