"""Draw detections on an image (decoded image, the original, or a neutral canvas of the original size)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mutualfc.tasks.base import Detections


def draw_detections(
    canvas: np.ndarray, det: Detections, min_score: float = 0.25, names: dict[int, str] | None = None
) -> Image.Image:
    """-> RGB image with the boxes scoring at least ``min_score``, labelled with the class name (``names``: category
    id -> name; else the id) and score in a font that scales with the image (about 2.5% of its shorter side)."""
    im = Image.fromarray(canvas).convert("RGB")
    d = ImageDraw.Draw(im)
    size = max(12, round(0.025 * min(im.size)))
    font = ImageFont.load_default(size=size)
    width = max(2, size // 6)
    for (x1, y1, x2, y2), s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.category_ids.tolist(), strict=True):
        if s < min_score:
            continue
        hue = (int(c) * 47) % 255
        color = (255 - hue, hue, (hue * 3) % 255)
        d.rectangle((x1, y1, x2, y2), outline=color, width=width)
        label = f"{(names or {}).get(int(c), int(c))} {s:.2f}"
        top = max(0, y1 - size - 2 * width)
        box = d.textbbox((x1, top), label, font=font)
        d.rectangle((box[0] - width, box[1] - width, box[2] + width, box[3] + width), fill=color)
        d.text((x1, top), label, fill=(255, 255, 255), font=font)
    return im
