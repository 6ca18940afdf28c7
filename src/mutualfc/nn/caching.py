"""Caches keyed on tensor identity and version: derived matrices and tables are rebuilt exactly when their source
tensors change (training steps, ``load_state_dict``, ``update()``)."""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")
_scope = threading.local()  # .hits: {(id(owner), name): value} while a ``coding_scope`` is open in this thread
_structure = [0]  # counts the registrations (or replacements) of parameters, buffers and submodules in watched modules
_watched: weakref.WeakSet = weakref.WeakSet()  # the modules of the models whose look-ups carry over (``_carried_hits``)


def _registered(module: nn.Module, *_) -> None:
    if module in _watched:  # not the containers a slice of a ``Sequential`` makes
        _structure[0] += 1  # returns None: the registration goes ahead unchanged


for _hook in (
    nn.modules.module.register_module_parameter_registration_hook,
    nn.modules.module.register_module_buffer_registration_hook,
    nn.modules.module.register_module_module_registration_hook,
):
    _hook(_registered)


def stamps(tensors: Iterable[torch.Tensor]) -> tuple:
    """Identity and in-place version of each tensor: a cache key that changes when any of them is replaced or
    modified. Tensors made under ``torch.inference_mode`` keep no version; they cannot be modified outside it."""

    return tuple((id(t), t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)


def cached(
    owner: nn.Module,
    name: str,
    tensors: Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]],
    build: Callable[[], T],
) -> T:
    """``build()``, cached on ``owner`` until one of ``tensors`` is replaced or changed in place. Within a
    ``coding_scope`` the tensors are checked once (they cannot change while one image is coded); ``tensors`` may be
    a function that lists them, called only then."""
    hits = getattr(_scope, "hits", None)
    if hits is not None:
        value = hits.get((id(owner), name), hits)  # ``hits`` itself: not there
        if value is not hits:
            return value
    key = stamps(tensors() if callable(tensors) else tensors)
    hit = owner.__dict__.get(f"_mutualfc_{name}")
    if hit is None or hit[0] != key:
        hit = (key, build())
        owner.__dict__[f"_mutualfc_{name}"] = hit
    if hits is not None:
        hits[(id(owner), name)] = hit[1]
    return hit[1]


@contextlib.contextmanager
def coding_scope(model: nn.Module | None = None):
    """Within it (this thread), ``cached`` checks each cache's tensors once: for the coding of one image, during
    which no weight changes, instead of at each of the dozens of look-ups of the same layers. Nested scopes share
    the outermost one. With the ``model`` that owns every cache looked up inside, the look-ups of its last scope
    stand while none of its parameters and buffers has changed since (one check of them all, ``_carried_hits``)."""
    if getattr(_scope, "hits", None) is not None:
        yield
        return
    _scope.hits = {} if model is None else _carried_hits(model)
    try:
        yield
    finally:
        _scope.hits = None


def _carried_hits(model: nn.Module) -> dict:
    """The look-ups of ``model``'s last scope if none of its tensors changed in place (version) or moved (data
    pointer), and no parameter, buffer or submodule was registered in one of its modules since; else none."""
    state = model.__dict__.get("_mutualfc_scope")
    if state is not None and state[0] == _structure[0] and state[3] == _model_stamp(state[1], state[2]):
        return state[4]
    _watched.update(model.modules())
    structure, tensors = _structure[0], [*model.parameters(), *model.buffers()]
    versioned = [t for t in tensors if not t.is_inference()]  # a tensor's inference mode never changes
    hits: dict = {}
    model.__dict__["_mutualfc_scope"] = (structure, tensors, versioned, _model_stamp(tensors, versioned), hits)
    return hits


def _model_stamp(tensors: list[torch.Tensor], versioned: list[torch.Tensor]) -> tuple:
    """``stamps`` of a model's tensors, held by ``_carried_hits`` (so their identities cannot change)."""
    return tuple(t.data_ptr() for t in tensors), tuple(t._version for t in versioned)


def in_coding_scope(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn``, a method of the model that owns every cache it looks up, run inside that model's ``coding_scope``."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with coding_scope(self):
            return fn(self, *args, **kwargs)

    return wrapper


def memoized(memo: dict | None, key: tuple, positions: torch.Tensor, build: Callable[[], T]) -> T:
    """``build()``, kept in ``memo`` (one image's coding: every channel group gathers at the same cells) under
    ``key`` and the identity of ``positions`` (held with the value, so that the identity cannot be reused)."""
    if memo is None:
        return build()
    key = (*key, id(positions))
    if key not in memo:
        memo[key] = (positions, build())
    return memo[key][1]
