"""``mutualfc serve`` (the server half of split inference over HTTP) and ``mutualfc send`` (the edge half)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

from mutualfc.cli.coding import check_rate_options, encode_file, load_encoder
from mutualfc.cli.inputs import IMAGE_SUFFIXES, Batch, expand, image_ids
from mutualfc.cli.options import add_device, add_exif, add_skip_errors, add_task
from mutualfc.errors import MutualFCError


def cmd_serve(args) -> int:
    import uvicorn

    from mutualfc.service.settings import ServiceSettings

    for option in ("workers", "threads", "worker_healthcheck_timeout"):
        if getattr(args, option) < 1:
            flag = "--" + option.replace("_", "-")
            raise MutualFCError(f"{flag} must be at least 1, got {getattr(args, option)}")
    options = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    check_port_free(args.host, args.port)  # before the detector is loaded: a busy port fails at once
    settings = ServiceSettings(
        args.task,
        args.weights,
        args.device,
        options,
        args.max_body_bytes,
        args.decode_timeout,
        args.max_pixels,
        args.threads,
    )
    os.environ.update(settings.to_env())  # every worker builds its app from these
    os.environ["MUTUALFC_SERVE_URL"] = f"http://{args.host}:{args.port}"
    with tempfile.TemporaryDirectory(prefix="mutualfc-metrics-") as metrics_dir:
        if args.workers > 1:  # /metrics sums every worker's counters (prometheus_client's multiprocess mode)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run(
            "mutualfc.service.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            timeout_worker_healthcheck=args.worker_healthcheck_timeout,
        )
    return 0


def check_port_free(host: str, port: int) -> None:
    """One line, not uvicorn's traceback, when the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise MutualFCError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(address)
        except OSError as e:
            raise MutualFCError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror})") from None


def cmd_send(args) -> int:
    check_rate_options(args)
    if not 0 <= args.min_score <= 1:
        raise MutualFCError(f"--min-score must be in 0..1, got {args.min_score:g}")
    paths = expand(args.inputs, IMAGE_SUFFIXES, "images")
    batch, results, ids = Batch(args.skip_errors), [], dict(zip(paths, image_ids(paths), strict=True))
    good = batch.readable(paths)  # every unreadable file named now, before anything is loaded or sent
    from mutualfc.io import atomic_write_text, report_stream
    from mutualfc.service.client import Client

    client = Client(args.server, timeout=args.timeout)
    client.health()  # fail early, with one line, when the server is not there
    _, codec, param = load_encoder(args)

    def send(path: Path) -> dict:
        data, _, pixels = encode_file(args, codec, param, path)
        answer = client.detect(data, args.min_score)
        return answer | {"file_name": path.name, "bytes": len(data), "bpp": 8 * len(data) / pixels}

    for path, image_id in ((p, ids[p]) for p in good):
        answer = batch.run(path, lambda p=path: send(p))
        if answer is None:
            continue
        for d in answer["detections"]:
            results.append({"image_id": image_id, **d, "file_name": answer["file_name"]})
        print(
            f"{path}: {answer['bytes']} bytes ({answer['bpp']:.4f} bpp) -> {len(answer['detections'])} detections "
            f"(score >= {args.min_score:g}), decoded in {answer['decode_ms']:.1f} ms",
            file=report_stream(args.out or "-"),
        )
    if args.out:
        atomic_write_text(args.out, json.dumps(results))
    elif not args.quiet_results:
        json.dump(results, sys.stdout)
        print()
    return batch.exit_code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP server: decode .mfc containers and finish the task (split inference)",
        description="Starts the split-inference server (FastAPI + uvicorn). POST /v1/detect and "
        "/v1/features take one .mfc container as the body; GET /v1/codecs, /healthz, /metrics.",
    )
    add_task(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes; each decodes one request at a time (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker process (default: %(default)s; scale with --workers, up to the cores: "
        "decoding is exact whatever the number)",
    )
    p.add_argument(
        "--worker-healthcheck-timeout",
        type=int,
        default=60,
        help="with --workers > 1: seconds a worker may take to answer the supervisor's health check before it is "
        "killed and restarted (uvicorn's timeout_worker_healthcheck, 5 there: importing torch holds the "
        "interpreter, and on a busy machine it can take longer; default: %(default)s)",
    )
    p.add_argument("--checkpoint", help="decode mutual/separate streams of this checkpoint instead of the zoo's")
    p.add_argument(
        "--max-body-bytes", type=int, default=8 << 20, help="larger bodies are refused with 413 (default: %(default)s)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=4096 * 4096,
        help="containers announcing a larger image are refused with 413 (default: %(default)s)",
    )
    p.add_argument(
        "--decode-timeout",
        type=float,
        default=30.0,
        help="seconds a request may spend decoding before it is answered 422 (default: %(default)s)",
    )
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default: %(default)s)")
    add_device(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "send",
        help="edge side: encode images locally, send them to a server, get detections",
        description="Runs the task network's front half and the encoder here, posts each container "
        "to SERVER/v1/detect and prints (or writes) the detections.",
    )
    add_task(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--codec", default="mutual", help="codec ('mutualfc codecs' lists them; default: %(default)s)")
    p.add_argument("--quality", type=float, help="quality / QP (default: the middle of the codec's sweep)")
    p.add_argument("--target-bpp", type=float, help="learned codecs: the highest quality that fits this rate")
    p.add_argument("--checkpoint", help="learned codecs: a checkpoint instead of the zoo's (the server needs it too)")
    p.add_argument("--min-score", type=float, default=0.25, help="lowest score returned (default: %(default)s)")
    p.add_argument(
        "--out", help="write the detections here (COCO results JSON with file_name and category; default: stdout)"
    )
    p.add_argument("--quiet-results", action="store_true", help="without --out: do not print the detections JSON")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server (default: %(default)s)")
    add_exif(p)
    add_skip_errors(p)
    add_device(p)
    p.set_defaults(func=cmd_send)
