"""Where an evaluation's images are coded: in this process, in local worker processes, or as Ray actors on a cluster.

Each executor maps one function over the images in order and reports where the work ran, so that a record can say
it ("executor": kind, workers, nodes, pids) and a test can check that the work really ran there.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch

from mutualfc.errors import MutualFCError


@dataclass(frozen=True)
class CodecSpec:
    """How to build the task network and the codec again in another process (``--jobs``, ``--ray``): names and
    options only."""

    task: str
    codec: str
    weights: str | None = None
    options: dict = field(default_factory=dict)
    device: str = "cpu"


_WORKER = None


def _start_worker(spec: CodecSpec, threads: int) -> None:
    global _WORKER
    from mutualfc.codecs import create_codec
    from mutualfc.eval.runner import ImageCoder
    from mutualfc.tasks import create_task

    torch.set_num_threads(threads)  # as in the parent: float results of the detector depend on the thread count
    task = create_task(spec.task, weights=spec.weights).to(spec.device)
    _WORKER = ImageCoder(task, None if spec.codec == "none" else create_codec(spec.codec, task, **spec.options))


def _work(args: tuple) -> dict:
    return _WORKER(*args) | {"pid": os.getpid(), "node": platform.node()}


def executor_info(kind: str, workers: int, done: list[dict]) -> dict:
    """The record's "executor": what ran the images, with the nodes and process ids they were coded in."""
    return {
        "kind": kind,
        "workers": workers,
        "nodes": sorted({d["node"] for d in done}),
        "pids": sorted({d["pid"] for d in done}),
    }


def run_inline(coder: Callable[..., dict], work: list[tuple]) -> Iterator[dict]:
    for w in work:
        yield coder(*w) | {"pid": os.getpid(), "node": platform.node()}


def run_processes(work: list[tuple], jobs: int, spec: CodecSpec) -> Iterator[dict]:
    """``work`` in ``jobs`` spawned local processes, results in ``work``'s order."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, ctx, initializer=_start_worker, initargs=(spec, torch.get_num_threads())) as pool:
        yield from pool.map(_work, work)


def run_ray(work: list[tuple], jobs: int, spec: CodecSpec, address: str) -> Iterator[dict]:
    """``work`` over ``jobs`` Ray actors of the cluster at ``address`` ("local": a Ray instance started here and
    stopped afterwards; "auto": the cluster this machine belongs to; "ray://HOST:PORT": a remote one), results in
    ``work``'s order. Each actor builds the task network and the codec once, like a local worker process."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise MutualFCError("--ray needs Ray: pip install 'mutualfc[ray]'") from None
    started = not ray.is_initialized()
    if started:
        env = {k: v for k, v in os.environ.items() if k.startswith("MUTUALFC_")}  # e.g. the weights folder
        kwargs = {"runtime_env": {"env_vars": env}, "include_dashboard": False, "log_to_driver": False}
        try:
            if address == "local":
                ray.init(num_cpus=max(jobs, os.cpu_count() or 1), **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise MutualFCError(f"--ray {address}: cannot reach the Ray cluster: {e}") from None
    try:
        actor = ray.remote(num_cpus=1)(_RayCoder)
        threads = torch.get_num_threads()
        pool = ActorPool([actor.remote(spec, threads) for _ in range(jobs)])
        yield from pool.map(lambda a, w: a.code.remote(w), work)
    finally:
        if started:
            ray.shutdown()


class _RayCoder:
    """A Ray actor holding one task network and codec (made remote by ``run_ray``)."""

    def __init__(self, spec: CodecSpec, threads: int):
        _start_worker(spec, threads)

    def code(self, args: tuple) -> dict:
        import ray

        return _work(args) | {"node": ray.get_runtime_context().get_node_id(), "ray_actor": True}
