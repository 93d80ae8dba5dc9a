"""The CIFAR ResNets of the data-free distillation benchmark (ResNet-18 and ResNet-34 for 32x32 images).

The layout is the one the zju-vipa DataFree / CMI / Fast-Datafree code uses for its teachers and students
(there `datafree/models/classifiers/resnet.py`, itself from the DAFL code): a 3x3 stem convolution with 64
filters and no max-pool, four stages of post-activation BasicBlocks with 64/128/256/512 filters and strides
1/2/2/2, a global average pool and a final `linear` layer. Module names and registration order are theirs, so
the state_dict keys are equal and their published teachers load strictly:

    conv1, bn1, layer{1..4}.{i}.{conv1, bn1, conv2, bn2, shortcut.0, shortcut.1}, linear

(`shortcut.0`/`shortcut.1`, a 1x1 convolution and its batch norm, exist only in blocks that change the shape.)
The forward returns the logits only, as theirs; feature maps come from forward hooks (`zskt.models.features`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zskt.errors import ZsktError

# Blocks per stage of the two registered depths (He et al. 2016, Table 1; the reference code's resnet18/34).
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """Post-activation residual block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    `shortcut` is an empty nn.Sequential (the identity, no state_dict keys) unless the stride or the width
    changes; then it is Sequential(1x1 conv, BN), keys `shortcut.0` and `shortcut.1`.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        # Registration order (= state_dict order): conv1, bn1, conv2, bn2, shortcut.
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out of place (the reference adds in place): a forward hook on bn2 then sees bn2's own output.
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR ResNet with BasicBlocks; `blocks` gives the number of blocks in each of the four stages.

    ``logits = model(x)`` for a (B, C, H, W) input; the stages' outputs have 64/128/256/512 channels at H,
    H/2, H/4, H/8 (32, 16, 8, 4 at 32x32). Any H >= 8 divisible by 8 works (the pool is global).
    ``in_channels`` changes only ``conv1`` (1 for grey images).
    """

    default_feature_layers = ("layer2", "layer3", "layer4")

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ZsktError(
                f"ResNet blocks {blocks!r} are invalid; expected four positive counts, e.g. (2, 2, 2, 2)"
            )
        for label, value in {"num_classes": num_classes, "in_channels": in_channels}.items():
            if int(value) != value or value < 1:
                raise ZsktError(f"ResNet {label} {value!r} is invalid; expected a positive integer")
        self.blocks, self.num_classes, self.in_channels = blocks, int(num_classes), int(in_channels)
        self.conv1 = nn.Conv2d(self.in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for index, (planes, n, stride) in enumerate(
            zip((64, 128, 256, 512), blocks, (1, 2, 2, 2), strict=True), start=1
        ):
            layers = []
            for s in [stride] + [1] * (n - 1):  # only a stage's first block changes stride and width
                layers.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.linear = nn.Linear(512, self.num_classes)
        # Initialisation: PyTorch's defaults, as the reference code (it sets none of its own).

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # flatten, not .view: channels_last outputs are not contiguous in NCHW order.
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def arch(self) -> dict:
        """Everything needed to rebuild this network; the project's checkpoints record it."""
        depth = next((d for d, b in RESNET_BLOCKS.items() if b == self.blocks), None)
        return {
            "family": "resnet",
            "name": f"resnet-{depth}" if depth is not None else None,
            "blocks": list(self.blocks),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
        }

    def extra_repr(self) -> str:
        return f"blocks={self.blocks}, num_classes={self.num_classes}, in_channels={self.in_channels}"


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(RESNET_BLOCKS[18], num_classes, in_channels)


def resnet34(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(RESNET_BLOCKS[34], num_classes, in_channels)
