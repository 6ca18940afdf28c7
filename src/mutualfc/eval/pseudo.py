"""Pseudo ground truth for unlabelled images: the uncompressed detector's own boxes as COCO instances.

Feature coding for machines measures how far coding moves the task's output; against the detector's uncompressed
boxes, mAP measures exactly that fidelity, so codec settings (thresholds, operating points, schedules) can be tuned on
training images that have no labels, and the labelled evaluation images stay unseen until the end.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from mutualfc.images import load_image


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
