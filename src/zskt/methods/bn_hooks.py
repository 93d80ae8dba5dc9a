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
from zskt.losses import bn_statistic_loss


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
            raise ZsktError(f"the teacher ({type(model).__name__}) has no BatchNorm2d layers, so it has no "
                            "batch statistics to match; use one with batch norms or set the BN weight to 0")
        for layer in self.layers:
            if layer.running_mean is None or layer.running_var is None:
                raise ZsktError("a teacher BatchNorm2d layer keeps no running statistics "
                                "(track_running_stats=False); its statistics cannot be matched")
        self.active = False
        self.terms: list[torch.Tensor] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.active:
            return
        x = inputs[0]
        # Batch mean and biased variance per channel, in float32 at least (bf16 activations under autocast).
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
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
