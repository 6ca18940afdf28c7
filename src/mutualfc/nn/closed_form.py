"""Closed-form fits that start the learned codecs: PCA transforms and least-squares predictors from sample rows."""

from __future__ import annotations

import torch
from torch import nn


def sample_rows(u: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """(B, C, H, W) -> at most ``n`` random positions as float64 rows (C columns)."""
    x = u.permute(0, 2, 3, 1).reshape(-1, u.shape[1])
    if x.shape[0] > n:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]
    return x.double()


EXACT_PCA_LIMIT = 4096  # above this many columns the C x C eigendecomposition (C^3) gives way to a randomised SVD


def pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> mean (C,), top-``k`` principal directions (C, k) of the rows ``x``. Wide rows (a stride-4 level packed to
    stride 32 has 64 x its channels) use a randomised SVD (Halko et al.) under a fixed seed: O(rows x C x k)."""
    mu = x.mean(0)
    if x.shape[1] > EXACT_PCA_LIMIT and k < min(x.shape) // 2:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _, _, v = torch.svd_lowrank(x - mu, q=min(k + 16, min(x.shape)), niter=4)
        return mu, v[:, :k]
    cov = (x - mu).T @ (x - mu) / max(x.shape[0] - 1, 1)
    _, vecs = torch.linalg.eigh(cov)
    return mu, vecs[:, -k:].flip(1)


def least_squares(
    inputs: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine least-squares fit ``targets ~ W inputs + b`` over rows (ridge-regularised); -> W (C_out, C_in), b."""
    b1 = torch.cat([inputs, torch.ones_like(inputs[:, :1])], 1)
    reg = ridge * torch.eye(b1.shape[1], dtype=b1.dtype, device=b1.device)
    w = torch.linalg.solve(b1.T @ b1 + reg, b1.T @ targets)  # (C_in + 1, C_out)
    return w[:-1].T, w[-1]


def set_linear(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Load an affine map into a 1x1 convolution."""
    with torch.no_grad():
        conv.weight.copy_(weight.to(conv.weight).view_as(conv.weight))
        conv.bias.copy_(bias.to(conv.bias))


def set_pca(analysis: nn.Conv2d, synthesis: nn.Conv2d, rows: torch.Tensor) -> None:
    """PCA of ``rows`` as an analysis / synthesis pair of 1x1 convolutions (as many components as the analysis
    has outputs)."""
    mu, v = pca(rows, analysis.out_channels)
    set_linear(analysis, v.T, -(v.T @ mu))
    set_linear(synthesis, v, mu)
