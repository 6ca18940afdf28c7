import shutil

import pytest

from mutualfc.errors import MutualFCError
from mutualfc.train import AlignedCropDataset, build_feature_cache
from tests.conftest import EXAMPLE


def test_cache_is_resumable_and_crops_are_aligned(task, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in sorted((EXAMPLE / "images").glob("*.jpg"))[:2]:
        shutil.copy(p, imgs)
    cache = tmp_path / "cache"
    assert build_feature_cache(task, imgs, cache, progress=False) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
    assert len(mtimes) == 2
    build_feature_cache(task, imgs, cache, progress=False)  # second run computes nothing
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.pt")} == mtimes
    ds = AlignedCropDataset(cache, task.name, crop=4)
    p3, p4, p5 = ds[0]
    assert p5.shape == (256, 4, 4) and p4.shape == (128, 8, 8) and p3.shape == (64, 16, 16)
    with pytest.raises(MutualFCError, match="not other-net"):
        AlignedCropDataset(cache, "other-net")


def test_cache_leaves_out_the_tuning_fold_and_refuses_to_mix_folds(task, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    names = sorted(p.name for p in (EXAMPLE / "images").glob("*.jpg"))[:3]
    for n in names:
        shutil.copy(EXAMPLE / "images" / n, imgs)
    cache = tmp_path / "cache"
    assert build_feature_cache(task, imgs, cache, progress=False, leave_out=(1, 3)) == 2
    assert sorted(p.stem for p in cache.glob("*.pt")) == [n[:-4] for n in (names[0], names[2])]
    with pytest.raises(MutualFCError, match="leaving out fold 1/3, not None"):
        build_feature_cache(task, imgs, cache, progress=False)
