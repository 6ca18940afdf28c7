import io
import pickle
import zipfile

import pytest
import torch

from mutualfc.errors import WeightsError
from mutualfc.tasks import create_task
from mutualfc.tasks.weights import WeightsSpec, load_upstream_checkpoint, read_weights, resolve_weights
from tests.conftest import SHARED_WEIGHTS, need_shared_weights


def test_upstream_pickle_gives_identical_weights():
    need_shared_weights()
    ref = torch.load(SHARED_WEIGHTS / "yolov5n-coco-v6.1.pth", weights_only=True)
    up = load_upstream_checkpoint(SHARED_WEIGHTS / "yolov5n-v6.1-upstream.pt")
    assert set(up) == set(ref) and len(ref) == 349
    for k in ref:
        assert up[k].dtype == ref[k].dtype and torch.equal(up[k], ref[k]), k


def test_both_files_build_the_same_network():
    need_shared_weights()
    a = create_task(weights=SHARED_WEIGHTS / "yolov5n-coco-v6.1.pth").state_dict()
    b = create_task(weights=SHARED_WEIGHTS / "yolov5n-v6.1-upstream.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _zip_with_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)


def test_restricted_unpickler_never_runs_foreign_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()  # os.system("touch ...") via REDUCE
    _zip_with_pickle(tmp_path / "evil.pt", evil)
    with pytest.raises(WeightsError):
        load_upstream_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_garbage_and_foreign_checkpoints_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError):
        read_weights(tmp_path / "junk.pt")
    other = tmp_path / "other.pth"
    torch.save({"model.0.conv.weight": torch.zeros(8, 3, 3, 3)}, other)
    with pytest.raises(WeightsError, match="not weights for yolov5n-coco"):
        create_task(weights=other)
    buf = io.BytesIO()
    pickle.dump({"a": 1}, buf)
    _zip_with_pickle(tmp_path / "nomodel.pt", buf.getvalue())
    with pytest.raises(WeightsError):
        load_upstream_checkpoint(tmp_path / "nomodel.pt")


def test_offline_without_file_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MUTUALFC_WEIGHTS", raising=False)
    monkeypatch.setenv("MUTUALFC_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("MUTUALFC_CACHE", str(tmp_path / "cache"))
    spec = WeightsSpec("x.pth", "x.pt", "http://127.0.0.1:9/x.pt", "0" * 64, {})
    with pytest.raises(WeightsError, match="MUTUALFC_WEIGHTS"):
        resolve_weights(spec)


def test_env_file_takes_precedence(tmp_path, monkeypatch):
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    monkeypatch.setenv("MUTUALFC_WEIGHTS", str(f))
    spec = WeightsSpec("x.pth", "x.pt", "http://127.0.0.1:9/x.pt", "0" * 64, {})
    assert resolve_weights(spec) == f


def test_download_from_the_release_url_is_checked_and_cached(tmp_path, monkeypatch):
    """With no weights folder named and downloads allowed, the release file is fetched (here from a loopback HTTP
    server), its sha256 checked, and kept in the cache; a wrong checksum is refused and nothing is kept."""
    import functools
    import hashlib
    import http.server
    import threading

    (tmp_path / "srv").mkdir()
    payload = b"weights" * 100
    (tmp_path / "srv" / "x.pt").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "srv"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for var in ("MUTUALFC_WEIGHTS", "MUTUALFC_WEIGHTS_DIR", "MUTUALFC_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("MUTUALFC_CACHE", str(tmp_path / "cache"))
        url = f"http://127.0.0.1:{httpd.server_address[1]}/x.pt"
        bad = WeightsSpec("x.pth", "x.pt", url, "0" * 64, {})
        with pytest.raises(WeightsError, match="has sha256"):
            resolve_weights(bad)
        assert not list((tmp_path / "cache").rglob("*.pt*"))
        good = WeightsSpec("x.pth", "x.pt", url, hashlib.sha256(payload).hexdigest(), {})
        path = resolve_weights(good)
        assert path.read_bytes() == payload and path.parent == tmp_path / "cache" / "weights"
    finally:
        httpd.shutdown()
