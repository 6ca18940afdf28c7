import json
import os

import numpy as np
import pytest

from mutualfc.bitstream import unpack
from mutualfc.codecs import create_codec
from mutualfc.eval.bdrate import Curve, bd_rate, curve_from_records, monotone_envelope
from mutualfc.eval.coco import CocoDataset
from mutualfc.eval.runner import evaluate_point
from mutualfc.io import read_jsonl
from tests.conftest import EXAMPLE


def test_bpp_counts_every_byte_of_the_files_over_original_pixels(task, tmp_path):
    ds = CocoDataset(EXAMPLE / "images", EXAMPLE / "instances.json").subset(3)
    codec = create_codec("hevc-feature", task)
    rec = evaluate_point(task, codec, 30, ds, bitstream_dir=tmp_path, progress=False)
    files = sorted(tmp_path.glob("*.mfc"))
    assert len(files) == 3
    bits = sum(8 * f.stat().st_size for f in files)
    pixels = sum(r.width * r.height for r in ds.records)  # original sizes, not the 640 network input
    assert rec["bits"] == bits and rec["pixels"] == pixels
    assert rec["bpp"] == pytest.approx(bits / pixels)
    for f in files:  # each file is a complete container the decoder accepts
        header, _ = unpack(f.read_bytes())
        assert header.param == 30
    assert set(rec) >= {"codec", "param", "bpp", "map", "map50", "n_images", "kmac_per_pixel"}
    assert isinstance(rec["cpu"], str) and rec["cpu"].strip()  # the machine its seconds were measured on
    kmac = rec["kmac_per_pixel"]  # counted on the first image; x265 runs outside torch: not counted
    assert kmac["images"] == 1 and kmac["front"] > 0 and kmac["encoder"] is None
    json.dumps(rec)


def test_bd_rate_of_half_the_rate_is_minus_50_percent():
    r = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    q = np.array([0.20, 0.25, 0.28, 0.30, 0.31])
    res = bd_rate(Curve("t", r / 2, q), Curve("r", r, q))
    assert res["bd_rate"] == pytest.approx(-50.0, abs=1e-6)
    assert res["overlap"] == [0.20, 0.31]


def test_bd_rate_matches_bjontegaard_package():
    import bjontegaard

    ra, qa = [0.1, 0.25, 0.5, 1.0, 2.0], [0.15, 0.22, 0.27, 0.29, 0.30]
    rt, qt = [0.05, 0.1, 0.2, 0.4, 0.9, 1.5], [0.14, 0.2, 0.25, 0.28, 0.295, 0.3]
    ours = bd_rate(Curve("t", np.array(rt), np.array(qt)), Curve("r", np.array(ra), np.array(qa)))["bd_rate"]
    ref = bjontegaard.bd_rate(ra, qa, rt, qt, method="pchip", require_matching_points=False)
    assert ours == pytest.approx(ref) and ours < 0


def test_monotone_envelope_drops_points_that_lose_accuracy_with_rate():
    r, q, dropped = monotone_envelope([0.1, 0.3, 0.2, 0.5], [0.2, 0.25, 0.26, 0.3])
    assert r.tolist() == [0.1, 0.2, 0.5] and q.tolist() == [0.2, 0.26, 0.3] and dropped == 1


def test_curve_needs_one_codec_and_enough_points():
    from mutualfc.errors import MutualFCError

    recs = [{"codec": "a", "bpp": 0.1 * i, "map": 0.1 * i} for i in range(1, 6)]
    assert len(curve_from_records(recs).rate) == 5
    with pytest.raises(MutualFCError, match="several codecs"):
        curve_from_records(recs + [{"codec": "b", "bpp": 1, "map": 1}])
    with pytest.raises(MutualFCError, match="at least 4"):
        curve_from_records(recs[:3])


