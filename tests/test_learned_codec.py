"""Learned codecs behind the Codec interface: checkpoints, containers, cross-process decoding, target bpp, errors."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch

from mutualfc import bitstream
from mutualfc.codecs import create_codec
from mutualfc.errors import BitstreamError, MutualFCError
from mutualfc.models import MutualConfig, build_network
from mutualfc.zoo import export_state, load_model
from tests.conftest import need_shared_weights
from tests.test_mutual_model import SMALL, init_closed_form, random_levels


def _write_checkpoint(path, arch="mutual", task="yolov5n-coco", train_cfg=None, schedule=None, **kw):
    torch.manual_seed(0)
    cfg = MutualConfig(arch=arch, **(SMALL | kw))
    net = build_network(cfg)
    init_closed_form(net, random_levels(9, 8, 8, n=4))
    meta = {"name": path.stem, "task": task, "model_cfg": cfg.to_dict(), "train_cfg": train_cfg or {}, "step": 0}
    if schedule is not None:
        meta["schedule"] = schedule
    buf = io.BytesIO()
    torch.save({"meta": meta, "model": export_state(net.eval())}, buf)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    need_shared_weights()
    return _write_checkpoint(tmp_path_factory.mktemp("ck") / "tiny-mutual.pt")


@pytest.fixture(scope="module")
def features(task, example_images):
    return task.front(example_images[0])


@pytest.mark.parametrize("residual", [False, True])
def test_container_round_trip_matches_encoder_reconstruction(task, ckpt, features, residual):
    codec = create_codec("mutual", task, checkpoint=str(ckpt), residual=residual)
    streams, rec = codec.reconstruct(features, 2.25)
    data = codec.encode(features, 2.25)
    header, payload = bitstream.unpack(data)
    assert payload == streams and header.param == 2.25 and header.model_tag == codec.model_tag
    assert len(streams) == codec.net.stream_count(residual)  # forced on or off
    out = codec.decode(data)
    assert out.geometry == features.geometry
    for k, v in features.levels.items():
        assert out.levels[k].shape == v.shape
        assert torch.equal(out.levels[k], rec.levels[k])


@pytest.mark.parametrize("lam", [1e-9, 1e12])
def test_auto_residual_follows_the_trained_lambda(task, features, tmp_path, lam):
    """``residual="auto"`` weighs the residual's bits against the error it removes with the checkpoint's lambda: a
    lambda near zero never sends it, a huge one always does; either way the decoder follows the file."""
    ck = _write_checkpoint(tmp_path / "lam.pt", train_cfg={"lambda_min": lam, "lambda_max": lam})
    default = create_codec("mutual", task, checkpoint=str(ck))  # the default: off at low qualities
    assert default.residual is None and default.operating_point(1.5)[1] == "off"
    codec = create_codec("mutual", task, checkpoint=str(ck), residual="auto")
    assert codec.rd_lambda(1.5) == pytest.approx(lam)
    streams, rec = codec.reconstruct(features, 1.5)
    assert len(streams) == codec.net.stream_count(lam > 1)
    out = codec.decode(codec.encode(features, 1.5))
    assert all(torch.equal(out.levels[k], rec.levels[k]) for k in rec.levels)
    with pytest.raises(MutualFCError, match="residual must be"):
        create_codec("mutual", task, checkpoint=str(ck), residual="sometimes")


def test_decoding_in_another_process_is_bit_identical(task, ckpt, features, tmp_path):
    codec = create_codec("mutual", task, checkpoint=str(ckpt))
    data = codec.encode(features, 3)
    (tmp_path / "a.mfc").write_bytes(data)
    _, rec = codec.reconstruct(features, 3)
    script = (
        "import sys, numpy as np, torch\n"
        "from mutualfc.tasks import create_task\nfrom mutualfc.codecs import create_codec\n"
        "torch.set_num_threads(2)\n"
        f"c = create_codec('mutual', create_task('yolov5n-coco'), checkpoint={str(ckpt)!r})\n"
        f"fs = c.decode(open({str(tmp_path / 'a.mfc')!r}, 'rb').read())\n"
        f"np.savez({str(tmp_path / 'dec.npz')!r}, **{{k: v.numpy() for k, v in fs.levels.items()}})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    dec = np.load(tmp_path / "dec.npz")
    for k, v in rec.levels.items():
        assert np.array_equal(dec[k], v.numpy()), k


def test_skip_mask_is_computed_on_one_thread_whatever_the_callers_count(task, ckpt, features, monkeypatch):
    """The objectness map decides which cells are coded. At the caller's thread count YOLOX-Nano's differs in its
    last bits between one and two threads (its convolutions), so a value at the threshold could code other cells:
    like the encoder's other float steps it runs on one thread, and the same features give the same bytes."""
    obj = task.objectness_map(features.levels)
    codec = create_codec("mutual", task, checkpoint=str(ckpt), skip_below=float(obj.flatten().median()))
    seen, objectness = [], task.objectness_map
    monkeypatch.setattr(
        task, "objectness_map", lambda levels: (seen.append(torch.get_num_threads()), objectness(levels))[1]
    )
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = codec.encode(features, 3)
        assert torch.get_num_threads() == 2  # restored
        torch.set_num_threads(1)
        one = codec.encode(features, 3)
    finally:
        torch.set_num_threads(n)
    assert seen == [1, 1] and one == two


