"""Load on the split-inference server over loopback: throughput and latency at several concurrencies, then a flood
of malformed requests (server errors, memory before/after).

Starts ``mutualfc serve`` on a free port, codes ``--images`` val images with the mutual codec at ``--quality``,
posts them to /v1/detect from ``c`` client threads (persistent HTTP/1.1 connections) for ``--seconds`` each, and
reports requests/s, p50/p99 latency and errors; then sends ``--malformed`` broken containers (random bytes,
truncations, bit flips with and without a recomputed CRC, foreign codec ids, empty and oversized bodies) and counts
the answers by status class. The server's resident memory (RSS, from /proc) is read before and after the flood.
Client and server share the machine. Writes results/service.json and results/service.md.

    python benchmarks/service.py --seconds 60 --malformed 10000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

from mutualfc import bitstream
from mutualfc.codecs import create_codec
from mutualfc.eval.coco import CocoDataset
from mutualfc.images import load_image
from mutualfc.io import atomic_write_text
from mutualfc.pipeline import Encoder
from mutualfc.tasks import create_task

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def post(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/v1/detect", body=body, headers={"Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    r.read()
    return r.status


def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` threads posting in a loop for ``seconds``; -> requests/s, latency percentiles, errors."""
    stop = time.perf_counter() + seconds
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def run(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        rng, mine, bad = random.Random(k), [], 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                status = post(conn, rng.choice(bodies))
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            mine.append(time.perf_counter() - t0)
            bad += status != 200
        with lock:
            lat.extend(mine)
            errors[0] += bad

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(lat), "errors": errors[0],
            "requests_per_s": round(len(lat) / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}  # fmt: skip


def with_crc(data: bytes) -> bytes:
    """The container with its trailing CRC-32 recomputed (so that payload decoders, not the checksum, see it)."""
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def malformed(bodies: list[bytes], n: int, limit: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        b = rng.choice(bodies)
        kind = i % 8
        if kind == 0:
            out.append(rng.randbytes(rng.randint(1, 4096)))
        elif kind == 1:
            out.append(b[: rng.randint(1, len(b) - 1)])
        elif kind == 2:  # bit flips, CRC left as it is
            m = bytearray(b)
            for _ in range(rng.randint(1, 8)):
                m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
            out.append(bytes(m))
        elif kind in (3, 4):  # payload bit flips with a valid CRC: the decoders see them
            m = bytearray(b)
            for _ in range(rng.randint(1, 32)):
                m[rng.randrange(24, len(m) - 4)] ^= 1 << rng.randrange(8)
            out.append(with_crc(bytes(m)))
        elif kind == 5:
            h, s = bitstream.unpack(b)
            out.append(bitstream.pack(bitstream.Header(rng.randint(7, 15), h.task_id, h.param, h.model_tag,
                                                       h.width, h.height), s))  # fmt: skip
        elif kind == 6:
            out.append(b"" if rng.random() < 0.5 else b"\0" * (limit + 1))
        else:  # random image size in the header, valid CRC
            h, s = bitstream.unpack(b)
            out.append(bitstream.pack(bitstream.Header(h.codec_id, h.task_id, h.param, h.model_tag,
                                                       rng.randint(1, 4096), rng.randint(1, 4096)), s))  # fmt: skip
    return out


def flood(port: int, bodies: list[bytes], clients: int) -> dict:
    counts: dict[str, int] = {}
    lock = threading.Lock()
    chunks = [bodies[k::clients] for k in range(clients)]

    def run(chunk: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine: dict[str, int] = {}
        for b in chunk:
            try:
                status = post(conn, b)
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            key = "no answer" if status == 0 else f"{status // 100}xx"
            mine[key] = mine.get(key, 0) + 1
        with lock:
            for k, v in mine.items():
                counts[k] = counts.get(k, 0) + v

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": len(bodies), "seconds": round(time.perf_counter() - t0, 1), "by_status": counts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/coco-val212"), help="COCO folder with images/")
    ap.add_argument("--images", type=int, default=10, help="distinct containers to send (default: %(default)s)")
    ap.add_argument("--quality", type=float, default=4, help="mutual codec quality (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=60, help="per concurrency level (default: %(default)s)")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels (default: %(default)s)")
    ap.add_argument("--malformed", type=int, default=10000, help="malformed requests (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=1, help="server worker processes (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per server worker (default: %(default)s)")
    ap.add_argument("--out-dir", default=str(ROOT / "results"), help="where results go (default: results/)")
    args = ap.parse_args()

    task = create_task("yolov5n-coco")
    encoder = Encoder(task, create_codec("mutual", task))
    ds = CocoDataset(Path(args.data) / "images").subset(args.images)
    bodies = [encoder.encode(load_image(r.path), args.quality) for r in ds.records]
    limit = 1 << 20
    port = free_port()
    cmd = [sys.executable, "-m", "mutualfc.cli.main", "serve", "--port", str(port), "--workers", str(args.workers),
           "--threads", str(args.threads), "--max-body-bytes", str(limit)]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        for _ in range(240):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        assert post(conn, bodies[0]) == 200  # warm-up
        # every worker's first requests load its model and kernels: a few seconds of load before measuring, on
        # enough connections to reach each worker (measured, a cold second worker halved a 20 s run's figure)
        load(port, bodies, 4 * args.workers, 5.0)
        rows = []
        for c in (int(x) for x in args.clients.split(",")):
            row = load(port, bodies, c, args.seconds)
            rows.append(row)
            print(json.dumps(row), flush=True)
        pid = server.pid if args.workers == 1 else None
        before = rss_mib(pid) if pid else None
        bad = flood(port, malformed(bodies, args.malformed, limit), 8)
        after = rss_mib(pid) if pid else None
        bad |= {"rss_before_mib": before and round(before, 1), "rss_after_mib": after and round(after, 1)}
        print(json.dumps(bad), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    out = Path(args.out_dir)
    meta = {"images": len(bodies), "quality": args.quality, "mean_container_bytes": round(np.mean([len(b) for b in
            bodies]), 1), "workers": args.workers, "threads": args.threads, "cpu_count": os.cpu_count()}  # fmt: skip
    atomic_write_text(out / "service.json", json.dumps({"setup": meta, "load": rows, "malformed": bad}, indent=1))
    lines = ["| clients | requests/s | p50 ms | p99 ms | requests | errors |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['requests']} | "
              f"{r['errors']} |" for r in rows]  # fmt: skip
    status = ", ".join(f"{k}: {v}" for k, v in sorted(bad["by_status"].items()))
    lines += ["", f"Malformed: {bad['requests']} requests in {bad['seconds']} s -> {status}; server RSS "
              f"{bad['rss_before_mib']} MiB before, {bad['rss_after_mib']} MiB after.",
              f"Setup: {json.dumps(meta)}"]  # fmt: skip
    atomic_write_text(out / "service.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
