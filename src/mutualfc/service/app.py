"""The split-inference server (FastAPI): containers in, detections or decoded features out.

Stateless: every request carries a whole container, so any number of replicas (``--workers``, or processes on many
machines behind a load balancer, or a Ray Serve deployment of ``create_app()``) answer alike. Within one process,
decoding runs one request at a time (PyTorch's intra-op threads share each decode, which is exact whatever their
number), so processes, not request threads, are the unit of parallelism; each worker's intra-op threads default to
one (``ServiceSettings.threads``): idle OpenMP threads spin, and spinning workers would take the cores their
neighbours and the clients need.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sys
import threading
import time

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from starlette.exceptions import HTTPException as StarletteHTTPException

from mutualfc import __version__, bitstream
from mutualfc.codecs import CODECS, LearnedFeatureCodec
from mutualfc.errors import MutualFCError
from mutualfc.pipeline import Decoded, Decoder
from mutualfc.registry import task_id
from mutualfc.service.settings import ServiceSettings
from mutualfc.tasks import create_task, list_tasks
from mutualfc.zoo import ZOO

log = logging.getLogger("mutualfc.service")


class _Server:
    """What one worker process holds: the task network, the codecs (built once), the metrics."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        torch.set_num_threads(max(1, settings.threads))
        self.task = create_task(settings.task, weights=settings.weights).to(settings.device)
        others = {}
        for name in list_tasks():  # every other task network whose weights are here: containers name their task
            if name != settings.task:
                try:  # only weights already on this machine: a server does not fetch networks nobody asked for
                    others[name] = create_task(name, download=False).to(settings.device)
                except MutualFCError as e:
                    log.warning("not serving task %s: %s", name, e)
        self.decoder = Decoder(self.task, tasks=others, **settings.codec_options)
        for task in self.decoder.tasks.values():  # load every codec of every task now, not on a client's time
            for name, cls in CODECS.items():
                if issubclass(cls, LearnedFeatureCodec) and (name, task.name) not in ZOO:
                    continue
                try:
                    self.decoder.codec_for(bitstream.Header(cls.codec_id, task_id(task.name), 0.0, 0, 1, 1))
                except MutualFCError as e:
                    if task is self.task:
                        raise
                    log.warning("not serving %s for task %s: %s", name, task.name, e)
        self.lock = threading.Lock()
        # own registry for the metrics; the one /metrics reads: with several workers (serve --workers N sets
        # PROMETHEUS_MULTIPROC_DIR) every worker's counters, summed (prometheus_client's multiprocess mode)
        own = CollectorRegistry()
        self.requests = Counter("mutualfc_requests", "HTTP requests", ["route", "status"], registry=own)
        self.latency = Histogram(
            "mutualfc_request_seconds",
            "Request latency",
            ["route"],
            registry=own,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.registry = own
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry)

    def decode(self, data: bytes) -> Decoded:
        header, _ = bitstream.unpack(data)  # damaged or foreign containers fail here, before any work
        if header.width * header.height > self.settings.max_pixels:
            raise HTTPException(
                413,
                f"container announces a {header.width}x{header.height} image, over the "
                f"server's limit of {self.settings.max_pixels} pixels",
            )
        with self.lock:
            return self.decoder.decode(data)


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes is over the server's limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body is over the server's limit of {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise HTTPException(400, "empty body: send one .mfc container")
    return data


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The ASGI app (``uvicorn --factory mutualfc.service.app:create_app`` reads its settings from the environment)."""
    server = _Server(settings or ServiceSettings.from_env())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        url = os.environ.get("MUTUALFC_SERVE_URL", "ASGI app")
        print(f"mutualfc serve: worker {os.getpid()} ready ({server.task.name}, {url})", file=sys.stderr, flush=True)
        yield

    app = FastAPI(title="mutualfc split inference", version=__version__, lifespan=lifespan)
    app.state.server = server

    @app.middleware("http")
    async def measure(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.url.path if request.url.path in _ROUTES else "other"
        server.requests.labels(route, str(response.status_code)).inc()
        server.latency.labels(route).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(StarletteHTTPException)  # ours, and the router's 404 / 405
    async def one_line(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)  # a bad query parameter: its name and the rule, on one line
    async def bad_query(request: Request, exc: RequestValidationError):
        reasons = [f"{e['loc'][-1]}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(reasons)}, status_code=422)

    async def decoded(request: Request) -> Decoded:
        data = await _body(request, server.settings.max_body_bytes)
        try:
            return await asyncio.wait_for(asyncio.to_thread(server.decode, data), server.settings.decode_timeout_s)
        except MutualFCError as e:  # damaged, foreign, unknown codec, another model's stream
            raise HTTPException(400, str(e)) from None
        except HTTPException:
            raise
        except TimeoutError:
            raise HTTPException(
                422, f"decoding took longer than the server's limit of {server.settings.decode_timeout_s:g} s"
            ) from None
        except Exception as e:  # noqa: BLE001 - whatever a client's bytes provoke is the client's error
            log.exception("decoding a client's container failed")
            raise HTTPException(400, f"cannot decode the container: {type(e).__name__}: {e}") from None

    @app.post("/v1/detect")
    async def detect(request: Request, min_score: float = Query(0.25, ge=0.0, le=1.0)) -> dict:
        out = await decoded(request)
        h = out.header
        boxes = out.detections.to_coco(0, min_score, out.codec.task.category_names)
        return {
            "image": {"width": h.width, "height": h.height},
            "codec": out.codec.name,
            "codec_id": h.codec_id,
            "param_name": out.codec.param_name,
            "param": h.param,
            "task": out.codec.task.name,
            "min_score": min_score,
            "decode_ms": round(1000 * out.seconds["decode"], 2),
            "detections": [{k: b[k] for k in ("bbox", "score", "category_id", "category")} for b in boxes],
        }

    @app.post("/v1/features")
    async def features(request: Request) -> Response:
        out = await decoded(request)
        if out.features is None:
            raise HTTPException(400, f"{out.codec.name} codes images, not features: use /v1/detect")
        buf = io.BytesIO()
        np.savez(buf, **{k: v.numpy() for k, v in out.features.levels.items()})
        return Response(
            buf.getvalue(),
            media_type="application/octet-stream",
            headers={"X-Mutualfc-Codec": out.codec.name, "X-Mutualfc-Param": f"{out.header.param:g}"},
        )

    @app.get("/v1/codecs")
    async def codecs() -> dict:
        rows = []
        for codec in server.decoder.built_codecs():
            row = {"name": codec.name, "id": codec.codec_id, "task": codec.task.name, "codes": codec.domain,
                   "param": codec.param_help()}  # fmt: skip
            if isinstance(codec, LearnedFeatureCodec):
                row["checkpoint"] = codec.model.meta.get("name")
                row["model_tag"] = f"{codec.model_tag:08x}"
            rows.append(row)
        tasks = [{"name": t.name, "id": task_id(t.name)} for t in server.decoder.tasks.values()]
        return {"task": server.task.name, "tasks": tasks, "codecs": rows}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "version": __version__, "task": server.task.name, "threads": torch.get_num_threads()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    return app


_ROUTES = {"/v1/detect", "/v1/features", "/v1/codecs", "/healthz", "/metrics"}
