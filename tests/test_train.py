"""Training loop: runs, logs, resumes exactly where it stopped, exports a checkpoint the codec loads."""

import csv
import os
import shutil

import pytest
import torch

from mutualfc.cli.main import main as cli
from mutualfc.codecs import create_codec
from mutualfc.errors import MutualFCError
from mutualfc.train import TrainConfig, build_feature_cache, export_checkpoint, train
from tests.conftest import EXAMPLE, need_shared_weights
from tests.test_mutual_model import SMALL


@pytest.fixture(scope="module")
def cache(task, tmp_path_factory):
    need_shared_weights()
    root = tmp_path_factory.mktemp("train")
    imgs = root / "imgs"
    imgs.mkdir()
    for p in sorted((EXAMPLE / "images").glob("*.jpg")):
        shutil.copy(p, imgs)
    build_feature_cache(task, imgs, root / "cache", progress=False)
    return root / "cache"


def test_train_resume_and_export(task, cache, tmp_path, features=None):
    cfg = TrainConfig(cache=str(cache), model=SMALL, steps=3, batch=2, crop=4, checkpoint_every=1, log_every=1)
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    ck = torch.load(run / "last.pt", weights_only=False)
    assert ck["step"] == 3
    train(TrainConfig.from_dict({**cfg.__dict__, "steps": 3}), run, progress=False)  # nothing left to do
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 3
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["bpp"]) > 0 and float(r["mse"]) > 0 and float(r["task"]) > 0 for r in rows)  # task term on
    meta = export_checkpoint(run, tmp_path / "tiny.pt", "tiny")
    assert meta["task"] == "yolov5n-coco" and meta["step"] == 3
    codec = create_codec("mutual", task, checkpoint=str(tmp_path / "tiny.pt"))
    fs = task.front(torch.zeros(0).new_zeros((96, 128, 3), dtype=torch.uint8).numpy() + 114)
    assert codec.decode(codec.encode(fs, 1)).levels["p3"].shape == fs.levels["p3"].shape


