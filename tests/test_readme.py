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
