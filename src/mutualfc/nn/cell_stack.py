"""A pointwise / k x k / pointwise stack (the channel groups' context network) at the coded cells of a map that is 0
everywhere else, from the map's columns there.

``sparse.stack_at`` evaluates the first 1x1 layer wherever the k x k layer reads, about three times the coded cells
at low rates. Where the input is 0 the first layer gives the same column everywhere, so it is computed at the coded
cells, from the columns as the caller holds them (no gather from the map), and once for that column, which the
k x k layer reads at every other cell of the map. Exact integer arithmetic throughout: the same values as
``stack_at`` on the whole map (tested), with fewer products.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mutualfc.nn import exact
from mutualfc.nn.caching import memoized
from mutualfc.nn.kernels import kernel
from mutualfc.nn.sparse import patch_rows


def _pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0)


def _activation(m: nn.Module) -> bool:
    return isinstance(m, (nn.GELU, nn.Identity))


def applies(layers: nn.Module, cols: torch.Tensor) -> bool:
    """Whether ``stack_at_cells`` can evaluate ``layers`` on the fixed-point columns ``cols``: (1x1 convolution,
    activation, k x k "same" convolution, activation, 1x1 convolution), ungrouped, on the CPU. Its products are
    torch products, so a MAC counter sees the ones it runs."""
    if not isinstance(layers, nn.Sequential) or len(layers) != 5:
        return False
    first, act_a, mid, act_b, last = layers
    k = mid.kernel_size[0] if isinstance(mid, nn.Conv2d) else 0
    return (
        cols.dtype == torch.float64
        and cols.device.type == "cpu"
        and _pointwise(first)
        and _pointwise(last)
        and _activation(act_a)
        and _activation(act_b)
        and k % 2 == 1
        and mid.kernel_size == (k, k)
        and mid.stride == (1, 1)
        and mid.padding == (k // 2, k // 2)
        and all(c.groups == 1 for c in (first, mid, last))
    )


def stack_at_cells(
    layers: nn.Sequential, cols: torch.Tensor, kept: torch.Tensor, size: tuple[int, int], memo: dict | None = None,
    with_last: bool = True,
) -> torch.Tensor:  # fmt: skip
    """``layers`` (see ``applies``) on the map of ``size`` that holds the fixed-point columns ``cols`` (C, K) at the
    raster positions ``kept`` and 0 elsewhere, evaluated at ``kept`` -> (C_out, K): what ``sparse.stack_at`` gives
    on the whole map. Not ``with_last``: the hidden channels before the last layer (``composed`` reads them)."""
    first, act_a, mid, act_b, last = layers
    k = mid.kernel_size[0]
    h, w = size

    def sources():  # tap t, cell i -> column of the first layer's output: kept cell j, K (zero input), -1 (padding)
        return torch.from_numpy(_cell_sources(kept.numpy(), h, w, k))

    src = memoized(memo, ("cell_stack", h, w, k), kept, sources)
    wa, ba = exact.scaled_params(first)
    a = F.pad(torch.mm(wa, cols), (0, 1)).add_(ba.view(-1, 1))  # the last column: a cell whose input is 0
    a = exact.activations(a, act_a)
    wb, bb = exact.scaled_params(mid)
    b = exact.activations_from_rows(F.linear(patch_rows(a, src, k * k), wb, bb), act_b)
    if not with_last:
        return b
    wc, bc = exact.scaled_params(last)
    return exact.affine_activations(wc, b, bc, None)


@kernel()
def _cell_sources(kept: np.ndarray, h: int, w: int, k: int) -> np.ndarray:  # pragma: no cover - compiled
    """For tap t of a k x k "same" convolution at kept cell i, entry t K + i: the kept cell's column it reads, K
    where it reads a cell that is not kept, -1 outside the h x w map (the zero padding)."""
    n = kept.shape[0]
    lookup = np.full(h * w, n, np.int64)
    for j in range(n):
        lookup[kept[j]] = j
    src = np.empty(k * k * n, np.int64)
    for t in range(k * k):
        dr, dc = t // k - k // 2, t % k - k // 2
        for i in range(n):
            r, c = kept[i] // w + dr, kept[i] % w + dc
            src[t * n + i] = lookup[r * w + c] if 0 <= r < h and 0 <= c < w else -1
    return src
