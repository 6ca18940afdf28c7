"""What a new user hit on their own photos (issue: rough edges), one test each; all through the real CLI."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mutualfc.cli.main import main
from mutualfc.images import load_image
from tests.conftest import EXAMPLE, need_shared_weights

IMAGES = sorted((EXAMPLE / "images").glob("*.jpg"))


def _err_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [x for x in err.replace("\r", "\n").splitlines() if x.startswith("mutualfc:")]


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """The example images coded with the mutual codec at quality 4, under non-numeric and numeric names."""
    need_shared_weights()
    d = tmp_path_factory.mktemp("streams")
    assert (
        main(["-q", "encode", *map(str, IMAGES[:3]), "--codec", "mutual", "--quality", "4", "--out-dir", str(d)]) == 0
    )
    named = d / "named"
    named.mkdir()
    for src, name in zip(sorted(d.glob("*.mfc")), ("abc", "def", "46"), strict=True):
        shutil.copy(src, named / f"{name}.mfc")
    return d, named


def test_decode_and_detect_number_images_by_one_rule_and_name_their_files(streams, tmp_path):
    _, named = streams
    files = [named / "abc.mfc", named / "def.mfc", named / "46.mfc"]
    assert main(["-q", "decode", *map(str, files), "--detections", str(tmp_path / "d.json")]) == 0
    dets = json.loads((tmp_path / "d.json").read_text())
    by_file = {d["file_name"]: d["image_id"] for d in dets}
    assert by_file == {"abc.mfc": 1, "def.mfc": 2, "46.mfc": 3}  # not every stem is a number: 1..N in order
    assert all("category" in d for d in dets)
    photos = tmp_path / "photos"
    photos.mkdir()
    for src, name in zip(IMAGES[:3], ("abc", "def", "46"), strict=True):
        shutil.copy(src, photos / f"{name}.jpg")
    args = [
        "-q",
        "detect",
        *(str(photos / f"{n}.jpg") for n in ("abc", "def", "46")),
        "--out",
        str(tmp_path / "x.json"),
    ]
    assert main(args) == 0
    ids = {d["file_name"]: d["image_id"] for d in json.loads((tmp_path / "x.json").read_text())}
    assert ids == {"abc.jpg": 1, "def.jpg": 2, "46.jpg": 3}
    assert main(["-q", "decode", str(streams[0]), "--detections", str(tmp_path / "n.json")]) == 0  # a folder
    numeric = {d["image_id"] for d in json.loads((tmp_path / "n.json").read_text())}
    assert numeric == {int(p.stem) for p in IMAGES[:3]}  # COCO names: the numbers themselves


def test_encode_refuses_colliding_output_names_and_writes_nothing(tmp_path, capsys):
    for sub in ("c1", "c2"):
        (tmp_path / sub).mkdir()
        shutil.copy(IMAGES[0], tmp_path / sub / "x.jpg")
    out = tmp_path / "out"
    rc = main(
        [
            "encode",
            str(tmp_path / "c1" / "x.jpg"),
            str(tmp_path / "c2" / "x.jpg"),
            "--codec",
            "jpeg",
            "--out-dir",
            str(out),
        ]
    )
    assert rc == 2 and not out.exists()
    (line,) = _err_lines(capsys)
    assert "c1/x.jpg" in line and "c2/x.jpg" in line


def test_huge_image_is_a_one_line_error_naming_the_limit(tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("1", (14000, 14000)).save(big)
    assert main(["encode", str(big), "--codec", "jpeg", "--out-dir", str(tmp_path / "o")]) == 2
    (line,) = _err_lines(capsys)
    assert "big.png" in line and "MUTUALFC_MAX_IMAGE_PIXELS" in line


def test_exif_orientation_is_applied_to_user_images(tmp_path):
    im = Image.open(IMAGES[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif.tobytes())
    stored = load_image(path)
    upright = load_image(path, exif_transpose=True)
    assert upright.shape[:2] == stored.shape[1::-1]
    out = tmp_path / "o"
    assert main(["-q", "encode", str(path), "--codec", "jpeg", "--quality", "50", "--out-dir", str(out)]) == 0
    from mutualfc import bitstream

    header, _ = bitstream.unpack((out / "phone.mfc").read_bytes())
    assert (header.height, header.width) == upright.shape[:2]  # default: on for user images


def test_target_bpp_over_budget_warns_or_fails_and_quality_with_target_is_refused(streams, tmp_path, capsys):
    img = str(IMAGES[0])
    out = tmp_path / "o"
    assert main(["-q", "encode", img, "--codec", "mutual", "--target-bpp", "0.0001", "--out-dir", str(out)]) == 0
    assert any("warning" in x and "over the --target-bpp" in x for x in _err_lines_all(capsys))
    strict = tmp_path / "s"
    rc = main(
        [
            "-q",
            "encode",
            img,
            "--codec",
            "mutual",
            "--target-bpp",
            "0.0001",
            "--strict-budget",
            "--out-dir",
            str(strict),
        ]
    )
    assert rc == 2 and not strict.exists()
    capsys.readouterr()
    rc = main(["encode", img, "--codec", "mutual", "--quality", "3", "--target-bpp", "0.1", "--out-dir", str(out)])
    assert rc == 2 and "not both" in _err_lines(capsys)[0]


def _err_lines_all(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("mutualfc:")]


def test_skip_errors_reports_each_bad_file_and_exits_non_zero(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "o"
    args = ["encode", str(IMAGES[0]), str(bad), "--codec", "jpeg", "--out-dir", str(out)]
    assert main(args) == 2 and not out.exists()  # without the flag: one error, nothing written
    assert main([*args, "--skip-errors"]) == 1
    lines = _err_lines_all(capsys)
    assert any("skipped" in x and "broken.jpg" in x for x in lines)
    assert sorted(p.name for p in out.iterdir()) == [IMAGES[0].stem + ".mfc"]


def test_every_container_error_names_its_file(streams, tmp_path, capsys):
    good = sorted(streams[0].glob("*.mfc"))[0]
    data = good.read_bytes()
    for name, payload in (
        ("garbage.mfc", b"hello world"),
        ("crc.mfc", data[:-1] + bytes([data[-1] ^ 1])),
        ("short.mfc", data[: len(data) // 2]),
    ):
        (tmp_path / name).write_bytes(payload)
        assert main(["decode", str(tmp_path / name)]) == 2
        (line,) = _err_lines(capsys)
        assert name in line, line


def test_inputs_are_checked_before_torch_is_imported(tmp_path):
    code = (
        "import sys; from mutualfc.cli.main import main; "
        f"rc = main(['encode', '{tmp_path}/missing.jpg', '--codec', 'mutual', '--out-dir', '{tmp_path}/o']); "
        "print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert "missing.jpg" in out.stderr


def test_files_and_folders_are_accepted_alike(tmp_path):
    need_shared_weights()
    assert main(["-q", "detect", str(EXAMPLE / "images"), "--out", str(tmp_path / "a.json")]) == 0
    assert main(["-q", "detect", *map(str, IMAGES), "--out", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert main(["-q", "encode", str(EXAMPLE / "images"), "--codec", "jpeg", "--out-dir", str(tmp_path / "e")]) == 0
    assert len(list((tmp_path / "e").glob("*.mfc"))) == len(IMAGES)


def test_decode_help_lists_only_decoder_options(capsys):
    with pytest.raises(SystemExit):
        main(["decode", "--help"])
    text = capsys.readouterr().out
    assert "--checkpoint" in text and "--min-score" in text
    for encoder_only in ("--residual", "--skip-below", "--preset", "--vvc-encoder", "--vvc-config"):
        assert encoder_only not in text, encoder_only


def test_drawings_label_boxes_with_class_names(monkeypatch):
    from PIL import ImageDraw

    from mutualfc.eval.draw import draw_detections
    from mutualfc.tasks.base import Detections
    from mutualfc.tasks.yolov5 import COCO80_CATEGORY_IDS, COCO80_NAMES

    seen = []
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(
        ImageDraw.ImageDraw, "text", lambda self, xy, text, **kw: seen.append((text, kw)) or real(self, xy, text, **kw)
    )
    det = Detections(np.array([[10.0, 40.0, 200.0, 300.0]]), np.array([0.9]), np.array([18]))
    draw_detections(
        np.zeros((960, 1280, 3), np.uint8), det, names=dict(zip(COCO80_CATEGORY_IDS, COCO80_NAMES, strict=True))
    )
    ((text, kw),) = seen
    assert text == "dog 0.90" and kw["font"].size >= 20  # legible on a large image


def test_decode_min_score_filters_the_detections_file(streams, tmp_path):
    files = sorted(streams[0].glob("*.mfc"))
    for score in ("0.5", "0"):
        assert (
            main(
                [
                    "-q",
                    "decode",
                    *map(str, files),
                    "--detections",
                    str(tmp_path / f"{score}.json"),
                    "--min-score",
                    score,
                ]
            )
            == 0
        )
    strict, everything = (json.loads((tmp_path / f"{s}.json").read_text()) for s in ("0.5", "0"))
    assert strict and all(d["score"] >= 0.5 for d in strict) and len(everything) > len(strict)


def test_version_and_codec_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip().startswith("mutualfc 0.")
    assert main(["codecs"]) == 0
    out = capsys.readouterr().out
    names = ("jpeg", "webp", "hevc-image", "vvc-image", "hevc-feature", "vvc-feature", "mutual", "separate")
    assert all(f"{n} (id" in out for n in names)
    assert "quality 0..8" in out and "qp 0..63" in out


def test_a_device_that_is_not_there_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert main(["detect", str(IMAGES[0]), "--out", str(tmp_path / "d.json"), "--device", "cuda"]) == 2
    assert "no CUDA device" in _err_lines(capsys)[0]


def test_alpha_grayscale_and_palette_images_become_rgb(tmp_path):
    rgb = np.asarray(Image.open(IMAGES[0]).convert("RGB"))[:64, :64]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png"), rgb)  # alpha dropped, colours kept
    Image.fromarray(rgb).convert("L").save(tmp_path / "g.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    for name in ("g.png", "p.png"):
        out = load_image(tmp_path / name)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
