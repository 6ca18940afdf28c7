"""The Ray Serve deployment the README shows, run for real: a local Ray Serve app answers ``/v1/detect`` with the boxes
``mutualfc decode`` gives for the same container."""

import json
import socket
import urllib.request

import pytest
import torch

from tests.conftest import EXAMPLE, need_shared_weights


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_serve_deployment_answers_like_local_decoding(monkeypatch):
    pytest.importorskip("ray.serve")
    need_shared_weights()
    import ray
    from ray import serve

    import mutualfc
    from mutualfc.service.app import create_app

    task = mutualfc.load_task("yolov5n-coco")
    image = mutualfc.load_image(sorted((EXAMPLE / "images").glob("*.jpg"))[0])
    data = mutualfc.Encoder(task, mutualfc.load_codec("mutual", task)).encode(image, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the service's workers (--threads 1): the back half's floats follow the thread count
    try:
        expected = mutualfc.Decoder(task).decode(data).detections.to_coco(1, min_score=0.25, names=task.category_names)
    finally:
        torch.set_num_threads(threads)

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})

        @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1})  # the README's deployment, one replica
        @serve.ingress(create_app())
        class MutualFC: ...

        serve.run(MutualFC.bind(), route_prefix="/")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/detect?min_score=0.25", data=data, method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
    finally:
        serve.shutdown()
        ray.shutdown()
    assert answer["codec"] == "mutual" and len(answer["detections"]) == len(expected) > 0
    for got, want in zip(answer["detections"], expected, strict=True):
        assert {k: got[k] for k in ("bbox", "score", "category_id", "category")} == {
            k: want[k] for k in ("bbox", "score", "category_id", "category")
        }
