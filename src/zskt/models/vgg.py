"""VGG-11 with batch norm for 32x32 images, as the data-free distillation benchmark's VGG-11 teacher.

The layout is the zju-vipa DataFree code's `datafree/models/classifiers/vgg.py` (there `vgg11_bn`, itself from
the RepDistiller code): five blocks `block0`..`block4` of 3x3 convolutions (with bias) each followed by a
batch norm, with 64 / 128 / 256,256 / 512,512 / 512,512 filters; a ReLU between the layers of a block and one
applied by the forward after each block (a block ends with its batch norm, so a hook on a block sees the
values before that ReLU); 2x2 max-pools after blocks 0, 1 and 2 (and after block 3 only for 64x64 inputs, as
theirs), then a global average pool and one `classifier` Linear(512, classes). Module names and order are
theirs, so the state_dict keys are equal (`block0.0` conv, `block0.1` BN; `block2.0`, `.1`, `.3`, `.4`; ...;
`classifier`) and their published teachers load strictly. The forward returns the logits only, as theirs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zskt.errors import ZsktError

# Filters per block; configuration "A" of Simonyan & Zisserman (VGG-11), grouped by pooling stage.
VGG_BLOCKS = {11: ((64,), (128,), (256, 256), (512, 512), (512, 512))}


def _block(widths: tuple[int, ...], in_channels: int) -> nn.Sequential:
    """conv, BN, ReLU, conv, BN, ...: the reference's `_make_layers` with its last ReLU dropped."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG with batch norm: ``logits = model(x)``.

    For a (B, C, 32, 32) input the blocks run at 32, 16, 8, 4 and 4 pixels (block3 and block4 share the last
    size: the reference pools after block3 only when the input is 64 pixels high). Any H >= 8 divisible by 8
    works. ``in_channels`` changes only the first convolution.
    """

    # block1, block2, block4: 16, 8, 4 pixels at 32x32, the sizes of a ResNet's layer2..layer4, so a VGG
    # teacher's attention maps match a ResNet student's (the benchmark's VGG-11 -> ResNet-18 pair).
    default_feature_layers = ("block1", "block2", "block4")

    def __init__(
        self,
        blocks: tuple[tuple[int, ...], ...] = VGG_BLOCKS[11],
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        blocks = tuple(tuple(int(w) for w in b) for b in blocks)
        if len(blocks) != 5 or not all(blocks):
            raise ZsktError(f"VGG blocks {blocks!r} are invalid; expected five non-empty tuples of widths")
        for label, value in {"num_classes": num_classes, "in_channels": in_channels}.items():
            if int(value) != value or value < 1:
                raise ZsktError(f"VGG {label} {value!r} is invalid; expected a positive integer")
        self.blocks, self.num_classes, self.in_channels = blocks, int(num_classes), int(in_channels)
        previous = self.in_channels
        for index, widths in enumerate(blocks):
            setattr(self, f"block{index}", _block(widths, previous))
            previous = widths[-1]
        # Registered after the blocks, as the reference (parameter-free: no state_dict keys).
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(previous, self.num_classes)
        # The reference's init: He normal (fan-out) convolutions with zero bias, BN 1/0, Linear N(0, 0.01)/0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if height == 64:  # the reference's rule (its 64x64 Tiny-ImageNet setting)
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        return self.classifier(self.pool4(x).flatten(1))

    def arch(self) -> dict:
        """Everything needed to rebuild this network; the project's checkpoints record it."""
        depth = next((d for d, b in VGG_BLOCKS.items() if b == self.blocks), None)
        return {
            "family": "vgg",
            "name": f"vgg-{depth}" if depth is not None else None,
            "blocks": [list(b) for b in self.blocks],
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
        }

    def extra_repr(self) -> str:
        return f"blocks={self.blocks}, num_classes={self.num_classes}, in_channels={self.in_channels}"


def vgg11(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(VGG_BLOCKS[11], num_classes, in_channels)