def test_target_bpp_meets_the_budget(task, ckpt, features, example_images):
    codec = create_codec("mutual", task, checkpoint=str(ckpt))
    pixels = example_images[0].shape[0] * example_images[0].shape[1]
    lo = 8 * len(codec.encode(features, 0)) / pixels
    hi = 8 * len(codec.encode(features, 3)) / pixels
    target = (lo + hi) / 2
    q, data = codec.quality_for_bpp(features, target, pixels)
    assert 0 < q < 3
    assert 8 * len(data) / pixels <= target
    assert codec.decode(data).levels["p3"].shape == features.levels["p3"].shape


@pytest.mark.parametrize("name", ["mutual", "separate"])
def test_real_bits_match_the_training_rate_estimate(task, features, name):
    """Zoo model, real features, background skipped: the one rANS stream per latent costs what ``forward`` (eval
    mode, the training path) says the latents cost, so coding and training use the same distributions."""
    net = create_codec(name, task).net.eval()
    keep = task.objectness_map(features.levels) >= 0.05
    for q in (0, 7):
        strings, _ = net.compress(features.levels, q, residual=False, keep=keep, reconstruct=False)
        with torch.no_grad():
            lik = net(features.levels, q, keep=keep)["likelihoods"]
        estimate = sum(float(-v.log2().sum()) for k, v in lik.items() if k != "r")
        real = 8 * sum(len(s) for s in strings[1:])
        assert abs(real - estimate) < 0.05 * estimate + 256, (q, real, estimate)


def test_damaged_or_foreign_payloads_fail_cleanly(task, ckpt, features):
    codec = create_codec("mutual", task, checkpoint=str(ckpt))
    data = codec.encode(features, 1)
    header, streams = bitstream.unpack(data)
    with pytest.raises(BitstreamError):  # a stream missing, CRC intact
        codec.decode(bitstream.pack(header, streams[:-1]))
    for junk in (b"\x00" * 3, b"\xff" * 7, bytes(range(256)) * 4, b"\xff" * 20000):  # crafted, valid CRC:
        try:  # rANS streams carry no redundancy, so this may decode; it must not crash, hang or blow up
            out = codec.decode(bitstream.pack(header, [junk for _ in streams]))
        except BitstreamError:
            continue
        assert all(torch.isfinite(v).all() and v.shape == features.levels[k].shape for k, v in out.levels.items())
    other = bitstream.Header(header.codec_id, header.task_id, header.param, header.model_tag ^ 1, 640, 480)
    with pytest.raises(BitstreamError, match="another mutual model"):
        codec.decode(bitstream.pack(other, streams))
    with pytest.raises(MutualFCError, match="quality"):
        codec.encode(features, 9)


@pytest.mark.parametrize("arch", ["mutual", "separate"])
def test_a_model_that_decodes_non_finite_levels_is_refused(task, features, tmp_path, arch):
    """Decoders return finite maps or an error: a model whose statistics hold a NaN (a broken checkpoint) makes
    every decode fail with a clear message, for the level it reaches, instead of handing NaNs to the detector."""
    need_shared_weights()
    codec = create_codec(arch, task, checkpoint=str(_write_checkpoint(tmp_path / f"{arch}.pt", arch=arch)))
    data = codec.encode(features, 2)
    assert all(torch.isfinite(v).all() for v in codec.decode(data).levels.values())
    pack = codec.net.mfc.pack if arch == "mutual" else codec.net.codecs["p3"].pack
    pack.mean_p3[0, 3] = float("nan")
    with pytest.raises(BitstreamError, match="decoded level p3 is not finite"):
        codec.decode(data)


