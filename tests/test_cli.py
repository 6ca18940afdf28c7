import json
import subprocess
import sys

import pytest

from mutualfc.cli.main import main
from tests.conftest import EXAMPLE

IMAGES, ANN = str(EXAMPLE / "images"), str(EXAMPLE / "instances.json")


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("mutualfc:")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_image_folder(capsys, tmp_path):
    assert main(["detect", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "d.json")]) == 2
    assert "not found" in _err(capsys)
    assert not (tmp_path / "d.json").exists()


def test_bad_annotations_json(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert (
        main(
            [
                "eval",
                "--codec",
                "none",
                "--images",
                IMAGES,
                "--annotations",
                str(bad),
                "--out",
                str(tmp_path / "r.jsonl"),
            ]
        )
        == 2
    )
    assert "not valid JSON" in _err(capsys)
    bad.write_text(json.dumps({"images": []}))
    assert (
        main(
            [
                "eval",
                "--codec",
                "none",
                "--images",
                IMAGES,
                "--annotations",
                str(bad),
                "--out",
                str(tmp_path / "r.jsonl"),
            ]
        )
        == 2
    )
    assert "COCO instances" in _err(capsys)
    assert not (tmp_path / "r.jsonl").exists()


def test_missing_and_corrupt_images(capsys, tmp_path):
    gt = json.loads((EXAMPLE / "instances.json").read_text())
    (tmp_path / "img").mkdir()
    name = gt["images"][0]["file_name"]
    (tmp_path / "img" / name).write_bytes(b"\xff\xd8 broken jpeg")
    gt["images"] = gt["images"][:1]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    args = [
        "eval",
        "--codec",
        "none",
        "--images",
        str(tmp_path / "img"),
        "--annotations",
        str(tmp_path / "gt.json"),
        "--out",
        str(tmp_path / "r.jsonl"),
    ]
    assert main(args) == 2
    assert "cannot decode image" in _err(capsys)
    (tmp_path / "img" / name).unlink()
    assert main(args) == 2
    assert "missing" in _err(capsys)


def test_wrong_weights_file(capsys, tmp_path):
    w = tmp_path / "w.pt"
    w.write_bytes(b"garbage")
    assert main(["detect", "--images", IMAGES, "--weights", str(w), "--out", str(tmp_path / "d.json")]) == 2
    assert "w.pt" in _err(capsys)


def test_missing_encoder(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("MUTUALFC_VVC_ENCODER", raising=False)
    assert (
        main(
            [
                "eval",
                "--codec",
                "vvc-feature",
                "--images",
                IMAGES,
                "--annotations",
                ANN,
                "--out",
                str(tmp_path / "r.jsonl"),
            ]
        )
        == 2
    )
    assert "no VVC encoder found" in _err(capsys)


def test_unknown_codec(capsys, tmp_path):
    assert (
        main(["eval", "--codec", "nope", "--images", IMAGES, "--annotations", ANN, "--out", str(tmp_path / "r.jsonl")])
        == 2
    )
    assert "unknown codec" in _err(capsys)


def test_encode_decode_files_and_damage(capsys, tmp_path):
    img = sorted((EXAMPLE / "images").glob("*.jpg"))[0]
    assert (
        main(["encode", str(img), "--codec", "hevc-feature", "--quality", "30", "--out-dir", str(tmp_path / "bits")])
        == 0
    )
    f = tmp_path / "bits" / (img.stem + ".mfc")
    dets = tmp_path / "dets.json"
    draw = tmp_path / "drawn"
    args = ["--features", str(tmp_path / "feat"), "--draw", str(draw), "--images", str(EXAMPLE / "images")]
    assert main(["decode", str(f), "--detections", str(dets), *args]) == 0
    res = json.loads(dets.read_text())
    assert res and res[0]["image_id"] == int(img.stem)
    assert (tmp_path / "feat" / (img.stem + ".npz")).is_file()
    from PIL import Image

    with Image.open(draw / (img.stem + ".png")) as im:
        assert im.size == Image.open(img).size
    capsys.readouterr()
    data = f.read_bytes()
    for bad in (data[: len(data) // 2], data[:10], b"hello world" * 10):
        f.write_bytes(bad)
        assert main(["decode", str(f)]) == 2
        _err(capsys)


def test_eval_detect_bdrate_plot_end_to_end(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    assert (
        main(
            [
                "eval",
                "--codec",
                "jpeg",
                "--param",
                "10,30,50,70",
                "--images",
                IMAGES,
                "--annotations",
                ANN,
                "--limit",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "eval",
                "--codec",
                "webp",
                "--param",
                "10,30,50,70",
                "--images",
                IMAGES,
                "--annotations",
                ANN,
                "--limit",
                "2",
                "--out",
                str(tmp_path / "w.jsonl"),
                "--plot",
                str(tmp_path / "rd.png"),
            ]
        )
        == 0
    )
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["param"] for r in recs] == [10, 30, 50, 70] and all(r["n_images"] == 2 for r in recs)
    assert (tmp_path / "rd.png").read_bytes()[:4] == b"\x89PNG"
    # resuming skips finished points
    assert (
        main(
            [
                "eval",
                "--codec",
                "jpeg",
                "--param",
                "10,30",
                "--images",
                IMAGES,
                "--annotations",
                ANN,
                "--limit",
                "2",
                "--out",
                str(out),
                "--skip-existing",
            ]
        )
        == 0
    )
    assert len(out.read_text().splitlines()) == 4
    capsys.readouterr()
    rc = main(["bdrate", str(tmp_path / "w.jsonl"), str(out)])
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    if rc == 0:
        assert lines[-1].startswith("BD-rate:") and lines[-1].endswith("%")
        float(lines[-1].split()[1])
    else:  # tiny curves may not overlap; that must still be one clean line
        assert rc == 2 and cap.err.startswith("mutualfc: error:") and "Traceback" not in cap.err


def test_cli_help_and_subprocess_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mutualfc.cli.main", "eval", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--skip-existing" in r.stdout and "--param" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "mutualfc.cli.main", "decode", str(tmp_path / "none.mfc")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not found" in r.stderr


@pytest.mark.parametrize("cmd", ["detect", "eval", "encode", "decode", "bdrate", "plot", "anchor"])
def test_every_command_has_help(cmd):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
