"""The Wide ResNet used as teacher and student (SPEC.md §1).

Module names, registration order and init follow the authors' `models/wresnet.py` (ZSKT and FSKT, itself
adapted from xternalz/WideResNet-pytorch), so the state_dict keys are theirs and their checkpoints load
strictly.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from zskt.errors import ZsktError

Activations = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # outputs of block1, block2, block3

_NAME = re.compile(r"^\s*wrn-(\d+)-(\d+)\s*$", re.IGNORECASE)


def parse_wrn_name(name: str) -> tuple[int, int]:
    """`"wrn-40-2"` (any case, so also the authors' `"WRN-40-2"`) -> `(40, 2)`, registered or not."""
    match = _NAME.match(str(name))
    if match is None:
        raise ZsktError(f"model name {name!r} is not of the form wrn-DEPTH-WIDEN (e.g. wrn-40-2)")
    return int(match.group(1)), int(match.group(2))


def check_wrn_size(depth: int, widen_factor: int) -> None:
    """A one-line ZsktError unless `depth` is 6n+4 (n >= 1) and `widen_factor` a positive integer: what a
    `wrn-D-W` name must satisfy, checked without building the network."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ZsktError(
            f"Wide ResNet depth {depth} is invalid; expected 6n+4 with n >= 1 (16, 22, 28, 40, ...)"
        )
    if int(widen_factor) != widen_factor or widen_factor < 1:
        raise ZsktError(f"Wide ResNet widen_factor {widen_factor!r} is invalid; expected a positive integer")


class BasicBlock(nn.Module):
    """Pre-activation residual block with the authors' names (`bn1`, `conv1`, `bn2`, `conv2`, `convShortcut`).

    Two forward paths, as in the authors' code. When the width is unchanged the skip carries the raw input.
    When it changes, the input is replaced by relu(bn1(x)) and both the residual branch and the 1x1 shortcut
    read that pre-activated tensor; a block that pre-activated only the residual branch would compute a
    different function from the same weights.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        # Registration order is the state_dict order: bn1, conv1, bn2, conv2, convShortcut.
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        # The authors create the shortcut only when the width changes (and then always, even at stride 1);
        # a width-preserving block never changes stride in a WRN, so the identity skip is always valid.
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        skip = x if self.convShortcut is None else self.convShortcut(pre)
        return skip + out


class NetworkBlock(nn.Module):
    """One group of BasicBlocks as `layer` (an nn.Sequential), which gives the keys `blockN.layer.i.*`."""

    def __init__(self, n_blocks: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        # Only the first block changes width and stride; the rest keep the group's output width at stride 1.
        blocks = [BasicBlock(in_planes, out_planes, stride, drop_rate)]
        blocks += [BasicBlock(out_planes, out_planes, 1, drop_rate) for _ in range(n_blocks - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k of Zagoruyko & Komodakis, as the authors of the paper define it.

    Project convention: ``logits, acts = model(x)``, where ``acts = (act1, act2, act3)`` are the raw outputs
    of ``block1``..``block3`` (residual sums before the final ``bn1``/ReLU), the maps attention transfer
    compares. The authors' forward returns the flat 4-tuple ``(logits, act1, act2, act3)`` instead (unpacked
    there as ``logits, *acts = model(x)``); the values are identical, only the nesting differs.

    Shapes for a (B, C, H, W) input with widths [16, 16k, 32k, 64k]: act1 (B, 16k, H, W), act2 (B, 32k, H/2,
    W/2), act3 (B, 64k, H/4, W/4), logits (B, num_classes). H and W should be divisible by 4 (32x32 for
    CIFAR/SVHN, 16x16 for the embedded digits). ``in_channels`` changes only ``conv1`` (1 for grey images, 3
    for colour).
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        check_wrn_size(depth, widen_factor)
        sizes = {"num_classes": num_classes, "in_channels": in_channels}
        for label, value in sizes.items():
            if int(value) != value or value < 1:
                raise ZsktError(f"Wide ResNet {label} {value!r} is invalid; expected a positive integer")
        if not 0.0 <= drop_rate < 1.0:
            raise ZsktError(f"Wide ResNet drop_rate {drop_rate!r} is invalid; expected 0 <= drop_rate < 1")
        self.depth, self.widen_factor = int(depth), int(widen_factor)
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.drop_rate = float(drop_rate)
        n = (self.depth - 4) // 6  # BasicBlocks per group: 2 for depth 16, 6 for depth 40
        widths = [16, 16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor]

        self.conv1 = nn.Conv2d(self.in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, self.drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, self.drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, self.drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], self.num_classes)

        # The authors' init: He normal in fan-out mode for every conv, BN scale 1 and shift 0 (set explicitly,
        # so the PyTorch 1.0 U(0,1) BN default never applied here), Linear bias 0 with PyTorch's default
        # weight.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Activations]:
        act1 = self.block1(self.conv1(x))
        act2 = self.block2(act1)
        act3 = self.block3(act2)
        out = F.relu(self.bn1(act3))
        # The authors use F.avg_pool2d(out, 8), which at 32x32 inputs covers the whole 8x8 map: the same
        # numbers as a global average, which also serves other image sizes (a 4x4 map at 16x16). flatten, not
        # .view, because channels_last outputs are not contiguous in NCHW order.
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, 64k, h, w) -> (B, 64k)
        return self.fc(out), (act1, act2, act3)

    def arch(self) -> dict:
        """Everything needed to rebuild this network; the project's checkpoints record it."""
        return {
            "family": "wrn",
            "name": f"wrn-{self.depth}-{self.widen_factor}",  # every wrn-D-W builds by name
            "depth": self.depth,
            "widen_factor": self.widen_factor,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "drop_rate": self.drop_rate,
        }

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, widen_factor={self.widen_factor}, num_classes={self.num_classes}, "
            f"in_channels={self.in_channels}"
        )
