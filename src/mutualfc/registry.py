"""One place for the names and numeric ids that bitstreams carry: codecs and task networks.

An id, once written into a container, is a promise to every decoder; the tables are checked for duplicates at
import so that two codecs can never claim the same one.
"""

from __future__ import annotations

CODEC_IDS: dict[str, int] = {
    "jpeg": 1,
    "webp": 2,
    "hevc-image": 3,
    "vvc-image": 4,
    "hevc-feature": 5,
    "vvc-feature": 6,
    "mutual": 16,
    "separate": 17,
    "mutual-fast": 18,
}

TASK_IDS: dict[str, int] = {"yolov5n-coco": 1, "yolox-nano-coco": 2, "fasterrcnn-r50-fpn-coco": 3}


def check_unique(table: dict[str, int], what: str) -> None:
    """ValueError if two names of ``table`` share an id."""
    seen: dict[int, str] = {}
    for name, i in table.items():
        if i in seen:
            raise ValueError(f"{what} id {i} is claimed by both {seen[i]!r} and {name!r}")
        seen[i] = name


check_unique(CODEC_IDS, "codec")
check_unique(TASK_IDS, "task")


def codec_name(codec_id: int) -> str | None:
    """The codec a container's id names (None if unknown)."""
    return {i: n for n, i in CODEC_IDS.items()}.get(codec_id)


def task_id(name: str) -> int:
    """A task network's id (0 for a task without one: its containers cannot be told apart)."""
    return TASK_IDS.get(name, 0)


def task_name(task_id_: int) -> str | None:
    """The task network a container's task id names (None if unknown)."""
    return {i: n for n, i in TASK_IDS.items()}.get(task_id_)
