"""Forward hooks on a frozen teacher's BatchNorm layers for the methods that match batch statistics (DFQ,
DeepInversion, CMI, Fast): each BN layer compares the mean and variance of its input on the pseudo batch with
its running statistics (`zskt.losses.bn_statistic_loss`). The teacher must keep its BN layers: build it with
`Scaffold.frozen_module(teacher, fold_bn=False)`, not as a folded copy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from zskt.errors import ZsktError
from zskt.losses import _wide, batch_statistics, bn_statistic_loss


class BNStatisticHook:
    """Hooks on every `nn.BatchNorm2d` of `model`. Inside `with hook.recording():` each forward pass of the
    model appends one term per BN layer; `hook.loss()` is their sum Σ_l (‖μ_l − μ_BN,l‖₂ + ‖σ²_l − σ²_BN,l‖₂),
    the DataFree code's `sum(h.r_feature for h in hooks)`. Outside `recording` the hooks return at once: the
    teacher's other forward passes (the student's targets) compute no statistics, which the reference's
    always-on hooks do for nothing.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.layers:
            raise ZsktError(
                f"the teacher ({type(model).__name__}) has no BatchNorm2d layers, so it has no "
                "batch statistics to match; use one with batch norms or set the BN weight to 0"
            )
        for layer in self.layers:
            if layer.running_mean is None or layer.running_var is None:
                raise ZsktError(
                    "a teacher BatchNorm2d layer keeps no running statistics "
                    "(track_running_stats=False); its statistics cannot be matched"
                )
        self.active = False
        self.terms: list[torch.Tensor] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.active:
            return
        # Batch mean and biased variance per channel, in float32 at least (bf16 activations under autocast).
        mean, var = batch_statistics(inputs[0])
        self.terms.append(bn_statistic_loss(mean, var, module.running_mean, module.running_var))

    @contextmanager
    def recording(self) -> Iterator[BNStatisticHook]:
        """Record the terms of the forward passes inside the block (earlier terms are dropped)."""
        self.terms, self.active = [], True
        try:
            yield self
        finally:
            self.active = False

    def loss(self) -> torch.Tensor:
        """Σ over the BN layers of the recorded forward pass(es); () tensor."""
        if not self.terms:
            raise RuntimeError("no BN statistics recorded: run the model's forward inside `recording()`")
        return torch.stack(self.terms).sum()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


# ------------------------------------------------------------------------------------- the inversion family
# DeepInversion, CMI and Fast need two things more than `BNStatisticHook` gives: Fast's `bn_mmt`, which blends
# the batch statistics with a running average of earlier synthesis batches' statistics before comparing
# (zju-vipa Fast-Datafree `datafree/hooks.py`, `DeepInversionHook(module, mmt_rate)`): the loss is
# ‖σ²_run − ((1−m)·σ²_batch + m·σ²_mmt)‖ + ‖μ_run − ((1−m)·μ_batch + m·μ_mmt)‖ once a previous batch exists,
# and `update_momentum()` (once per synthesised batch) folds the last forward's statistics into the average;
# and CMI's features, the per-sample spatial means of every BN layer's input (`InstanceMeanHook`).
# `BNStatistics` keeps the last forward's term per layer (no recording block), and is checkpointable (the
# momentum average is state).


class _LayerHook:
    """A forward hook on one BatchNorm2d (for `BNStatistics`): after each forward, `loss` is that forward's
    BN-statistic loss and `instance_mean` (with `keep_instance_mean`) the (B, C) spatial mean of the layer's
    input."""

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
            self.instance_mean = _wide(x).mean(dim=(2, 3))
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
            self.average = (
                m * self.average[0] + (1 - m) * self.last[0],
                m * self.average[1] + (1 - m) * self.last[1],
            )

    def remove(self) -> None:
        self.handle.remove()


class BNStatistics:
    """One `BNStatisticHook` on every BatchNorm2d of `model`, in module order; checkpointable (the momentum
    statistics are state)."""

    def __init__(self, model: nn.Module, momentum: float = 0.0, keep_instance_mean: bool = False):
        self.hooks = [
            _LayerHook(m, momentum, keep_instance_mean)
            for m in model.modules()
            if isinstance(m, nn.BatchNorm2d)
        ]
        if not self.hooks:
            raise ValueError(
                "the network has no BatchNorm2d layer to match statistics of (a folded frozen copy?)"
            )

    def loss(self) -> torch.Tensor:
        """Σ over layers of the last forward's BN-statistic losses (no per-layer weights, as the zju-vipa
        code)."""
        return sum(h.loss for h in self.hooks)

    def features(self) -> torch.Tensor:
        """CMI's feature of each sample: the concatenated per-layer instance means of the last forward, (B,
        ΣC)."""
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
        return {
            "average": [None if h.average is None else [t.clone() for t in h.average] for h in self.hooks]
        }

    def load_state_dict(self, state: dict) -> None:
        for h, avg in zip(self.hooks, state["average"], strict=True):
            h.average = None if avg is None else (avg[0], avg[1])