def test_eval_jobs_spread_images_over_processes_with_identical_results(tmp_path):
    """--jobs 2 codes the images in two processes: the same bits, bitstreams and mAP as --jobs 1."""
    from mutualfc.cli.main import main
    from tests.conftest import need_shared_weights

    need_shared_weights()
    recs = {}
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}.jsonl"
        args = ["-q", "eval", "--codec", "mutual", "--param", "4", "--images", str(EXAMPLE / "images"),
                "--annotations", str(EXAMPLE / "instances.json"), "--out", str(out), "--jobs", str(jobs),
                "--bitstreams", str(tmp_path / f"b{jobs}")]  # fmt: skip
        assert main(args) == 0
        recs[jobs] = read_jsonl(out)[0]
    same = ("bits", "pixels", "bpp", "map", "map50", "n_images", "codec_info")
    assert {k: recs[1][k] for k in same} == {k: recs[2][k] for k in same}
    ex = recs[2]["executor"]
    assert ex["kind"] == "processes" and ex["workers"] == 2 and os.getpid() not in ex["pids"]
    for f in sorted((tmp_path / "b1" / "mutual-4").iterdir()):
        assert f.read_bytes() == (tmp_path / "b2" / "mutual-4" / f.name).read_bytes()
    assert main(["eval", "--codec", "none", "--images", str(EXAMPLE / "images"), "--annotations",
                 str(EXAMPLE / "instances.json"), "--out", str(tmp_path / "x.jsonl"), "--jobs", "0"]) == 2  # fmt: skip


def test_eval_on_ray_runs_in_ray_actors_with_the_same_record(tmp_path):
    """--ray local: the images are coded by Ray actors of a Ray instance started for the run: the record's executor
    names the Ray node they reported from inside Ray (a node id, which only a Ray actor knows; a local process
    reports its host name) and their process ids, not this one's; the same bits and mAP as one local process. Ray is
    a test dependency, so this runs in CI."""
    pytest.importorskip("ray")
    from mutualfc.cli.main import main
    from tests.conftest import need_shared_weights

    need_shared_weights()
    recs = []
    for extra in ([], ["--jobs", "2", "--ray", "local"]):
        out = tmp_path / f"r{len(extra)}.jsonl"
        args = ["-q", "eval", "--codec", "hevc-feature", "--param", "30", "--images", str(EXAMPLE / "images"),
                "--annotations", str(EXAMPLE / "instances.json"), "--out", str(out), *extra]  # fmt: skip
        assert main(args) == 0
        recs.append(read_jsonl(out)[0])
    local, ray_rec = recs
    assert local["executor"] == {"kind": "inline", "workers": 1, "nodes": [local["executor"]["nodes"][0]],
                                 "pids": [os.getpid()]}  # fmt: skip
    ex = ray_rec["executor"]
    assert ex["kind"] == "ray" and ex["workers"] == 2 and len(ex["nodes"]) == 1
    assert os.getpid() not in ex["pids"] and 1 <= len(ex["pids"]) <= 2
    assert len(ex["nodes"][0]) == 56  # a Ray node id (hex), not a host name: the work reported from inside Ray
    assert {k: local[k] for k in ("bits", "map", "map50")} == {k: ray_rec[k] for k in ("bits", "map", "map50")}


def test_pseudo_labels_give_the_uncompressed_detector_full_marks_and_a_coarse_codec_less(task, tmp_path):
    """Pseudo ground truth (for tuning on unlabelled training images) is the detector's own uncompressed output:
    uncompressed scores mAP 1, a coarse codec scores lower; folds partition the folder."""
    from mutualfc.errors import DatasetError
    from mutualfc.eval.pseudo import pseudo_instances
    from mutualfc.images import image_files, parse_fold

    folds = [image_files(EXAMPLE / "images", (k, 2)) for k in range(2)]
    assert sorted(folds[0] + folds[1]) == image_files(EXAMPLE / "images") and not set(folds[0]) & set(folds[1])
    assert image_files(EXAMPLE / "images", (0, 2), leave_out=True) == folds[1]
    with pytest.raises(DatasetError, match="0 <= K < N"):
        parse_fold("2/2")
    gt = pseudo_instances(task, image_files(EXAMPLE / "images"), 0.25, progress=False)
    assert gt["annotations"] and {a["category_id"] for a in gt["annotations"]} <= set(task.category_names)
    (tmp_path / "pseudo.json").write_text(json.dumps(gt))
    ds = CocoDataset(EXAMPLE / "images", tmp_path / "pseudo.json")
    assert evaluate_point(task, None, None, ds, progress=False)["map"] == pytest.approx(1.0)
    coarse = evaluate_point(task, create_codec("jpeg", task), 5, ds, bitstream_dir=tmp_path, progress=False)
    assert coarse["map"] < 0.9
