"""Batches of images (``Encoder.encode_many``, ``Decoder.decode_many``, ``--batch``) give exactly what one image at
a time gives, and really run the network on batches."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from mutualfc.tasks.batching import ATEN_ONE_THREAD_BATCH_SWITCH, chunk_limit, grouped_chunks

from .conftest import EXAMPLE, need_shared_weights


def crops(images: list[np.ndarray], n: int, h: int = 320, w: int = 352) -> list[np.ndarray]:
    """``n`` different h x w crops of real photos (one input shape), then the photos themselves (other shapes)."""
    out = []
    for k in range(n):
        im = images[k % len(images)]
        top, left = (7 * k) % (im.shape[0] - h), (11 * k) % (im.shape[1] - w)
        out.append(np.ascontiguousarray(im[top : top + h, left : left + w]))
    return out + list(images)


def same_detections(a, b) -> bool:
    return (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
            and np.array_equal(a.category_ids, b.category_ids))  # fmt: skip


def test_chunks_group_by_shape_and_stay_below_the_one_thread_switch():
    keys = ["a", "b", "a", "a", "b"]
    assert grouped_chunks(keys, 2) == [[0, 2], [3], [1, 4]]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert chunk_limit(64) == ATEN_ONE_THREAD_BATCH_SWITCH - 1
        torch.set_num_threads(2)
        assert chunk_limit(64) == 64
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError):
        chunk_limit(0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "task_name,codec_name,param",
    [("yolov5n-coco", "mutual", 4.0), ("yolov5n-coco", "jpeg", 50), ("yolox-nano-coco", "mutual", 3.0)],
)
def test_encode_many_and_decode_many_equal_one_by_one(example_images, threads, task_name, codec_name, param):
    need_shared_weights()
    from mutualfc.codecs import create_codec
    from mutualfc.pipeline import Decoder, Encoder
    from mutualfc.tasks import create_task

    task = create_task(task_name)
    images = crops(example_images, ATEN_ONE_THREAD_BATCH_SWITCH + 2)  # past the single-thread backend switch
    codec = create_codec(codec_name, task)
    encoder, decoder = Encoder(task, codec), Decoder(task)
    sizes = []
    hook = task.body.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        batched = encoder.encode_many(images, param, batch_size=32)
        decoded = decoder.decode_many(batched, batch_size=32)
        biggest = max(Counter(tuple(task.transform(im)[0].shape) for im in images).values())
        assert max(sizes) == min(chunk_limit(32), biggest)  # the same-shaped inputs ran as batches
        sizes.clear()
        single = [encoder.encode(im, param) for im in images]
        one = [decoder.decode(d) for d in single]
    finally:
        hook.remove()
        torch.set_num_threads(old)
    assert set(sizes) == {1}
    assert batched == single
    assert all(same_detections(a.detections, b.detections) for a, b in zip(decoded, one, strict=True))
    assert sum(len(d.detections) for d in one) > 0


def test_front_many_keeps_order_and_geometry(task, example_images):
    need_shared_weights()
    from mutualfc.tasks.batching import back_many, front_many

    feats = front_many(task, example_images, batch_size=4)
    for im, f in zip(example_images, feats, strict=True):
        assert f.geometry == task.geometry(im.shape[:2])
        assert all(torch.equal(f.levels[n], t) for n, t in task.front(im).levels.items())
    dets = back_many(task, feats, batch_size=4)
    assert all(same_detections(a, task.back(f)) for a, f in zip(dets, feats, strict=True))


def test_cli_batch_option_writes_what_batch_1_writes(tmp_path):
    need_shared_weights()
    from mutualfc.cli.main import main

    images = EXAMPLE / "images"
    for b in (1, 8):
        assert main(["encode", str(images), "--codec", "mutual", "--quality", "2", "--batch", str(b),
                     "--out-dir", str(tmp_path / f"b{b}")]) == 0  # fmt: skip
        assert main(["decode", str(tmp_path / f"b{b}"), "--batch", str(b), "--min-score", "0",
                     "--detections", str(tmp_path / f"b{b}.json")]) == 0  # fmt: skip
    one, eight = sorted((tmp_path / "b1").glob("*.mfc")), sorted((tmp_path / "b8").glob("*.mfc"))
    assert len(one) == 5 and [p.read_bytes() for p in one] == [p.read_bytes() for p in eight]
    assert json.loads((tmp_path / "b1.json").read_text()) == json.loads((tmp_path / "b8.json").read_text())
    with pytest.raises(SystemExit):
        main(["encode", str(images), "--codec", "mutual", "--batch", "0", "--out-dir", str(tmp_path / "x")])
