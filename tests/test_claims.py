"""Silent wrong output a new user found (issue: every claim true on every machine), one test per item; each failed
before its fix. The service's items are in test_service.py (they need its server)."""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from mutualfc import bitstream
from mutualfc.cli.main import main
from mutualfc.codecs import create_codec
from mutualfc.errors import MutualFCError
from mutualfc.images import load_image
from mutualfc.pipeline import Encoder
from tests.conftest import EXAMPLE, need_shared_weights

IMAGES = sorted((EXAMPLE / "images").glob("*.jpg"))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("mutualfc: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_an_image_over_the_containers_side_limit_is_refused_at_encode(tmp_path, capsys):
    """The writer must never produce what its reader rejects: 16,385 px is refused with one line, nothing written."""
    wide = tmp_path / "wide.png"
    Image.fromarray(np.zeros((2, bitstream.MAX_SIDE + 1, 3), np.uint8)).save(wide)
    assert (
        main(["-q", "encode", str(wide), "--codec", "jpeg", "--quality", "50", "--out-dir", str(tmp_path / "o")]) == 2
    )
    assert "16385x2" in _one_error_line(capsys) and not (tmp_path / "o").exists()
    header = bitstream.Header(1, 0, 50.0, 0, bitstream.MAX_SIDE + 1, 2)
    with pytest.raises(ValueError, match="outside 1..16384"):
        bitstream.pack(header, [b"x"])
    edge = np.zeros((2, bitstream.MAX_SIDE, 3), np.uint8)  # the largest side the reader takes round-trips
    codec = create_codec("jpeg")
    assert codec.decode(Encoder(None, codec).encode(edge, 50)).shape == edge.shape


def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit PNG became all white and a float TIFF black; now they keep their content, in 8 bits."""
    ramp16 = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    got = load_image(tmp_path / "a.png")
    assert got.dtype == np.uint8 and got.shape == (48, 64, 3)
    assert np.array_equal(got[..., 0], np.rint(ramp16 / 257).astype(np.uint8))  # the nominal 16-bit range
    floats = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    assert np.array_equal(load_image(tmp_path / "f.tif")[..., 1], np.rint(floats * 255).astype(np.uint8))
    faint = np.array([[0, 1], [2, 3]], np.uint16)  # 8-bit scaling would flatten it: stretched instead
    Image.fromarray(faint).save(tmp_path / "faint.png")
    assert load_image(tmp_path / "faint.png")[..., 2].tolist() == [[0, 85], [170, 255]]
    Image.fromarray(np.array([[0.0, np.nan]], np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(MutualFCError, match="not finite"):
        load_image(tmp_path / "nan.tif")


@pytest.mark.parametrize(
    ("codec", "bad"), [("jpeg", -5), ("jpeg", 0), ("jpeg", 200), ("jpeg", 2.7), ("webp", 500), ("hevc-image", 52)]
)
def test_every_codec_checks_its_parameter_range(codec, bad):
    c = create_codec(codec)
    with pytest.raises(MutualFCError, match=f"{codec} .* must be a whole number in"):
        Encoder(None, c).encode(np.zeros((8, 8, 3), np.uint8), bad)


def test_the_cli_refuses_a_parameter_out_of_range_before_writing(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["-q", "encode", str(IMAGES[0]), "--codec", "jpeg", "--quality", "200", "--out-dir", str(out)]) == 2
    assert "jpeg quality must be a whole number in 1..95, got 200" in _one_error_line(capsys) and not out.exists()


def test_unknown_codec_options_are_refused_with_the_known_ones(task):
    with pytest.raises(MutualFCError, match=r"takes no option 'bogus' \(its options: \)|takes no option 'bogus'"):
        create_codec("jpeg", bogus=1)
    with pytest.raises(MutualFCError, match=r"'skip_bellow' \(its options: checkpoint, residual, skip_below"):
        create_codec("mutual", task, skip_bellow=0.1)
    import mutualfc

    with pytest.raises(MutualFCError, match="skip_bellow"):
        mutualfc.load_codec("mutual", task, skip_bellow=0.1)


def test_video_anchors_code_images_smaller_than_x265_takes():
    codec = create_codec("hevc-image")
    for h, w in ((1, 1), (3, 7), (15, 2)):
        image = np.full((h, w, 3), 90, np.uint8)
        assert codec.decode(Encoder(None, codec).encode(image, 30)).shape == (h, w, 3)


def test_the_encoder_refuses_arrays_it_cannot_code_with_one_line():
    enc = Encoder(None, create_codec("jpeg"))
    for bad in (
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        [[1, 2, 3]],
        np.zeros((0, 4, 3), np.uint8),
    ):
        with pytest.raises(MutualFCError, match="H x W x 3 uint8"):
            enc.encode(bad, 50)


def test_serve_says_one_line_on_a_busy_port_before_loading_anything():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "mutualfc.cli.main", "serve", "--port", str(port)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"mutualfc: error: --port {port}: cannot listen on 127.0.0.1:{port} (")


def test_out_dash_writes_results_to_stdout_and_binary_outputs_refuse_it(tmp_path, capsys):
    need_shared_weights()
    assert main(["-q", "detect", str(IMAGES[0]), "--out", "-"]) == 0
    captured = capsys.readouterr()
    dets = json.loads(captured.out)  # stdout holds the JSON alone; the summary went to stderr
    assert dets and "detections" in captured.err and not (tmp_path / "-").exists()
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps({"codec": "x", "bpp": 0.1, "map": 0.2}) + "\n")
    assert main(["plot", str(results), "--out", "-"]) == 2 and "a plot is a PNG file" in _one_error_line(capsys)
    assert main(["plot", str(EXAMPLE / "instances.json"), "--out", str(tmp_path / "p.png")]) == 2
    assert "not a results record" in _one_error_line(capsys)


def test_codecs_lists_as_json_lines():
    r = subprocess.run([sys.executable, "-m", "mutualfc.cli.main", "codecs", "--json"], capture_output=True, text=True)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    by_name = {row["name"]: row for row in rows}
    assert r.returncode == 0 and {"jpeg", "mutual", "vvc-feature"} <= set(by_name)
    assert by_name["jpeg"]["param_min"] == 1 and by_name["jpeg"]["param_max"] == 95 and by_name["jpeg"]["integer_param"]
    assert "skip_below" in by_name["mutual"]["options"]


def test_draw_without_the_originals_says_so(tmp_path, capsys):
    need_shared_weights()
    assert (
        main(["-q", "encode", str(IMAGES[0]), "--codec", "mutual", "--quality", "2", "--out-dir", str(tmp_path)]) == 0
    )
    capsys.readouterr()
    assert main(["-q", "decode", str(tmp_path), "--draw", str(tmp_path / "png")]) == 0
    assert "grey canvas (no --images folder with the originals)" in capsys.readouterr().err
    assert (tmp_path / "png" / f"{IMAGES[0].stem}.png").is_file()


def test_a_folder_with_bad_images_names_all_of_them_before_any_work(tmp_path, capsys):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(IMAGES[0].read_bytes())
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    (tmp_path / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "o"
    assert main(["-q", "encode", str(tmp_path), "--codec", "jpeg", "--quality", "50", "--out-dir", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "2 of 4 images cannot be read" in line and "b.jpg" in line and "z.png" in line and not out.exists()
    args = ["-q", "encode", str(tmp_path), "--codec", "jpeg", "--quality", "50", "--out-dir", str(out), "--skip-errors"]
    assert main(args) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.mfc", "c.mfc"]
    assert "(2 files)" in capsys.readouterr().out


def test_one_file_is_one_file_not_files(tmp_path, capsys):
    assert main(["-q", "encode", str(IMAGES[0]), "--codec", "jpeg", "--quality", "50", "--out-dir", str(tmp_path)]) == 0
    assert "(1 file)" in capsys.readouterr().out


def test_missing_weights_error_names_the_ways_to_give_them(tmp_path, monkeypatch):
    from mutualfc.tasks import create_task

    monkeypatch.delenv("MUTUALFC_WEIGHTS", raising=False)
    monkeypatch.setenv("MUTUALFC_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("MUTUALFC_CACHE", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    with pytest.raises(MutualFCError) as e:  # a weights folder was named: nothing is fetched
        create_task("yolov5n-coco")
    msg = str(e.value)
    assert "not in MUTUALFC_WEIGHTS_DIR, so no download was tried" in msg and "--weights" in msg and "\n" not in msg
    assert time.perf_counter() - t0 < 2
    monkeypatch.delenv("MUTUALFC_WEIGHTS_DIR")
    monkeypatch.setenv("MUTUALFC_OFFLINE", "1")
    with pytest.raises(MutualFCError, match="downloads are off"):
        create_task("yolov5n-coco")
