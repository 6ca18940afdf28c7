"""Atomic output helpers."""

import json
import os
import stat

import pytest

from mutualfc.errors import MutualFCError
from mutualfc.io import append_jsonl, atomic_write_bytes, read_jsonl


def test_atomic_write_gives_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"xyz")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert (tmp_path / "a.bin").read_bytes() == b"xyz"
    assert not list(tmp_path.glob(".*.part"))


def test_append_and_read_jsonl(tmp_path):
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"a": 1})
    append_jsonl(p, {"b": 2})
    assert read_jsonl(p) == [{"a": 1}, {"b": 2}]
    p.write_text(json.dumps({"a": 1}) + "\n{broken\n")
    with pytest.raises(MutualFCError, match=":2: not a JSON line"):
        read_jsonl(p)
