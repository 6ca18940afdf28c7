"""A deterministic slice of the decoder fuzzer: mutated containers of every codec (most with a valid CRC, so that
the payload decoders are reached) are decoded or refused cleanly; never a crash, a hang or a non-finite output.
``benchmarks/fuzz.py`` runs the long version."""

import time
from collections import Counter

import pytest

from mutualfc.testing.fuzz import build_seeds, cases, decode_case
from tests.test_anchors import real_vvenc


@pytest.fixture(scope="module")
def corpus(task, example_images):
    try:
        vvenc = real_vvenc()
    except pytest.skip.Exception:
        vvenc = None
    images = [example_images[0][:150, :200], example_images[3][:97, :131]]  # small: many cases per second
    return build_seeds(task, images, vvenc)


def test_fuzzed_containers_are_decoded_or_refused_cleanly(corpus):
    seeds, decoders = corpus
    counts, worst = Counter(), 0.0
    for case in cases(seeds, 2000, seed=1):
        t0 = time.perf_counter()
        outcome, detail = decode_case(decoders, case.data)
        worst = max(worst, time.perf_counter() - t0)
        counts[outcome] += 1
        assert outcome in ("decoded", "refused"), (case.index, case.seed, detail)
    assert worst < 10, worst
    assert counts["decoded"] > 100 and counts["refused"] > 100, counts  # both paths are exercised