def test_checkpoint_errors(task, tmp_path):
    need_shared_weights()
    other = _write_checkpoint(tmp_path / "other.pt", task="faster-rcnn-r50")
    with pytest.raises(MutualFCError, match="trained for task 'faster-rcnn-r50'"):
        create_codec("mutual", task, checkpoint=str(other))
    sep = _write_checkpoint(tmp_path / "sep.pt", arch="separate")
    with pytest.raises(MutualFCError, match="holds a 'separate' model"):
        create_codec("mutual", task, checkpoint=str(sep))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MutualFCError, match="not a mutualfc codec checkpoint"):
        create_codec("mutual", task, checkpoint=str(bad))
    with pytest.raises(MutualFCError, match="not found"):
        create_codec("mutual", task, checkpoint=str(tmp_path / "missing.pt"))


def test_separate_codec_round_trip(task, features, tmp_path):
    need_shared_weights()
    ck = _write_checkpoint(tmp_path / "sep.pt", arch="separate")
    codec = create_codec("separate", task, checkpoint=str(ck))
    data = codec.encode(features, 2)
    _, rec = codec.reconstruct(features, 2)
    out = codec.decode(data)
    assert all(torch.equal(out.levels[k], rec.levels[k]) for k in rec.levels)


def test_background_skipping_follows_the_detector_objectness(task, ckpt, features):
    """The encoder skips the stride-32 cells whose objectness (the real detector's, on the original features) is
    below the threshold; the decoder needs nothing extra."""
    obj = task.objectness_map(features.levels)
    assert obj.shape[-2:] == features.levels["p5"].shape[-2:] and 0 <= float(obj.min()) <= float(obj.max()) <= 1
    tau = float(obj.flatten().median())  # skips about half of the cells
    sizes = {}
    for t in (0.0, tau, 0.999):
        codec = create_codec("mutual", task, checkpoint=str(ckpt), skip_below=t)
        data = codec.encode(features, 3)
        sizes[t] = len(data)
        _, rec = codec.reconstruct(features, 3)
        out = codec.decode(data)
        assert all(torch.equal(out.levels[k], rec.levels[k]) for k in out.levels)
    assert sizes[0.999] < sizes[tau] < sizes[0.0]
    with pytest.raises(MutualFCError, match="skip threshold"):
        create_codec("mutual", task, checkpoint=str(ckpt), skip_below=1.5)


def test_skip_schedule_interpolates_geometrically_between_its_knots():
    from mutualfc.codecs.learned import scheduled_skip_below

    schedule = ((1.0, 0.4), (3.0, 0.1), (5.0, 0.1))
    assert scheduled_skip_below(0.0, schedule) == 0.4 and scheduled_skip_below(9.0, schedule) == 0.1
    assert scheduled_skip_below(2.0, schedule) == pytest.approx(0.2)  # the geometric mean of 0.4 and 0.1
    assert scheduled_skip_below(4.0, schedule) == pytest.approx(0.1)
    taus = [scheduled_skip_below(q / 4) for q in range(33)]  # the shipped schedule never rises with quality
    assert all(a >= b for a, b in zip(taus[:-1], taus[1:], strict=True)) and all(0 < t < 1 for t in taus)


