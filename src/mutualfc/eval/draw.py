"""Draw detections on an image (decoded image, the original, or a neutral canvas of the original size)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from mutualfc.tasks.base import Detections


def draw_detections(canvas: np.ndarray, det: Detections, min_score: float = 0.25) -> Image.Image:
    """-> RGB image with the boxes scoring at least ``min_score`` and their COCO category id and score."""
    im = Image.fromarray(canvas).convert("RGB")
    d = ImageDraw.Draw(im)
    for (x1, y1, x2, y2), s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.category_ids.tolist(), strict=True):
        if s < min_score:
            continue
        hue = (int(c) * 47) % 255
        color = (255 - hue, hue, (hue * 3) % 255)
        d.rectangle((x1, y1, x2, y2), outline=color, width=2)
        d.text((x1 + 2, max(0, y1 - 11)), f"{int(c)} {s:.2f}", fill=color)
    return im
