"""Front-end features of a training image folder, computed once and stored as fp16 (one file per image).

The cache is resumable (finished images are skipped; each file is written atomically) and records which task
network produced it, so a cache made by another network is refused instead of silently mixed in.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from mutualfc.errors import MutualFCError
from mutualfc.images import image_files, load_image
from mutualfc.io import atomic_write_bytes, atomic_write_text

MANIFEST = "manifest.json"


def build_feature_cache(
    task, images: str | Path, cache: str | Path, progress: bool = True, leave_out: tuple[int, int] | None = None
) -> int:
    """Cache ``task.front`` of every image in ``images`` under ``cache`` except the fold ``leave_out`` (k, n) (kept
    for tuning, ``mutualfc.images.image_files``); returns the number of cached images."""
    images, cache = Path(images), Path(cache)
    files = image_files(images, leave_out, leave_out=True) if images.is_dir() else []
    if not files:
        raise MutualFCError(f"no training images in {images}")
    cache.mkdir(parents=True, exist_ok=True)
    manifest_path = cache / MANIFEST
    manifest = {"task": task.name, "levels": list(task.level_names), "dtype": "float16", "source": str(images),
                "left_out": "/".join(map(str, leave_out)) if leave_out else None}  # fmt: skip
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("task") != task.name:
            raise MutualFCError(f"{cache} holds features of {old.get('task')}, not {task.name}")
        if old.get("left_out") != manifest["left_out"]:
            raise MutualFCError(f"{cache} was built leaving out fold {old.get('left_out')}, not "
                                f"{manifest['left_out']}: use another cache folder")  # fmt: skip
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    todo = [p for p in files if not (cache / f"{p.stem}.pt").is_file()]
    for p in tqdm(todo, desc="feature cache", unit="img", disable=not progress):
        fs = task.front(load_image(p))
        buf = io.BytesIO()
        torch.save({k: v[0].half().clone() for k, v in fs.levels.items()}, buf)
        atomic_write_bytes(cache / f"{p.stem}.pt", buf.getvalue())
    return len(files)


class AlignedCropDataset(Dataset):
    """Random crops of all levels covering the same image region (``crop`` is the size at the coarsest level)."""

    def __init__(self, cache: str | Path, task_name: str, crop: int = 8, strides: tuple[int, ...] = (8, 16, 32),
                 seed: int = 0, in_memory: bool = True):  # fmt: skip
        self.root = Path(cache)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise MutualFCError(f"{self.root} is not a feature cache (no {MANIFEST}); run 'mutualfc train cache'")
        meta = json.loads(manifest.read_text())
        if meta.get("task") != task_name:
            raise MutualFCError(f"{self.root} holds features of {meta.get('task')}, not {task_name}")
        self.levels = meta["levels"]
        self.files = sorted(p for p in self.root.glob("*.pt"))
        if not self.files:
            raise MutualFCError(f"feature cache {self.root} is empty")
        self.scale = [strides[-1] // s for s in strides]  # size factor of each level relative to the coarsest
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        self.items = [self._load(p) for p in self.files] if in_memory else None
        if self.items is not None:  # images too small for a full crop would give ragged batches
            keep = [i for i, t in enumerate(self.items) if min(t[self.levels[-1]].shape[-2:]) >= crop]
            self.files = [self.files[i] for i in keep]
            self.items = [self.items[i] for i in keep]

    def _load(self, path: Path) -> dict[str, torch.Tensor]:
        return torch.load(path, map_location="cpu", weights_only=True)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        item = self.items[i] if self.items is not None else self._load(self.files[i])
        coarse = item[self.levels[-1]]
        h, w = coarse.shape[-2:]
        c = min(self.crop, h, w)
        y = int(self.rng.integers(0, h - c + 1))
        x = int(self.rng.integers(0, w - c + 1))
        out = []
        for name, f in zip(self.levels, self.scale, strict=True):
            t = item[name]
            out.append(t[:, y * f : (y + c) * f, x * f : (x + c) * f].float())
        return out
