import numpy as np
import torch

from mutualfc.eval.coco import CocoDataset
from mutualfc.eval.runner import run_detection
from tests.conftest import EXAMPLE


def test_detect_equals_back_of_front(task, example_images):
    for image in example_images[:3]:
        a = task.detect(image)
        fs = task.front(image)
        b = task.back(fs)
        assert len(a) > 0
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.category_ids, b.category_ids)


def test_feature_set_shapes_and_geometry(task, example_images):
    for image in example_images:
        fs = task.front(image)
        g = fs.geometry
        assert g.orig_hw == image.shape[:2]
        assert max(g.input_hw) == 640 and all(s % 32 == 0 for s in g.input_hw)
        shapes = task.level_shapes(g)
        assert list(fs.levels) == ["p3", "p4", "p5"]
        for name, t in fs.levels.items():
            assert tuple(t.shape[1:]) == shapes[name]
        assert [t.shape[1] for t in fs.levels.values()] == [64, 128, 256]


def test_boxes_are_in_original_pixels(task, example_images):
    image = example_images[3]  # 351 x 500, padded horizontally
    det = task.detect(image)
    h, w = image.shape[:2]
    assert det.boxes[:, [0, 2]].max() <= w and det.boxes[:, [1, 3]].max() <= h
    assert (det.scores >= 0.001).all() and len(det) <= 300


def test_example_map_is_that_of_a_working_detector(task):
    ds = CocoDataset(EXAMPLE / "images", EXAMPLE / "instances.json")
    scores = ds.evaluate(run_detection(task, ds, progress=False))
    assert scores["map50"] > 0.4 and scores["map"] > 0.25


def test_random_weights_network_runs():
    from mutualfc.tasks import create_task

    net = create_task("yolov5n-coco", pretrained=False)
    fs = net.front(np.zeros((100, 200, 3), np.uint8))
    assert fs.levels["p5"].shape == torch.Size([1, 256, 10, 20])  # letterboxed to 320 x 640
