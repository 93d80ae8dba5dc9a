"""A frozen network's batch norms as the affine maps they are, for the networks zskt only evaluates.

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

from zskt.errors import ZsktError
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


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """An eval-mode BatchNorm2d that stays one (its running statistics, parameters and forward hooks are where
    the statistic-matching methods look for them) but computes its affine map as `FrozenAffine` does: one
    fused multiply-add forward and one multiply backward, where the eval-mode batch-norm kernel is slower on
    the CPU (docs/benchmarks.md). For networks whose statistics and parameters no longer change."""

    @classmethod
    def of(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        like = {"device": bn.running_var.device, "dtype": bn.running_var.dtype}  # float64 stays float64
        frozen = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **like)
        frozen.load_state_dict(bn.state_dict())
        frozen.eval().requires_grad_(False)
        scale, shift = _scale_shift(frozen)
        frozen.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        frozen.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The network's batch-norm layers (BatchNorm1d/2d/3d, SyncBatchNorm) with their dotted names, in module
    order: where the inversion methods hook their statistic-matching loss. A copy from `frozen_copy` with
    fold_bn=True has none left; use fold_bn=False for such a teacher."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv ← bn ∘ conv: weights scaled per output channel, the shift (plus the scaled bias) as the bias."""
    scale, shift = _scale_shift(bn)
    scale, shift = scale.to(conv.weight), shift.to(conv.weight)
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(shift, requires_grad=False)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
    )


@torch.no_grad()
def frozen_copy(model: nn.Module, *, fold_bn: bool = True) -> nn.Module:
    """A copy of `model` for evaluation only (eval mode, no parameter gradients); `model` is left as it is.

    With fold_bn (the default) each batch norm is folded into the convolution before it where that
    convolution's output is exactly its input (a Wide ResNet block's conv1 → bn2, a CIFAR ResNet block's conv1
    → bn1 and conv2 → bn2 and its stem's conv1 → bn1, and any Conv2d → BatchNorm2d pair of consecutive entries
    of an nn.Sequential, so VGG's blocks and the ResNets' shortcuts) and else turned into `FrozenAffine`: the
    same function with less memory traffic. A forward hook on a folded convolution then sees the batch-normed
    values.
    With fold_bn=False the batch norms stay BatchNorm modules (in eval mode, so their running statistics are
    used and not updated), for methods that hook them (`batchnorm_layers`); plain BatchNorm2d layers become
    `FrozenBatchNorm2d`, the same module computing the same function faster (subclasses, such as timm's
    BatchNormAct2d, are kept as they are)."""
    from zskt.models.resnet import BasicBlock as ResNetBlock
    from zskt.models.resnet import ResNet

    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    if not fold_bn:
        for parent in list(frozen.modules()):
            for name, child in list(parent.named_children()):
                if (
                    type(child) is nn.BatchNorm2d
                    and child.track_running_stats
                    and child.running_var is not None
                ):
                    setattr(parent, name, FrozenBatchNorm2d.of(child))
        return frozen
    for block in frozen.modules():
        if isinstance(block, BasicBlock) and _foldable(block.conv1, block.bn2):
            _fold_into(block.conv1, block.bn2)
            block.bn2 = nn.Identity()
        if isinstance(block, (ResNetBlock, ResNet)):  # a block's two pairs; the network's stem pair
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
                if hasattr(block, conv) and _foldable(getattr(block, conv), getattr(block, bn)):
                    _fold_into(getattr(block, conv), getattr(block, bn))
                    setattr(block, bn, nn.Identity())
        if isinstance(block, nn.Sequential):
            for i in range(len(block) - 1):
                if _foldable(block[i], block[i + 1]):
                    _fold_into(block[i], block[i + 1])
                    block[i + 1] = nn.Identity()
    for parent in list(frozen.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, FrozenAffine(child))
    return frozen  # deepcopy keeps the device and the memory format (channels_last) of every weight


class CompiledInference(nn.Module):
    """A frozen network whose no-grad forwards run through `torch.compile` with inductor's weight freezing
    (the weights become constants: convolutions prepacked, the affine maps, ReLUs and residual sums fused
    around them); forwards that record a graph run the network as it is. The same function up to float
    rounding; each new batch shape compiles once (seconds), so it pays on long runs only
    (docs/benchmarks.md). Needs a C++ compiler on the CPU."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.__dict__["compiled"] = torch.compile(model, dynamic=False)  # not a second submodule

    def forward(self, x: torch.Tensor):
        if torch.is_grad_enabled():
            return self.model(x)
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            if self.__dict__.get("working"):
                return self.compiled(x)
            try:  # the first call compiles: no C++ compiler, an unsupported layer, ... fail here
                out = self.compiled(x)
            except Exception as error:
                first = (str(error).strip().splitlines() or [""])[0][:200]
                raise ZsktError(
                    "--compile-teacher: torch.compile could not compile the teacher "
                    f"({type(error).__name__}: {first}); run without --compile-teacher"
                ) from error
            self.__dict__["working"] = True
            return out
