"""Finding and reading detector weights without ever executing foreign code.

Resolution order: explicit path -> ``MUTUALFC_WEIGHTS`` (a file) -> ``MUTUALFC_WEIGHTS_DIR`` (a directory)
-> user cache (``~/.cache/mutualfc/weights``) -> download of the upstream release asset (sha256 checked), unless
``MUTUALFC_WEIGHTS_DIR`` or ``MUTUALFC_OFFLINE`` is set.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.request
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mutualfc.errors import WeightsError


@dataclass(frozen=True)
class WeightsSpec:
    """Weights declared next to the model: file names, upstream URL and checksum."""

    state_dict_file: str  # plain state dict in upstream key layout (preferred)
    upstream_file: str  # upstream pickled full model
    url: str
    sha256: str  # of the upstream file (or the prefix of it that the publisher names the file by)
    meta: dict


def cache_dir() -> Path:
    return Path(os.environ.get("MUTUALFC_CACHE", Path.home() / ".cache" / "mutualfc")) / "weights"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# restricted loading of upstream pickles
# ---------------------------------------------------------------------------------------------------------
class _Opaque:
    """Stands in for any foreign class: keeps the pickled state as data, runs no code of that class."""

    def __init__(self, *args, **kwargs):
        self._state: dict = {}

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self._state = state if isinstance(state, dict) else {"_value": state}


_DTYPES = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "BFloat16Storage": torch.bfloat16,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows tensors, storages and plain containers; every other global becomes an inert ``_Opaque``."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset", "dict", "list", "tuple"):
            return {"set": set, "frozenset": frozenset, "dict": dict, "list": list, "tuple": tuple}[name]
        return type(name, (_Opaque,), {"__module__": "mutualfc.opaque." + module})

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        raw = self.archive.read(f"{self.prefix}data/{key}")
        dtype = storage_type.dtype
        if dtype == torch.bfloat16:
            return torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16)
        arr = np.frombuffer(raw, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
        return torch.from_numpy(arr.copy())[:numel]


def _collect_state(obj, prefix: str, out: dict) -> None:
    state = obj._state
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if isinstance(t, torch.Tensor):
                out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, _Opaque):
            _collect_state(child, f"{prefix}{name}.", out)


def load_upstream_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an upstream YOLOv5 ``*.pt`` (pickled full model in a torch zip) into a state dict, safely."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path}: not a PyTorch zip checkpoint ({e})") from None
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise WeightsError(f"{path}: no data.pkl inside, not a PyTorch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        try:
            with archive.open(pkl[0]) as f:
                root = _RestrictedUnpickler(f, archive, prefix).load()
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
            raise WeightsError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    model = root.get("ema") or root.get("model") if isinstance(root, dict) else root
    if not isinstance(model, _Opaque):
        raise WeightsError(f"{path}: checkpoint holds no model object")
    state: dict[str, torch.Tensor] = {}
    _collect_state(model, "", state)
    if not state:
        raise WeightsError(f"{path}: checkpoint holds no tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Plain state dict (``torch.load(weights_only=True)``) or upstream pickled model."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain state dict: try the upstream full-model layout
        return load_upstream_checkpoint(path)
    for key in ("state_dict", "model"):  # training checkpoints (torchvision's references keep it under "model")
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return obj


def resolve_weights(spec: WeightsSpec, explicit: str | Path | None = None, download: bool = True) -> Path:
    """Find the weights file for ``spec`` (see module docstring for the order)."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise WeightsError(f"weights file not found: {p}")
        return p
    env_file = os.environ.get("MUTUALFC_WEIGHTS")
    if env_file:
        p = Path(env_file)
        if not p.is_file():
            raise WeightsError(f"MUTUALFC_WEIGHTS points to a missing file: {p}")
        return p
    dirs = [Path(d) for d in os.environ.get("MUTUALFC_WEIGHTS_DIR", "").split(os.pathsep) if d]
    dirs.append(cache_dir())
    for d in dirs:
        for name in (spec.state_dict_file, spec.upstream_file):
            if (d / name).is_file():
                return d / name
    failed = "downloads are off (MUTUALFC_OFFLINE)" if download else "no download was asked for"
    if os.environ.get("MUTUALFC_WEIGHTS_DIR"):  # the user said where weights live: look there, fetch nothing
        failed, download = "not in MUTUALFC_WEIGHTS_DIR, so no download was tried", False
    if download and not os.environ.get("MUTUALFC_OFFLINE"):
        target = cache_dir() / spec.upstream_file
        tmp = target.with_suffix(".part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(spec.url, timeout=10) as r, open(tmp, "wb") as f:  # noqa: S310 - fixed URL
                f.write(r.read())
            digest = sha256_of(tmp)
            if not digest.startswith(spec.sha256):  # a full digest, or the prefix a publisher names files by
                tmp.unlink(missing_ok=True)
                raise WeightsError(f"downloaded {spec.url} has sha256 {digest}, expected {spec.sha256}")
            tmp.replace(target)
            return target
        except OSError as e:
            tmp.unlink(missing_ok=True)
            failed = f"the download failed: {getattr(e, 'reason', e)}"
    where = ", ".join(str(d) for d in dirs)
    raise WeightsError(
        f"no weights for this model ({failed}): put {spec.upstream_file} (sha256 {spec.sha256[:12]}...) or "
        f"{spec.state_dict_file} in a folder named by MUTUALFC_WEIGHTS_DIR or in one of [{where}], set "
        f"MUTUALFC_WEIGHTS=/path/to/file, or pass --weights FILE (MUTUALFC_OFFLINE=1: no download attempt)"
    )
