"""Atomic file output: readers never see a half-written file, an interrupted run leaves the old one intact."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from mutualfc.errors import MutualFCError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename; the file gets the usual permissions
    (0666 less the umask, as ``open`` would give), not the temporary file's private 0600."""
    if str(path) == "-":
        raise MutualFCError("'-' (standard output) takes text results only: give a file name for this output")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """``path`` "-" is standard output."""
    if str(path) == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return
    atomic_write_bytes(path, text.encode())


def report_stream(out: str | Path | None):
    """Where a command's summary lines go: standard error when its results go to standard output ("-")."""
    return sys.stderr if str(out) == "-" else sys.stdout


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise MutualFCError(f"results file not found: {path}")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise MutualFCError(f"{path}:{i}: not a JSON line") from None
    return out


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line atomically (the file is rewritten through a temporary file)."""
    if str(path) == "-":
        atomic_write_text("-", json.dumps(record, sort_keys=False))
        return
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(record, sort_keys=False) + "\n")
