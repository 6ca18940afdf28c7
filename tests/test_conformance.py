"""The conformance streams (tests/conformance, docs/bitstream.md) decode to their recorded SHA-256 here, under
PyTorch's generic kernels (``ATEN_CPU_CAPABILITY=default``, what another CPU computes) and with 1 and 2 threads:
the decoding process is exact, so every platform must give the same bits."""

import os
import subprocess
import sys

import pytest

from mutualfc.testing.conformance import check
from tests.conftest import ROOT, need_shared_weights

CONFORMANCE = ROOT / "tests" / "conformance"


def test_conformance_streams_decode_as_recorded():
    need_shared_weights()
    assert check(CONFORMANCE) == []


@pytest.mark.parametrize(("capability", "threads"), [("default", "1"), (None, "2")])
def test_conformance_on_other_kernels_and_thread_counts(capability, threads):
    need_shared_weights()
    env = os.environ | {"OMP_NUM_THREADS": threads}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    out = subprocess.run([sys.executable, "-m", "mutualfc.testing.conformance", "--check", str(CONFORMANCE)],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