def test_qualities_above_the_top_raise_fidelity(task, ckpt, features, monkeypatch):
    """From the model's top quality to top + 1 the codec sends the residual stream (in the cells where it pays,
    RESIDUAL_RD, as wherever the schedule sends it) and lowers the skip threshold to FIDELITY_SKIP_BELOW; the cells
    below the top's threshold form a second tier coded at a lower quality that rises to the top's at top + 1; the
    container's quality is all the decoder needs. Explicit settings win."""
    from dataclasses import replace

    from mutualfc.codecs.learned import FIDELITY_SKIP_BELOW, RESIDUAL_RD, OperatingPoint, scheduled_skip_below
    from mutualfc.models import TIER_STEP, decode_tiers

    codec = create_codec("mutual", task, checkpoint=str(ckpt))
    top = codec.top
    assert codec.default_params[-1] == top + 1
    codec.schedule = replace(codec.schedule, residual_from=top - 0.5)  # the tiny model has fewer qualities
    on = OperatingPoint(top, "on", scheduled_skip_below(top), residual_rd=RESIDUAL_RD)
    assert codec.operating_point(top) == on  # on from RESIDUAL_FROM, in the cells where it pays
    assert codec.operating_point(top - 1)[1] == "off"
    assert create_codec("separate", task).operating_point(top)[1] == "off"  # no residual stream to send
    op = codec.operating_point(top + 0.5)
    assert (op.quality, op.residual) == (top, "on") and FIDELITY_SKIP_BELOW < op.skip_below < scheduled_skip_below(top)
    step = round(codec.schedule.fidelity_tier_span * TIER_STEP / 2)
    assert (op.tier_below, op.tier_step, op.residual_rd) == (scheduled_skip_below(top), step, RESIDUAL_RD)
    assert create_codec("mutual", task, checkpoint=str(ckpt), residual="on").operating_point(top + 0.5).residual_rd == 0
    chosen = create_codec("mutual", task, checkpoint=str(ckpt), residual="on", residual_rd=0.5)
    assert chosen.operating_point(top + 0.5).residual_rd == chosen.operating_point(0).residual_rd == 0.5
    assert create_codec("mutual", task, checkpoint=str(ckpt), residual_rd=0).operating_point(top).residual_rd == 0
    assert create_codec("mutual", task, checkpoint=str(ckpt), residual_rd=0.5).operating_point(0).residual_rd == 0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(MutualFCError, match="rate-distortion threshold"):
            create_codec("mutual", task, checkpoint=str(ckpt), residual_rd=bad)
    assert create_codec("separate", task).operating_point(top + 0.5)[3:] == (0, 0, 0)  # no tiers, no residual
    assert codec.operating_point(top + 1) == OperatingPoint(
        top, "on", pytest.approx(FIDELITY_SKIP_BELOW), residual_rd=RESIDUAL_RD
    )
    info = codec.describe(top + 1)  # what eval records with the point
    assert info["residual"] == "on" and info["skip_below"] == pytest.approx(FIDELITY_SKIP_BELOW)
    assert info["residual_rd"] == RESIDUAL_RD
    assert codec.describe(top + 0.5)["tier_quality"] == top - step / TIER_STEP
    hi = codec.encode(features, top + 1)
    header, streams = bitstream.unpack(hi)
    assert header.param == top + 1 and len(streams) == codec.net.stream_count(residual=True)
    assert len(hi) > len(codec.encode(features, top))
    _, rec = codec.reconstruct(features, top + 1)
    out = codec.decode(hi)
    assert all(torch.equal(out.levels[k], rec.levels[k]) for k in rec.levels)
    codec.schedule = replace(codec.schedule, residual_rd=1e9)  # no cell's residual pays: an empty cell map
    mid = codec.encode(features, top + 0.5)  # tiers in the mask stream, residual cells in a fourth stream
    _, streams = bitstream.unpack(mid)
    shape = task.level_shapes(features.geometry)[task.level_names[-1]][1:]
    assert decode_tiers(streams[0], shape)[1] == step and len(streams) == codec.net.stream_count(residual=True) + 1
    _, rec = codec.reconstruct(features, top + 0.5)
    out = codec.decode(mid)
    assert all(torch.equal(out.levels[k], rec.levels[k]) for k in rec.levels)
    fixed = create_codec("mutual", task, checkpoint=str(ckpt), residual="off", skip_below=0.2)
    assert fixed.operating_point(top + 1) == OperatingPoint(top, "off", 0.2)


def test_operating_points_travel_with_the_checkpoint(task, tmp_path):
    """A checkpoint's schedule is the codec's policy (a second model does not inherit the first one's tuning);
    without one the codec uses the defaults and every record says which; explicit options still win."""
    need_shared_weights()
    own = {"residual_from": 0.0, "residual_rd": 0.5, "skip": [[0.0, 0.45], [3.0, 0.05]], "source": "tuned for test"}
    codec = create_codec("mutual", task, checkpoint=str(_write_checkpoint(tmp_path / "own.pt", schedule=own)))
    op = codec.operating_point(0)
    assert (op.residual, op.skip_below, op.residual_rd) == ("on", 0.45, 0.5)
    assert codec.operating_point(3).skip_below == pytest.approx(0.05) and codec.describe(1)["schedule"] == own["source"]
    assert (
        create_codec("mutual", task, checkpoint=str(tmp_path / "own.pt"), skip_below=0.2).operating_point(0)[2] == 0.2
    )
    plain = create_codec("mutual", task, checkpoint=str(_write_checkpoint(tmp_path / "plain.pt")))
    assert plain.operating_point(0).residual == "off" and plain.describe(0)["schedule"].startswith("defaults")
    bad = _write_checkpoint(tmp_path / "bad.pt", schedule={"skip_bellow": 0.1})
    with pytest.raises(MutualFCError, match="unknown settings \\['skip_bellow'\\]"):
        create_codec("mutual", task, checkpoint=str(bad))


