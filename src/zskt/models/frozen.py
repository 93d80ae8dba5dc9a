"""A frozen Wide ResNet's batch norms as the affine maps they are, for the networks zskt only evaluates.

A teacher in zero-shot and KD+AT, and both networks in belief matching, run in eval mode with fixed weights:
each of their BatchNorm2d layers then computes y = x·scale + shift per channel. `frozen_copy` returns a copy
that computes the same function with less memory traffic:

- each block's `bn2`, which directly follows `conv1`, is folded into `conv1` (weights scaled per output
  channel, the shift as the convolution's bias): one pass over the activations fewer, forward and backward;
- the other batch norms (`bn1` of each block, after the residual sum, and the final `bn1`) become
  `FrozenAffine`, one fused multiply-add.

The outputs and the three activations attention transfer compares are the same up to float rounding (tests:
1e-5 relative; float64 networks fold in float64). It saves time mostly in float32 on the CPU, where the
eval-mode BatchNorm of channels_last tensors is a slow kernel (docs/benchmarks.md). The copy is for computing
only: checkpoints are written from the original network.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from zskt.models.wresnet import BasicBlock


class FrozenAffine(nn.Module):
    """An eval-mode BatchNorm2d with fixed statistics as the per-channel affine map it computes."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        scale, shift = _scale_shift(bn)
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In the input's dtype: under bf16 autocast the activations stay bf16, as BatchNorm2d keeps them.
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype))


def _scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm2d without running statistics has no fixed affine map")
    weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    # float32 at least, in the statistics' dtype when wider: a float64 network folds in float64.
    dtype = torch.promote_types(bn.running_var.dtype, torch.float32)
    scale = (weight.to(dtype) / torch.sqrt(bn.running_var.to(dtype) + bn.eps)).detach()
    return scale.clone(), (bias.to(dtype) - bn.running_mean.to(dtype) * scale).detach().clone()


@torch.no_grad()
def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` for evaluation only (eval mode, no parameter gradients) with its batch norms folded
    into the convolution before them (Wide ResNet blocks' conv1 → bn2) or else turned into `FrozenAffine`;
    `model` itself is left as it is. Any network works; only the Wide ResNet's blocks are folded."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    for block in frozen.modules():
        if isinstance(block, BasicBlock) and isinstance(block.bn2, nn.BatchNorm2d):
            scale, shift = _scale_shift(block.bn2)
            conv = block.conv1
            conv.weight.mul_(scale.to(conv.weight.dtype).view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(shift.to(conv.weight), requires_grad=False)
            block.bn2 = nn.Identity()
    for parent in list(frozen.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, FrozenAffine(child))
    return frozen  # deepcopy keeps the device and the memory format (channels_last) of every weight
