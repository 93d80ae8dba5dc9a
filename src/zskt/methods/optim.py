"""Optimiser pieces the methods share: Adam as the fused kernel where there is one, and gradient-norm
clipping."""

from __future__ import annotations

import torch


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with PyTorch's defaults, as the fused kernel where this PyTorch has one for the device: the same
    update in one pass per tensor (rounding-level differences only; docs/benchmarks.md)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def clip(parameters, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
