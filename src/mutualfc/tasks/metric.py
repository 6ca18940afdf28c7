"""Task metrics for heads that are not one 1x1 convolution: the sensitivity matrix by autograd probes.

A codec that measures distortion as ``e^T S e`` per position spends its bits where the head looks. For a linear
head ``S`` is ``W^T diag(w) W``; for any differentiable head it is ``E[J^T diag(w) J]``, which random probes estimate
without forming the Jacobian: for ``v`` with ``E[v v^T] = diag(w)``, ``g = J^T v`` (one backward pass) has
``E[g g^T] = J^T diag(w) J`` (Hutchinson).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def probed_sensitivity(
    outputs: Callable[[torch.Tensor], torch.Tensor],
    weights: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    probes: int = 8,
    seed: int = 0,
) -> torch.Tensor:
    """(C, C) float64: the average over positions of ``J^T diag(w) J`` for the map ``outputs`` (B, C, H, W) ->
    (B, K, H', W'), with output weights ``weights(reference outputs)`` of the same shape, estimated from ``probes``
    Rademacher probes (fixed ``seed``: the same matrix on every run)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = x.detach().float().clone().requires_grad_(True)  # a copy: front() gives inference tensors
    with torch.enable_grad():
        y = outputs(x)
        w = weights(y.detach()).sqrt()
        s = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        for i in range(probes):
            v = (torch.randint(0, 2, y.shape, generator=g).to(y.device, y.dtype) * 2 - 1) * w
            (grad,) = torch.autograd.grad(y, x, v, retain_graph=i < probes - 1)
            cols = grad.double().permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            s += cols.T @ cols
    return s / (probes * max(x.shape[0] * x.shape[2] * x.shape[3], 1))
