"""numba compilation of the exact kernels (entropy coding, fixed-point activations): cached on disk where numba finds
a writable cache directory, compiled in memory where it finds none (a read-only install and home directory, as in
some containers: numba would refuse the module at import)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numba

F = TypeVar("F", bound=Callable)


def kernel(inline: bool = False) -> Callable[[F], F]:
    """``numba.njit(cache=True, nogil=True)`` with the in-memory fallback; ``inline``: inlined into compiled
    callers (a small step called once per symbol)."""
    options = {"nogil": True, **({"inline": "always"} if inline else {})}

    def compile_(fn: F) -> F:
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(**options)(fn)

    return compile_