def test_one_coding_plan_per_image_drives_compress(task, ckpt, features):
    """The codec resolves an image's operating point and masks once into a ``CodingPlan``; the network carries it
    out: the plan alone reproduces the codec's streams, the loose-option form gives the same plan, and explicit
    fields override it."""
    from mutualfc.models import CodingPlan

    codec = create_codec("mutual", task, checkpoint=str(ckpt), residual="on")
    for q in (1, codec.top + 0.5):
        plan = codec.plan(features, q)
        assert isinstance(plan, CodingPlan) and plan.keep is not None and plan.residual
        assert codec.net.compress(features.levels, plan, reconstruct=False)[0] == codec.encode_streams(features, q)
        same = CodingPlan.of(plan.quality, residual=plan.residual, keep=plan.keep, low_keep=plan.low_keep,
                             low_step=plan.low_step, residual_rd=plan.residual_rd)  # fmt: skip
        assert codec.net.compress(features.levels, same, reconstruct=False)[0] == codec.encode_streams(features, q)
    plan = codec.plan(features, 1)
    without = codec.net.compress(features.levels, plan, reconstruct=False, residual=False)[0]  # an override wins
    assert len(without) == codec.net.stream_count() < len(codec.encode_streams(features, 1))
    assert plan.describe()["keep"] == int(plan.keep.sum())
    with pytest.raises(ValueError, match="no tiers and no residual"):
        create_codec("separate", task).net.compress(features.levels, CodingPlan(1, low_keep=plan.keep, low_step=8))


def test_every_zoo_entry_loads_checked_and_brings_its_own_operating_points():
    """Each shipped checkpoint matches its declared SHA-256 and task; the YOLOX-Nano mutual model carries the
    schedule tuned for it, not YOLOv5n's defaults."""
    from mutualfc.codecs.learned import Schedule
    from mutualfc.zoo import ZOO, load_model

    assert {t for _, t in ZOO} == {"yolov5n-coco", "yolox-nano-coco"}
    for name, task_name in ZOO:
        model = load_model(name, task_name)
        assert model.meta["task"] == task_name
    own = Schedule.from_meta(load_model("mutual", "yolox-nano-coco").meta)
    assert own != Schedule() and own.source.startswith("yolox-nano-coco")


def test_the_residual_threshold_may_follow_the_quality(task, tmp_path):
    """A schedule's residual threshold as (quality, threshold) knots: geometric between them, as the skip's."""
    need_shared_weights()
    own = {"residual_from": 0.0, "residual_rd": [[1.0, 0.02], [3.0, 0.002]], "source": "knots"}
    codec = create_codec("mutual", task, checkpoint=str(_write_checkpoint(tmp_path / "k.pt", schedule=own)))
    assert codec.operating_point(0).residual_rd == pytest.approx(0.02)
    assert codec.operating_point(2).residual_rd == pytest.approx((0.02 * 0.002) ** 0.5)
    assert codec.operating_point(3).residual_rd == pytest.approx(0.002)
    assert create_codec("mutual", task, checkpoint=str(tmp_path / "k.pt"), residual_rd=0.5).operating_point(2)[5] == 0.5


