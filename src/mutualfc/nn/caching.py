"""Caches keyed on tensor identity and version: derived matrices and tables are rebuilt exactly when their source
tensors change (training steps, ``load_state_dict``, ``update()``)."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")
_scope = threading.local()  # .hits: {(id(owner), name): value} while a ``coding_scope`` is open in this thread


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
def coding_scope():
    """Within it (this thread), ``cached`` checks each cache's tensors once: for the coding of one image, during
    which no weight changes, instead of at each of the dozens of look-ups of the same layers. Nested scopes share
    the outermost one."""
    if getattr(_scope, "hits", None) is not None:
        yield
        return
    _scope.hits = {}
    try:
        yield
    finally:
        _scope.hits = None


def in_coding_scope(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` run inside a ``coding_scope``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with coding_scope():
            return fn(*args, **kwargs)

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
