"""Training checkpoints: saving and resuming a run, starting from another model, exporting to the zoo format.

Every file a user hands in (``--init-from``, a run folder to resume or export) is read with ``weights_only=True``:
tensors and plain containers only, so a crafted pickle cannot run code.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from mutualfc.errors import MutualFCError
from mutualfc.io import atomic_write_bytes
from mutualfc.models import build_network, is_entropy_table
from mutualfc.zoo import config_of, export_state, unpack_state


def state_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def read_training_file(path: str | Path) -> dict:
    """A training or zoo checkpoint as a dict, read safely; one-line MutualFCError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise MutualFCError(f"no checkpoint {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable or unsafe file gets the same one-line error
        raise MutualFCError(f"{path} is not a mutualfc checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") \
            from None  # fmt: skip
    if not isinstance(ck, dict) or "model" not in ck:
        raise MutualFCError(f"{path} is not a mutualfc checkpoint (no model state)")
    return ck


def export_checkpoint(
    run_dir: str | Path, out: str | Path, name: str, checkpoint: str | None = None, schedule: dict | None = None
) -> dict:
    """Strip a training checkpoint to what coding needs (config, task, fp16 weights, entropy tables) for the zoo;
    ``schedule``: the model's operating-point policy (``codecs.learned.Schedule`` fields), stored with it."""
    path = Path(run_dir) / (checkpoint or "last.pt")
    ck = read_training_file(path)
    net = build_network(config_of(ck, path))
    net.load_state_dict(ck["model"])
    meta = {"name": name, "task": ck["task"], "model_cfg": ck["model_cfg"], "train_cfg": ck["train_cfg"],
            "step": ck["step"]}  # fmt: skip
    if schedule:
        meta["schedule"] = checked_schedule(schedule)
    atomic_write_bytes(out, state_bytes({"meta": meta, "model": export_state(net)}))
    return meta


def checked_schedule(schedule: dict) -> dict:
    """``schedule`` as the checkpoint stores it; unknown keys refused with one line."""
    from mutualfc.codecs.learned import Schedule

    return Schedule.from_meta({"schedule": schedule}).to_dict()


def store_schedule(checkpoint: str | Path, out: str | Path, schedule: dict) -> dict:
    """Re-tune an exported checkpoint's operating points without its training run: the same weights with
    ``schedule`` in place of the stored one. The file changes, so does the model tag written into bitstreams:
    streams coded under the old schedule are refused, not decoded at another quality. -> the new meta."""
    ck = read_training_file(checkpoint)
    if not isinstance(ck.get("meta"), dict):
        raise MutualFCError(f"{checkpoint} is not an exported codec checkpoint (mutualfc train export writes one)")
    meta = ck["meta"] | {"schedule": checked_schedule(schedule)}
    atomic_write_bytes(out, state_bytes({"meta": meta, "model": ck["model"]}))
    return meta


def load_matching(net: nn.Module, path: str | Path, task: str) -> set[str]:
    """Load the parameters and buffers of a trained checkpoint (zoo file or training checkpoint) whose names and
    shapes match ``net``; -> the names loaded. Entropy tables are left out (``update()`` rebuilds them)."""
    ck = read_training_file(path)
    try:
        state = unpack_state(ck["model"]) if "meta" in ck else ck["model"]
        trained_for = (ck["meta"] if "meta" in ck else ck)["task"]
    except (KeyError, TypeError, AttributeError) as e:
        raise MutualFCError(f"{path} is not a mutualfc codec checkpoint ({type(e).__name__})") from None
    if trained_for != task:
        raise MutualFCError(f"{path} was trained for task {trained_for!r}, not {task!r}")
    own = net.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and not is_entropy_table(k)}
    net.load_state_dict(keep, strict=False)
    return set(keep)