def test_a_schedule_may_stop_the_model_quality_below_its_top(task, features, tmp_path):
    """``fidelity_from``: above it a quality buys fidelity (more cells in a second tier, then all of them) at its
    gains rather than a finer quantiser; the decoder reads the same schedule from the checkpoint and decodes there.
    Re-tuning a checkpoint's schedule keeps its weights but gives it a new model tag, so that a stream coded under
    the old schedule is refused rather than decoded at another quality."""
    from mutualfc.codecs.learned import scheduled_skip_below
    from mutualfc.train.checkpoints import store_schedule

    need_shared_weights()
    own = {"residual_from": 0.0, "skip": [[0.0, 0.2]], "fidelity_skip_below": 0.01, "fidelity_from": 1.5,
           "source": "capped for test"}  # fmt: skip
    path = _write_checkpoint(tmp_path / "capped.pt", schedule=own)
    codec = create_codec("mutual", task, checkpoint=str(path))
    top = codec.top
    assert top > 2 and codec.operating_point(1.5).quality == 1.5 and codec.operating_point(1.0).quality == 1.0
    assert {codec.operating_point(q).quality for q in (2.0, top, top + 1)} == {1.5}
    t = (2.5 - 1.5) / (top + 1 - 1.5)
    mid = codec.operating_point(2.5)
    assert mid.skip_below == pytest.approx(0.2 ** (1 - t) * 0.01**t)
    assert mid.tier_below == scheduled_skip_below(1.5, own["skip"])
    assert mid.tier_step > 0 and codec.operating_point(top + 1).skip_below == pytest.approx(0.01)
    for q in (1.0, 2.5, top + 1):
        data = codec.encode(features, q)
        assert bitstream.unpack(data)[0].param == q  # the container keeps the user's quality
        _, rec = codec.reconstruct(features, q)
        out = codec.decode(data)
        assert all(torch.equal(out.levels[k], rec.levels[k]) for k in rec.levels)
    old = codec.encode(features, top)
    meta = store_schedule(path, tmp_path / "retuned.pt", own | {"fidelity_from": None})
    assert meta["schedule"]["fidelity_from"] is None
    retuned = create_codec("mutual", task, checkpoint=str(tmp_path / "retuned.pt"))
    assert retuned.model_tag != codec.model_tag and retuned.operating_point(top).quality == top
    same, was = retuned.net.state_dict(), codec.net.state_dict()
    assert same.keys() == was.keys() and all(torch.equal(same[k], was[k]) for k in same)  # the weights unchanged
    with pytest.raises(BitstreamError, match="tag"):
        retuned.decode(old)
    with pytest.raises(MutualFCError, match="fidelity_from 5 is not a model quality"):
        bad = _write_checkpoint(tmp_path / "bad.pt", schedule={"fidelity_from": 5})
        create_codec("mutual", task, checkpoint=str(bad))
    with pytest.raises(MutualFCError, match="unknown settings"):
        store_schedule(path, tmp_path / "x.pt", {"fidelity_form": 2})
    assert not (tmp_path / "x.pt").exists()


def test_the_fast_variant_is_its_own_codec(task, features):
    """``mutual-fast`` runs the mutual network with its own zoo model (the lighter entropy model) under its own codec
    id: it decodes its streams to its encoder's reconstruction, and neither it nor ``mutual`` decodes the other's."""
    fast, full = create_codec("mutual-fast", task), create_codec("mutual", task)
    cfg = fast.net.cfg
    assert (cfg.arch, len(cfg.groups), cfg.hyper, cfg.width) == ("mutual", 3, 64, 32)
    assert fast.model_tag != full.model_tag and fast.codec_id != full.codec_id
    data, rec = fast.encode(features, 4), fast.reconstruct(features, 4)[1]
    assert bitstream.unpack(data)[0].codec_id == fast.codec_id
    got = fast.decode(data)
    assert all(torch.equal(got.levels[k], rec.levels[k]) for k in rec.levels)
    with pytest.raises(BitstreamError, match="codec id"):
        full.decode(data)
    with pytest.raises(BitstreamError, match="codec id"):
        fast.decode(full.encode(features, 4))
    with pytest.raises(MutualFCError, match="no trained 'mutual-fast' codec for task 'fasterrcnn-r50-fpn-coco'"):
        load_model("mutual-fast", "fasterrcnn-r50-fpn-coco")
    yolox_fast, yolox = load_model("mutual-fast", "yolox-nano-coco"), load_model("mutual", "yolox-nano-coco")
    cfg = yolox_fast.net.cfg  # YOLOX-Nano's own fast model, under its own schedule
    assert (len(cfg.groups), cfg.hyper, cfg.width) == (3, 64, 32) and yolox_fast.tag != yolox.tag
    assert yolox_fast.meta["schedule"] == yolox.meta["schedule"]
