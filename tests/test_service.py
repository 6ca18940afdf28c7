"""The split-inference service for real: a uvicorn server on a free loopback port, the real client and
``mutualfc send``, compared with ``mutualfc decode``; bad bodies get 4xx with one-line reasons, never 5xx."""

import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from mutualfc import bitstream
from mutualfc.cli.main import main
from mutualfc.errors import MutualFCError
from mutualfc.service import Client, ServerError
from tests.conftest import EXAMPLE, SHARED_WEIGHTS, need_shared_weights

IMAGES = sorted((EXAMPLE / "images").glob("*.jpg"))
MAX_BODY = 1 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    need_shared_weights()
    port = _free_port()
    env = os.environ | {"MUTUALFC_WEIGHTS_DIR": str(SHARED_WEIGHTS)}
    cmd = [sys.executable, "-m", "mutualfc.cli.main", "serve", "--port", str(port), "--max-body-bytes", str(MAX_BODY),
           "--threads", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    client = Client(url, timeout=5)
    for _ in range(240):
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read()}")
        try:
            client.health()
            break
        except MutualFCError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("server did not answer /healthz within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _post(url: str, body: bytes, query: str = "") -> tuple[int, dict]:
    """POST ``body``; a body over the server's limit is announced with ``Expect: 100-continue`` and not sent, as a
    careful client does: the server refuses it from its Content-Length, and sending it anyway races the server's
    close (a broken pipe on the client instead of the 413)."""
    u = urllib.parse.urlsplit(url + query)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("POST", u.path + (f"?{u.query}" if u.query else ""))
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(len(body)))
        oversized = len(body) > MAX_BODY
        if oversized:
            conn.putheader("Expect", "100-continue")
        conn.endheaders(None if oversized else body)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_served_detections_equal_local_decoding(server, tmp_path):
    bits = tmp_path / "bits"
    assert main(["-q", "encode", *map(str, IMAGES), "--codec", "mutual", "--quality", "4", "--out-dir", str(bits)]) == 0
    files = sorted(bits.glob("*.mfc"))
    assert main(["-q", "decode", *map(str, files), "--detections", str(tmp_path / "local.json")]) == 0
    local = json.loads((tmp_path / "local.json").read_text())
    client = Client(server)
    served = []
    for f in files:
        answer = client.detect(f.read_bytes())
        assert answer["codec"] == "mutual" and answer["param"] == 4.0
        served += [{"image_id": int(f.stem), **d, "file_name": f.name} for d in answer["detections"]]
    assert served == local
    # the edge side: front half and encoder here, decoding there
    assert main(["-q", "send", *map(str, IMAGES), "--server", server, "--codec", "mutual", "--quality", "4",
                 "--out", str(tmp_path / "sent.json")]) == 0  # fmt: skip
    sent = json.loads((tmp_path / "sent.json").read_text())
    strip = [{k: v for k, v in d.items() if k != "file_name"} for d in local]
    assert [{k: v for k, v in d.items() if k != "file_name"} for d in sent] == strip
    feats = client.features(files[0].read_bytes())
    assert set(feats) == {"p3", "p4", "p5"} and feats["p5"].shape[0] == 1


