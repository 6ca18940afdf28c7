"""Evaluate a codec at one rate point: image -> [front] -> encode -> FILE -> decode -> [back] -> mAP, bpp.

Bits are the sizes of the bitstream files written (containers included); pixels are the original images'.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

import mutualfc
from mutualfc.codecs import Codec
from mutualfc.eval.coco import CocoDataset
from mutualfc.eval.complexity import measure as measure_complexity
from mutualfc.eval.executors import CodecSpec, executor_info, run_inline, run_processes, run_ray
from mutualfc.images import load_image
from mutualfc.io import atomic_write_bytes
from mutualfc.pipeline import Decoder, Encoder


def versions() -> dict:
    import importlib.metadata

    import PIL

    try:
        av_version = importlib.metadata.version("av")
    except importlib.metadata.PackageNotFoundError:  # only the anchors need PyAV
        av_version = None
    return {
        "mutualfc": mutualfc.__version__,
        "torch": torch.__version__,
        "av": av_version,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; else what ``platform`` knows): timings and the exact products'
    fastest path depend on it, and ``platform.processor()`` is empty on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_detection(task, dataset: CocoDataset, progress: bool = True) -> list[dict]:
    results = []
    for rec in tqdm(dataset.records, desc="detect", unit="img", disable=not progress):
        results += task.detect(load_image(rec.path)).to_coco(rec.image_id)
    return results


class ImageCoder:
    """Codes one image at a time: encode -> FILE -> decode -> detections, with the bits and seconds it took."""

    def __init__(self, task, codec: Codec | None):
        self.task, self.codec = task, codec
        self.encoder = None if codec is None else Encoder(task, codec)
        self.decoder = None if codec is None else Decoder(task, {codec.name: codec})

    def __call__(self, path: Path, image_id: int, param: float | None, out_dir: Path) -> dict:
        image = load_image(path)
        out = {"pixels": image.shape[0] * image.shape[1], "bits": 0, "encode": 0.0, "decode": 0.0}
        if self.codec is None:
            t0 = time.perf_counter()
            det = self.task.detect(image)
            out["task"] = time.perf_counter() - t0
        else:
            data, spent = self.encoder.encode_timed(image, param)
            file = out_dir / f"{path.stem}.mfc"
            atomic_write_bytes(file, data)
            out["bits"] = 8 * file.stat().st_size
            decoded = self.decoder.decode(file.read_bytes())
            det = decoded.detections
            out |= {"encode": spent["encode"], "decode": decoded.seconds["decode"],
                    "task": spent["task"] + decoded.seconds["task"]}  # fmt: skip
        return out | {"results": det.to_coco(image_id)}


def evaluate_point(
    task,
    codec: Codec | None,
    param: float | None,
    dataset: CocoDataset,
    bitstream_dir: str | Path | None = None,
    progress: bool = True,
    label: str | None = None,
    jobs: int = 1,
    spec: CodecSpec | None = None,
    ray_address: str | None = None,
) -> dict:
    """One JSON-lines record for ``codec`` at ``param`` (``codec=None``: uncompressed); ``label`` replaces the codec
    name in the record (e.g. to tell apart two checkpoints of one codec). ``jobs`` > 1 spreads the images over that
    many local processes, each building the task and the codec from ``spec``; the record is the same as with one
    (results are gathered in the dataset's order), only the timings and "executor" differ. ``ray_address`` ("auto",
    "local" or "ray://host:10001") runs them as ``jobs`` Ray actors of that cluster instead (``pip install
    mutualfc[ray]``; image and bitstream paths must be visible to every node)."""
    desc = "none" if codec is None else f"{label or codec.name}@{param:g}"
    parallel = jobs > 1 or ray_address is not None
    if parallel and spec is None:
        raise ValueError("jobs > 1 or Ray needs a CodecSpec to build the codec in each process")
    kind = "inline" if not parallel else "processes" if ray_address is None else "ray"
    with tempfile.TemporaryDirectory(prefix="mutualfc-bits-") as tmp:
        out_dir = Path(bitstream_dir) if bitstream_dir else Path(tmp)
        work = [(rec.path, rec.image_id, param, out_dir) for rec in dataset.records]
        done: list[dict] = []
        with tqdm(total=len(work), desc=desc, unit="img", disable=not progress) as bar:  # closed on errors too
            if kind == "ray":
                it = run_ray(work, jobs, spec, ray_address)
            elif kind == "processes":
                it = run_processes(work, jobs, spec)
            else:
                it = run_inline(ImageCoder(task, codec), work)
            for d in it:
                done.append(d)
                bar.update(1)
    results = [r for d in done for r in d["results"]]
    # MPEG's complexity units, counted on the first image (the parts scale with its size, not with its content)
    first = [load_image(dataset.records[0].path)] if dataset.records else []
    kmac = measure_complexity(task, codec, param, first).to_dict() if first else None
    bits, pixels = sum(d["bits"] for d in done), sum(d["pixels"] for d in done)
    t_enc, t_dec, t_task = (sum(d[k] for d in done) for k in ("encode", "decode", "task"))
    n = len(dataset)
    scores = dataset.evaluate(results)
    return {
        "codec": label or ("none" if codec is None else codec.name),
        "param": param,
        "param_name": None if codec is None else codec.param_name,
        "task": task.name,
        "bpp": None if codec is None else bits / pixels,
        "map": round(scores["map"], 6),
        "map50": round(scores["map50"], 6),
        "n_images": n,
        "bits": bits,
        "pixels": pixels,
        "encode_s_per_image": round(t_enc / n, 5),
        "decode_s_per_image": round(t_dec / n, 5),
        "task_s_per_image": round(t_task / n, 5),
        "dataset": str(dataset.annotations or dataset.root),
        "versions": versions(),
        "cpu": cpu_model(),  # this process's CPU: the seconds are its unless ``executor`` names other nodes
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "executor": executor_info(kind, jobs if parallel else 1, done),
        "kmac_per_pixel": kmac,
    } | ({} if codec is None else {"codec_info": codec.describe(param)})
