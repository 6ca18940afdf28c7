"""The README's Python API example runs as written."""

import re

from tests.conftest import ROOT, need_shared_weights


def test_readme_python_api_example_runs(monkeypatch, capsys):
    need_shared_weights()
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md (Python API)", "exec"), {})
    assert "person" in capsys.readouterr().out


def test_readme_python_api_example_runs_with_the_second_network(monkeypatch, capsys):
    """The same example with ``load_task("yolox-nano-coco")``: its zoo codec, its container, its boxes."""
    need_shared_weights()
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'load_task("yolov5n-coco")' in code
    code = code.replace('load_task("yolov5n-coco")', 'load_task("yolox-nano-coco")')
    monkeypatch.chdir(ROOT)
    scope = {}
    exec(compile(code, "README.md (Python API, YOLOX-Nano)", "exec"), scope)
    assert scope["decoded"].codec.model.meta["task"] == "yolox-nano-coco"
    assert "person" in capsys.readouterr().out