def test_bad_requests_get_4xx_with_a_reason_and_never_5xx(server, tmp_path):
    assert (
        main(["-q", "encode", str(IMAGES[0]), "--codec", "mutual", "--quality", "2", "--out-dir", str(tmp_path)]) == 0
    )
    good = next(tmp_path.glob("*.mfc")).read_bytes()
    header, streams = bitstream.unpack(good)
    foreign = bitstream.pack(bitstream.Header(99, header.task_id, 1.0, 0, 64, 64), [b"x"])
    other_model = bitstream.pack(bitstream.Header(16, header.task_id, 1.0, 12345, 64, 64), streams)
    jpeg = tmp_path / "j"
    assert main(["-q", "encode", str(IMAGES[0]), "--codec", "jpeg", "--quality", "20", "--out-dir", str(jpeg)]) == 0
    cases = {
        "empty": (b"", "/v1/detect", "", 400),
        "garbage": (b"not a container at all", "/v1/detect", "", 400),
        "truncated": (good[: len(good) // 2], "/v1/detect", "", 400),
        "bit flip": (good[:-3] + bytes([good[-3] ^ 0x40]) + good[-2:], "/v1/detect", "", 400),
        "unknown codec": (foreign, "/v1/detect", "", 400),
        "another model": (other_model, "/v1/detect", "", 400),
        "oversized": (b"\0" * (MAX_BODY + 1), "/v1/detect", "", 413),
        "image codec features": (next(jpeg.glob("*.mfc")).read_bytes(), "/v1/features", "", 400),
        "bad min_score": (good, "/v1/detect", "?min_score=2", 422),
        "negative min_score": (good, "/v1/detect", "?min_score=-1", 422),
        "no such route": (good, "/v1/nothing", "", 404),
    }
    for name, (body, route, query, want) in cases.items():
        status, answer = _post(server + route, body, query)
        assert status == want, (name, status, answer)
        assert set(answer) == {"error"} and isinstance(answer["error"], str) and "\n" not in answer["error"], name
    assert (
        "min_score: Input should be greater than or equal to 0 (got '-1')"
        in _post(server + "/v1/detect", good, "?min_score=-1")[1]["error"]
    )
    with pytest.raises(urllib.error.HTTPError) as e:  # a GET where only POST is served
        urllib.request.urlopen(server + "/v1/detect", timeout=10)
    assert e.value.code == 405 and json.loads(e.value.read()) == {"error": "Method Not Allowed"}
    with pytest.raises(ServerError) as e:  # the client carries the status and the server's reason
        Client(server).detect(foreign)
    assert e.value.status == 400 and "unknown codec id 99" in str(e.value)
    with pytest.raises(MutualFCError, match="min_score must be in 0..1"):  # refused before any request
        Client(server).detect(good, min_score=-1)
    status, answer = _post(server + "/v1/detect", good)
    assert status == 200 and answer["detections"]


def test_codecs_health_and_metrics(server):
    client = Client(server)
    health = client.health()
    assert health["status"] == "ok" and health["threads"] == 2  # --threads reaches the worker
    listed = {(c["name"], c["task"]): c for c in client.codecs()["codecs"]}  # every codec of every task
    assert {"mutual", "separate", "hevc-feature", "jpeg"} <= {n for n, t in listed if t == "yolov5n-coco"}
    assert listed["mutual", "yolov5n-coco"]["checkpoint"] == "mutual_yolov5n-coco"
    assert listed["mutual", "yolox-nano-coco"]["checkpoint"] == "mutual_yolox-nano-coco"
    with urllib.request.urlopen(server + "/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'mutualfc_requests_total{route="/healthz",status="200"}' in text
    assert "mutualfc_request_seconds_bucket" in text


def test_client_reports_the_servers_refusal_of_an_oversized_body(server):
    """Whether the client's send of the body races the server's close (a broken pipe) or not, the user reads the
    server's 413 and its reason, not 'cannot reach'."""
    client = Client(server)
    for size in (MAX_BODY + 1, 8 * MAX_BODY):
        with pytest.raises(MutualFCError, match=r"answered 413: body of \d+ bytes is over the server's limit"):
            client.detect(b"\0" * size)
    u = urllib.parse.urlsplit(server)
    assert client._verdict(f"{server}/v1/detect", 10) is None  # a body the server takes: it waits for it
    assert client._verdict(f"http://{u.hostname}:{_free_port()}/v1/detect", MAX_BODY + 1) is None  # nobody there


def test_send_refuses_a_bad_min_score_before_encoding(server, capsys):
    assert main(["-q", "send", str(IMAGES[0]), "--server", server, "--min-score", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "mutualfc: error: --min-score must be in 0..1, got -1"


def test_metrics_of_several_workers_are_summed_and_each_worker_says_it_is_ready():
    """serve --workers 2: every /metrics scrape reports all the requests, whichever worker answers it (it showed
    one worker's counters before), and each worker prints one line when it is ready."""
    need_shared_weights()
    port = _free_port()
    env = os.environ | {"MUTUALFC_WEIGHTS_DIR": str(SHARED_WEIGHTS)}
    cmd = [sys.executable, "-m", "mutualfc.cli.main", "serve", "--port", str(port), "--workers", "2"]
    cmd += ["--log-level", "info"]  # a failure shows the supervisor's story (a worker killed and restarted, ...)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    lines: queue.Queue[str] = queue.Queue()  # read by a thread: a blocking readline cannot hang the test
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    try:
        ready, seen = [], []
        deadline = time.time() + 180
        while len(ready) < 2 and time.time() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {''.join(seen)[-2000:]}")
                continue
            seen.append(line)
            if " ready (" in line:
                ready.append(line)
        assert len(ready) == 2 and all(f"yolov5n-coco, {url})" in x for x in ready), "".join(seen)[-2000:]
        client = Client(url, timeout=30)
        for _ in range(12):
            client.health()
        counts = []
        for _ in range(6):
            with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                text = r.read().decode()
            line = next(x for x in text.splitlines() if x.startswith('mutualfc_requests_total{route="/healthz"'))
            counts.append(float(line.split()[-1]))
        assert counts == [12.0] * 6
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_one_server_answers_each_task_with_its_own_network(server, tmp_path):
    """Containers name their task: the server (default task yolov5n-coco) answers a YOLOX-Nano stream with
    YOLOX-Nano's boxes, and lists both tasks."""
    if not (SHARED_WEIGHTS / "yolox-nano-coco.onnx").is_file():
        pytest.skip("no YOLOX-Nano weights")
    from mutualfc.pipeline import Decoder
    from mutualfc.tasks import create_task

    args = ["-q", "encode", str(IMAGES[1]), "--task", "yolox-nano-coco", "--codec", "hevc-feature", "--quality", "30"]
    assert main([*args, "--out-dir", str(tmp_path)]) == 0
    data = next(tmp_path.glob("*.mfc")).read_bytes()
    answer = Client(server).detect(data, min_score=0.3)
    yolox = create_task("yolox-nano-coco")
    want = Decoder(yolox).decode(data).detections.to_coco(0, 0.3, yolox.category_names)
    assert answer["task"] == "yolox-nano-coco" and len(answer["detections"]) == len(want) > 0
    for got, ref in zip(answer["detections"], want, strict=True):
        assert got["category"] == ref["category"] and got["bbox"] == pytest.approx(ref["bbox"], abs=0.01)
    listed = Client(server).codecs()
    assert {t["name"] for t in listed["tasks"]} >= {"yolov5n-coco", "yolox-nano-coco"}
    assert {(c["task"], c["name"]) for c in listed["codecs"]} >= {("yolox-nano-coco", "hevc-feature"),
                                                                   ("yolov5n-coco", "mutual")}  # fmt: skip


@pytest.mark.parametrize("option", ["--workers", "--threads", "--worker-healthcheck-timeout"])
def test_serve_refuses_a_count_below_one_in_one_line(option, capsys):
    assert main(["-q", "serve", "--port", str(_free_port()), option, "0"]) == 2
    assert capsys.readouterr().err.strip() == f"mutualfc: error: {option} must be at least 1, got 0"
