"""Batch-norm statistic matching through forward hooks on a frozen teacher's BN layers (DeepInversion, CMI, Fast,
DFQ): each hook sees the input of one `BatchNorm2d` on every forward and keeps the `bn_statistic_loss` of that
batch against the layer's running statistics, and, where asked, the per-sample channel means CMI uses as
features. The teacher must keep its BN layers (`Scaffold.frozen_module(teacher, fold_bn=False)`) and run in eval
mode, so its running statistics stay fixed.

Fast's `bn_mmt` blends the batch statistics with a running average of earlier synthesis batches' statistics
before comparing (zju-vipa Fast-Datafree `datafree/hooks.py`, `DeepInversionHook(module, mmt_rate)`): the loss
is ‖σ²_run − ((1−m)·σ²_batch + m·σ²_mmt)‖ + ‖μ_run − ((1−m)·μ_batch + m·μ_mmt)‖ once a previous batch exists,
and `update_momentum()` (called once per synthesised batch) folds the last forward's statistics into the average.
"""

from __future__ import annotations

import torch
from torch import nn

from zskt.losses import at_least_f32, batch_statistics, bn_statistic_loss


class BNStatisticHook:
    """A forward hook on one BatchNorm2d: after each forward, `loss` is that forward's BN-statistic loss and
    `instance_mean` (with `keep_instance_mean`) the (B, C) spatial mean of the layer's input."""

    def __init__(self, module: nn.BatchNorm2d, momentum: float = 0.0, keep_instance_mean: bool = False):
        if module.running_mean is None or module.running_var is None:
            raise ValueError("BN-statistic matching needs BatchNorm2d layers that track running statistics")
        self.module = module
        self.momentum = float(momentum)
        self.keep_instance_mean = keep_instance_mean
        self.enabled = True
        self.compute_loss = True  # False: only the instance means (CMI's second, local-view forward)
        self.loss: torch.Tensor | None = None
        self.instance_mean: torch.Tensor | None = None
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # the last forward's (mean, var), detached
        self.average: tuple[torch.Tensor, torch.Tensor] | None = None  # Fast's momentum statistics
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.enabled:
            return
        x = inputs[0]
        if self.keep_instance_mean:
            self.instance_mean = at_least_f32(x).mean(dim=(2, 3))
        if not self.compute_loss:
            return
        mean, var = batch_statistics(x)
        self.last = (mean.detach(), var.detach())
        if self.average is not None and self.momentum:
            m = self.momentum
            mean = (1 - m) * mean + m * self.average[0]
            var = (1 - m) * var + m * self.average[1]
        running_mean = module.running_mean.to(mean.dtype)
        running_var = module.running_var.to(var.dtype)
        self.loss = bn_statistic_loss(mean, var, running_mean, running_var)

    def update_momentum(self) -> None:
        """Fold the last forward's batch statistics into the running average (Fast's `update_mmt`)."""
        if self.last is None:
            return
        if self.average is None:
            self.average = self.last
        else:
            m = self.momentum
            self.average = (m * self.average[0] + (1 - m) * self.last[0], m * self.average[1] + (1 - m) * self.last[1])

    def remove(self) -> None:
        self.handle.remove()


class BNStatistics:
    """One `BNStatisticHook` on every BatchNorm2d of `model`, in module order; checkpointable (the momentum
    statistics are state)."""

    def __init__(self, model: nn.Module, momentum: float = 0.0, keep_instance_mean: bool = False):
        self.hooks = [BNStatisticHook(m, momentum, keep_instance_mean)
                      for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.hooks:
            raise ValueError("the network has no BatchNorm2d layer to match statistics of (a folded frozen copy?)")

    def loss(self) -> torch.Tensor:
        """Σ over layers of the last forward's BN-statistic losses (no per-layer weights, as the zju-vipa code)."""
        return sum(h.loss for h in self.hooks)

    def features(self) -> torch.Tensor:
        """CMI's feature of each sample: the concatenated per-layer instance means of the last forward, (B, ΣC)."""
        return torch.cat([h.instance_mean for h in self.hooks], dim=1)

    def set_enabled(self, enabled: bool) -> None:
        for h in self.hooks:
            h.enabled = enabled

    def set_loss(self, enabled: bool) -> None:
        for h in self.hooks:
            h.compute_loss = enabled

    def update_momentum(self) -> None:
        for h in self.hooks:
            h.update_momentum()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

    def state_dict(self) -> dict:
        return {"average": [None if h.average is None else [t.clone() for t in h.average] for h in self.hooks]}

    def load_state_dict(self, state: dict) -> None:
        for h, avg in zip(self.hooks, state["average"], strict=True):
            h.average = None if avg is None else (avg[0], avg[1])