def test_cli_train_refuses_a_cache_of_another_task(cache, tmp_path, capsys):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.json").write_text('{"task": "other-net", "levels": ["p3", "p4", "p5"]}')
    rc = cli(["-q", "train", "run", "--cache", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r"), "--steps", "1"])
    assert rc == 2
    assert "holds features of other-net" in capsys.readouterr().err


def test_a_cache_smaller_than_one_batch_is_refused_not_looped_on(cache, tmp_path, capsys):
    """Training takes full batches only; a cache with fewer images than one batch would never take a step."""
    with pytest.raises(MutualFCError, match="fewer than one batch"):
        train(TrainConfig(cache=str(cache), model=SMALL, steps=1, batch=64, crop=4), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_fine_tuning_starts_from_matching_weights(task, cache, tmp_path):
    """``init_from`` loads what fits (a residual of another width is refitted in closed form) and refuses a
    checkpoint of another task network."""
    cfg = TrainConfig(cache=str(cache), model=SMALL, steps=1, batch=2, crop=4)
    train(cfg, tmp_path / "a", progress=False)
    src = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    tuned = TrainConfig.from_dict({**cfg.__dict__, "model": {**SMALL, "residual": 4}, "steps": 0,
                                   "init_from": str(tmp_path / "a" / "last.pt")})  # fmt: skip
    train(tuned, tmp_path / "b", progress=False)
    got = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    for k in ("bfc.lin_a.weight", "bfc.latent_codec.hyper.h_a.0.weight", "bfc.gain.gain", "mfc.lin.weight"):
        assert torch.equal(got[k], src["model"][k]), k
    assert got["res.lin_a.weight"].shape[0] == 4
    src["task"] = "other-net"
    torch.save(src, tmp_path / "other.pt")
    with pytest.raises(MutualFCError, match="other-net"):
        train(TrainConfig.from_dict({**tuned.__dict__, "init_from": str(tmp_path / "other.pt")}), tmp_path / "c",
              progress=False)  # fmt: skip


def test_training_applies_the_encoders_skip_mask(cache, tmp_path):
    """With ``skip_below`` the crops' background cells are masked as the encoder masks them: the same first step
    (same seed, crops and quality) then costs fewer bits."""
    cfg = TrainConfig(cache=str(cache), model=SMALL, steps=1, batch=2, crop=4)
    bpp = {}
    for tau in (0.0, 0.05, "schedule"):  # "schedule": the codecs' default threshold at the step's quality
        run = tmp_path / f"t{tau}"
        train(TrainConfig.from_dict({**cfg.__dict__, "skip_below": tau}), run, progress=False)
        bpp[tau] = float(next(csv.DictReader(open(run / "log.csv")))["bpp"])
    assert 0 <= bpp[0.05] < bpp[0.0] and 0 <= bpp["schedule"] < bpp[0.0]


def test_train_only_changes_nothing_outside_its_prefixes(cache, tmp_path):
    """``train_only=("res.",)`` fits a new residual stream on a fixed base: every other tensor, the base's
    entropy-bottleneck quantiles included, stays exactly as loaded."""
    cfg = TrainConfig(cache=str(cache), model=SMALL, steps=1, batch=2, crop=4)
    train(cfg, tmp_path / "a", progress=False)
    src = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    only = TrainConfig.from_dict({**cfg.__dict__, "model": {**SMALL, "residual": 4}, "steps": 2,
                                  "init_from": str(tmp_path / "a" / "last.pt"), "train_only": ("res.",)})  # fmt: skip
    train(only, tmp_path / "b", progress=False)
    got = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    base = [k for k in got if not k.startswith("res.") and got[k].is_floating_point()]
    assert base and all(torch.equal(got[k], src[k]) for k in base)
    with pytest.raises(MutualFCError, match="no parameter"):
        train(TrainConfig.from_dict({**only.__dict__, "train_only": ("nope.",)}), tmp_path / "c", progress=False)


class _RunsCode:
    """A pickle that runs a command when it is unpickled without ``weights_only``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_user_checkpoints_are_read_without_running_code(cache, tmp_path):
    """--init-from, a run folder to resume or export, and --checkpoint are read with weights_only: a malicious
    pickle is refused with a one-line error and its payload never runs."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"task": "yolov5n-coco", "model": _RunsCode(marker)}, evil)
    cfg = TrainConfig(cache=str(cache), model=SMALL, steps=1, batch=2, crop=4, init_from=str(evil))
    with pytest.raises(MutualFCError, match="not a mutualfc checkpoint"):
        train(cfg, tmp_path / "a", progress=False)
    run = tmp_path / "resume"
    run.mkdir()
    (run / "last.pt").write_bytes(evil.read_bytes())
    with pytest.raises(MutualFCError, match="not a mutualfc checkpoint"):
        train(TrainConfig(cache=str(cache), model=SMALL, steps=1, batch=2, crop=4), run, progress=False)
    with pytest.raises(MutualFCError, match="not a mutualfc checkpoint"):
        export_checkpoint(run, tmp_path / "out.pt", "x")
    assert cli(["encode", str(evil), "--codec", "mutual", "--checkpoint", str(evil), "--out-dir", str(tmp_path)]) == 2
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_cli_train_schedule_restamps_a_checkpoint_and_refuses_bad_input(tmp_path, capsys):
    """``mutualfc train schedule``: the shipped weights with new operating points in a new file; a file that is
    not JSON, or a schedule with unknown settings, is refused with one line naming it and nothing is written."""
    from mutualfc.zoo import CHECKPOINTS, ZOO, read_checkpoint

    src = CHECKPOINTS / ZOO[("mutual", "yolox-nano-coco")].file
    good = tmp_path / "s.json"
    good.write_text('{"fidelity_from": 6.0, "source": "test"}')
    assert cli(["-q", "train", "schedule", str(src), "--schedule", str(good), "--out", str(tmp_path / "o.pt")]) == 0
    new, _ = read_checkpoint(tmp_path / "o.pt")
    old, _ = read_checkpoint(src)
    assert new["meta"]["schedule"]["fidelity_from"] == 6.0 and new["meta"]["schedule"]["source"] == "test"
    assert new["meta"]["name"] == old["meta"]["name"] and new["model"].keys() == old["model"].keys()
    for text, why in (("not json", "cannot read a JSON object"), ('{"skip_bellow": 1}', "unknown settings")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        rc = cli(["-q", "train", "schedule", str(src), "--schedule", str(bad), "--out", str(tmp_path / "no.pt")])
        err = capsys.readouterr().err
        assert rc != 0 and why in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "no.pt").exists()


def test_cli_train_sizes_the_entropy_model(cache, tmp_path, capsys):
    """``--groups``, ``--hyper``, ``--width`` and ``--uncorrected-cells`` reach the model the run trains (its config
    and its layers); malformed groups are refused with a one-line error."""
    run = tmp_path / "r"
    rc = cli(["-q", "train", "run", "--cache", str(cache), "--run-dir", str(run), "--steps", "1", "--batch", "2",
              "--crop", "4", "--groups", "1,3", "--hyper", "16", "--width", "24", "--residual", "8",
              "--uncorrected-cells", "mean"])  # fmt: skip
    assert rc == 0
    model = __import__("json").loads((run / "config.json").read_text())["model"]
    assert (model["groups"], model["hyper"], model["width"], model["residual"]) == ([1, 3], 16, 24, 8)
    assert model["predict_uncorrected"] is False
    weights = torch.load(run / "last.pt", weights_only=False)["model"]
    assert weights["bfc.latent_codec.hyper.h_a.0.weight"].shape[0] == 16
    assert weights["bfc.g_s.0.weight"].shape[0] == 24
    assert not any(k.startswith("bfc.latent_codec.y.latent_codec.y2.") for k in weights)  # two groups, not five
    rc = cli(["-q", "train", "run", "--cache", str(cache), "--run-dir", str(tmp_path / "bad"), "--groups", "2,0"])
    assert rc == 2 and "--groups '2,0'" in capsys.readouterr().err
