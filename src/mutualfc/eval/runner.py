"""Evaluate a codec at one rate point: image -> [front] -> encode -> FILE -> decode -> [back] -> mAP, bpp.

Bits are the sizes of the bitstream files written (containers included); pixels are the original images'.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

import mutualfc
from mutualfc.codecs.base import Codec
from mutualfc.eval.coco import CocoDataset, load_image
from mutualfc.io import atomic_write_bytes
from mutualfc.pipeline import Decoder, Encoder


def versions() -> dict:
    import av
    import PIL
    import torch

    return {
        "mutualfc": mutualfc.__version__,
        "torch": torch.__version__,
        "av": av.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def run_detection(task, dataset: CocoDataset, progress: bool = True) -> list[dict]:
    results = []
    for rec in tqdm(dataset.records, desc="detect", unit="img", disable=not progress):
        results += task.detect(load_image(rec.path)).to_coco(rec.image_id)
    return results


def evaluate_point(
    task,
    codec: Codec | None,
    param: float | None,
    dataset: CocoDataset,
    bitstream_dir: str | Path | None = None,
    progress: bool = True,
    label: str | None = None,
) -> dict:
    """One JSON-lines record for ``codec`` at ``param`` (``codec=None``: uncompressed); ``label`` replaces the codec
    name in the record (e.g. to tell apart two checkpoints of one codec)."""
    results: list[dict] = []
    bits = pixels = 0
    t_enc = t_dec = t_task = 0.0
    desc = "none" if codec is None else f"{label or codec.name}@{param:g}"
    encoder = None if codec is None else Encoder(task, codec)
    decoder = None if codec is None else Decoder(task, {codec.name: codec})
    with tempfile.TemporaryDirectory(prefix="mutualfc-bits-") as tmp:
        out_dir = Path(bitstream_dir) if bitstream_dir else Path(tmp)
        for rec in tqdm(dataset.records, desc=desc, unit="img", disable=not progress):
            image = load_image(rec.path)
            pixels += image.shape[0] * image.shape[1]
            if codec is None:
                t0 = time.perf_counter()
                det = task.detect(image)
                t_task += time.perf_counter() - t0
            else:
                data, spent = encoder.encode_timed(image, param)
                path = out_dir / f"{rec.path.stem}.mfc"
                atomic_write_bytes(path, data)
                bits += 8 * path.stat().st_size
                decoded = decoder.decode(path.read_bytes())
                det = decoded.detections
                t_enc += spent["encode"]
                t_dec += decoded.seconds["decode"]
                t_task += spent["task"] + decoded.seconds["task"]
            results += det.to_coco(rec.image_id)
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
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    } | ({} if codec is None else {"codec_info": codec.describe(param)})
