"""Pseudo ground truth for unlabelled images: the uncompressed detector's own boxes as COCO instances.

Feature coding for machines measures how far coding moves the task's output; against the detector's uncompressed
boxes, mAP measures exactly that fidelity, so codec settings (thresholds, operating points, schedules) can be tuned on
training images that have no labels, and the labelled evaluation images stay unseen until the end.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from mutualfc.errors import DatasetError
from mutualfc.images import IMAGE_SUFFIXES, load_image


def image_files(folder: str | Path, fold: tuple[int, int] | None = None) -> list[Path]:
    """The images of ``folder`` in name order; with ``fold`` (k, n) only every n-th one from the k-th (a split that
    does not depend on the file system's order)."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if fold is not None:
        k, n = fold
        files = files[k::n]
    if not files:
        raise DatasetError(f"no images in {root}" + (f" for fold {fold[0]}/{fold[1]}" if fold else ""))
    return files


def parse_fold(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise DatasetError(f"--fold must be K/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= k < n:
        raise DatasetError(f"--fold K/N needs 0 <= K < N, got {text!r}")
    return k, n


def pseudo_instances(task, files: list[Path], min_score: float, progress: bool = True) -> dict:
    """COCO instances (images, annotations, categories) whose boxes are the task's uncompressed detections scoring
    at least ``min_score``; image ids are 1..N in the order of ``files``."""
    images, annotations = [], []
    for image_id, path in enumerate(tqdm(files, desc="pseudo-labels", unit="img", disable=not progress), 1):
        image = load_image(path)
        h, w = image.shape[:2]
        images.append({"id": image_id, "file_name": path.name, "width": w, "height": h})
        for det in task.detect(image).to_coco(image_id, min_score):
            bw, bh = det["bbox"][2], det["bbox"][3]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": det["category_id"],
                                "bbox": det["bbox"], "area": bw * bh, "iscrowd": 0})  # fmt: skip
    categories = [{"id": int(c), "name": n} for c, n in sorted(task.category_names.items())]
    info = {"description": f"pseudo ground truth: {task.name} uncompressed detections, score >= {min_score:g}"}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}
