import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"
if not SHARED_WEIGHTS.is_dir() and os.environ.get("MUTUALFC_WEIGHTS_DIR"):  # a machine without ../shared
    SHARED_WEIGHTS = Path(os.environ["MUTUALFC_WEIGHTS_DIR"])
EXAMPLE = ROOT / "examples" / "coco-mini"

if SHARED_WEIGHTS.is_dir():
    os.environ.setdefault("MUTUALFC_WEIGHTS_DIR", str(SHARED_WEIGHTS))


def need_shared_weights():
    if not (SHARED_WEIGHTS / "yolov5n-coco-v6.1.pth").is_file():
        pytest.skip("../shared/weights not present")


@pytest.fixture(scope="session")
def task():
    from mutualfc.tasks import create_task

    return create_task("yolov5n-coco")


@pytest.fixture(scope="session")
def example_images():
    from mutualfc.images import load_image

    return [load_image(p) for p in sorted((EXAMPLE / "images").glob("*.jpg"))]


@pytest.fixture
def rng():
    return np.random.default_rng(0)
