"""``benchmarks/speed.py``'s ratios and ``--runs`` summary: the figures issue 27's targets are stated in."""

import importlib.util

from tests.conftest import ROOT


def _speed_module():
    spec = importlib.util.spec_from_file_location("speed_benchmark", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(task: str, codec: str, codec_ms: float) -> dict:
    return {"task": task, "codec": codec, "param": 4.0, "images": 2, "bpp": 0.05, "encode_ms": codec_ms / 2,
            "decode_ms": codec_ms / 2, "codec_ms": codec_ms, "front_ms": 30.0, "back_ms": 7.0,
            "end_to_end_ms": codec_ms + 37.0}  # fmt: skip


def test_each_row_is_stated_against_the_anchor_of_its_own_task_and_run():
    speed = _speed_module()
    rows = speed.with_ratios([_row("a", "mutual", 10.0), _row("a", "hevc-image", 50.0), _row("b", "mutual", 30.0),
                              _row("b", "hevc-image", 60.0), _row("c", "mutual", 5.0)])  # fmt: skip
    assert [r["ratio"] for r in rows] == [0.2, 1.0, 0.5, 1.0, None]  # "c" has no anchor: no ratio


def test_runs_are_summarised_by_their_median_and_the_ratios_range():
    speed = _speed_module()
    every = []
    for k, (ms, anchor) in enumerate([(10.0, 50.0), (12.0, 48.0), (30.0, 100.0)]):  # the third run: a slow stretch
        every += [
            dict(r, run=k + 1) for r in speed.with_ratios([_row("a", "mutual", ms), _row("a", "hevc-image", anchor)])
        ]
    rows = {r["codec"]: r for r in speed.summarise(every)}
    mutual = rows["mutual"]
    assert mutual["runs"] == 3 and mutual["codec_ms"] == 12.0 and rows["hevc-image"]["codec_ms"] == 50.0
    assert mutual["ratio"] == 0.25 and mutual["ratio_range"] == [0.2, 0.3]  # the median of 0.2, 0.25, 0.3
    assert "run" not in mutual


def test_report_only_rewrites_the_same_summary_and_draws_each_task(tmp_path):
    """``--report-only`` re-derives speed.md and speed.json from the runs a measurement wrote (its meta kept), and
    speed.png has one panel per task with a ratio."""
    import json
    import subprocess
    import sys

    speed = _speed_module()
    every = []
    for k, (ms, anchor) in enumerate([(10.0, 50.0), (12.0, 48.0)]):
        rows = [_row("a", "mutual", ms), _row("a", "hevc-image", anchor), _row("b", "mutual", 2 * ms),
                _row("b", "hevc-image", anchor)]  # fmt: skip
        every += [dict(r, run=k + 1) for r in speed.with_ratios(rows)]
    meta = {"cpu": "test", "runs": 2}
    rows, _ = speed.report(every, meta, tmp_path)
    first = {name: (tmp_path / name).read_bytes() for name in ("speed.md", "speed.json", "speed-runs.jsonl")}
    assert json.loads(first["speed.json"])["meta"] == meta and len(rows) == 4
    png = tmp_path / "speed.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png.unlink()
    script = str(ROOT / "benchmarks" / "speed.py")
    done = subprocess.run([sys.executable, script, "--report-only", "--out-dir", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {name: (tmp_path / name).read_bytes() for name in first} == first and png.is_file()
    (tmp_path / "speed-runs.jsonl").write_text("{not json\n")
    bad = subprocess.run([sys.executable, script, "--report-only", "--out-dir", str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode != 0 and "speed-runs.jsonl" in bad.stderr and "Traceback" not in bad.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "speed-runs.jsonl").write_text('{"run": 1, "codec": "mutual"}\n')  # not speed.py's rows
    bad = subprocess.run([sys.executable, script, "--report-only", "--out-dir", str(foreign)], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert bad.returncode != 0 and "not a speed.py measurement" in bad.stderr and "Traceback" not in bad.stderr
    assert [f.name for f in foreign.iterdir()] == ["speed-runs.jsonl"]  # nothing written


def test_the_plot_draws_nothing_without_an_anchor(tmp_path):
    speed = _speed_module()
    assert not speed.plot(speed.summarise([dict(_row("a", "mutual", 10.0), ratio=None, run=1)]), tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()
