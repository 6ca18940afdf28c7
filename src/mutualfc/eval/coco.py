"""COCO-format datasets and mAP via pycocotools, restricted to the dataset's own images."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from mutualfc.errors import DatasetError
from mutualfc.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    image_id: int
    width: int
    height: int


class CocoDataset:
    """An image folder, optionally with an instances JSON (then only its listed images are used)."""

    def __init__(self, images: str | Path, annotations: str | Path | None = None):
        self.root = Path(images)
        if not self.root.is_dir():
            raise DatasetError(f"image folder not found: {self.root}")
        self.annotations = Path(annotations) if annotations else None
        self.gt: dict | None = None
        if self.annotations is None:
            files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DatasetError(f"no images in {self.root}")
            self.records = [ImageRecord(p, i, 0, 0) for i, p in enumerate(files)]
            return
        self.gt = _read_instances(self.annotations)
        self.records = [
            ImageRecord(self.root / im["file_name"], int(im["id"]), int(im["width"]), int(im["height"]))
            for im in sorted(self.gt["images"], key=lambda im: im["id"])
        ]
        missing = [r.path.name for r in self.records if not r.path.is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} annotated image(s) missing from {self.root}, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, n: int | None) -> CocoDataset:
        if n is None or n >= len(self.records):
            return self
        ds = object.__new__(CocoDataset)
        ds.__dict__.update(self.__dict__)
        ds.records = self.records[:n]
        return ds

    def category_ids(self) -> list[int]:
        return sorted(int(c["id"]) for c in (self.gt or {}).get("categories", []))

    def evaluate(self, results: list[dict]) -> dict[str, float]:
        """COCO bbox mAP@[.5:.95] and mAP@.5 over this dataset's images."""
        if self.gt is None:
            raise DatasetError("mAP needs an annotations file (--annotations)")
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        img_ids = [r.image_id for r in self.records]
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = self.gt
            coco.createIndex()
            if not results:
                return {"map": 0.0, "map50": 0.0}
            dt = coco.loadRes(results)
            ev = COCOeval(coco, dt, "bbox")
            ev.params.imgIds = img_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {"map": float(ev.stats[0]), "map50": float(ev.stats[1])}


def _read_instances(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"annotations file not found: {path}")
    try:
        gt = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"annotations file {path} is not valid JSON: {e}") from None
    if not isinstance(gt, dict) or not all(k in gt for k in ("images", "annotations", "categories")):
        raise DatasetError(f"annotations file {path} is not COCO instances format (images/annotations/categories)")
    for im in gt["images"]:
        if not all(k in im for k in ("id", "file_name", "width", "height")):
            raise DatasetError(f"annotations file {path}: image entry without id/file_name/width/height")
    for a in gt["annotations"]:
        a.setdefault("iscrowd", 0)
        if "area" not in a and "bbox" in a:
            a["area"] = a["bbox"][2] * a["bbox"][3]
    gt.setdefault("info", {})
    gt.setdefault("licenses", [])
    return gt
