"""The generator of the zju-vipa data-free code (CMI and Fast-Datafree `datafree/models/generator.py`,
`Generator(nz, ngf, img_size, nc)`): images in [0, 1] (a final sigmoid), normalised afterwards like data.

    l1: Linear(nz -> 2·ngf·s·s), s = img_size // 4, reshaped to (2·ngf, s, s)
    conv_blocks: BN(2ngf), up x2, conv3x3(2ngf -> 2ngf, no bias), BN, LeakyReLU(0.2),
                 up x2, conv3x3(2ngf -> ngf, no bias), BN, LeakyReLU(0.2), conv3x3(ngf -> nc), Sigmoid

The module names (`l1.0`, `conv_blocks.N`) are the reference's, so its state_dicts load. CMI re-initialises it
before every synthesised batch (`reset_cmi_generator`); Fast meta-learns its initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from zskt.models.generator import upsample_conv


class CMIGenerator(nn.Module):
    def __init__(
        self, nz: int = 256, ngf: int = 64, img_size: int = 32, nc: int = 3, fuse_upsample: bool = True
    ):
        super().__init__()
        self.fuse_upsample = fuse_upsample  # how forward computes, not what (see forward)
        if img_size % 4:
            raise ValueError(f"img_size must be a multiple of 4, got {img_size}")
        self.nz, self.ngf, self.img_size, self.nc = nz, ngf, img_size, nc
        self.init_size = img_size // 4
        self.l1 = nn.Sequential(nn.Linear(nz, ngf * 2 * self.init_size**2))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(ngf * 2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ngf * 2, ngf * 2, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ngf * 2, ngf, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, nc, 3, stride=1, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Each "upsample x2, conv 3x3" pair runs as one stride-2 transposed convolution (`upsample_conv`, as
        zskt's zero-shot generator): the same function to float rounding at 16/36 of the multiply-adds;
        `fuse_upsample=False` runs the layers literally."""
        x = self.l1(z).view(z.shape[0], -1, self.init_size, self.init_size)
        b = self.conv_blocks
        if not self.fuse_upsample:
            return b(x)
        x = b[4](b[3](upsample_conv(b[0](x), b[2])))
        x = b[8](b[7](upsample_conv(x, b[6])))
        return b[10](b[9](x))

    def clone(self) -> CMIGenerator:
        """An independent copy (weights, buffers, device, mode): Fast's per-batch fast generator."""
        return copy.deepcopy(self)

    def arch(self) -> dict:
        return {"nz": self.nz, "ngf": self.ngf, "img_size": self.img_size, "nc": self.nc}


@torch.no_grad()
def reset_cmi_generator(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """CMI's `reset_model`: every Linear/Conv weight ~ N(0, 0.02) with zero bias, every BN scale ~ N(1, 0.02)
    with zero shift (running statistics are left as they are; the generator always runs in train mode)."""
    for m in model.modules():
        if isinstance(m, (nn.ConvTranspose2d, nn.Linear, nn.Conv2d)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype) * 0.02)
            if m.bias is not None:
                m.bias.zero_()
        if isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(1 + torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype) * 0.02)
            m.bias.zero_()


@torch.no_grad()
def reset_first_layers(model: CMIGenerator, generator: torch.Generator | None = None) -> None:
    """Fast's `reset_l0` (the fixed form `n == "l1.0" or n == "conv_blocks.0"`): the Linear and the first BN
    get weights ~ N(0, 0.02) and zero bias."""
    for m in (model.l1[0], model.conv_blocks[0]):
        m.weight.copy_(torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype) * 0.02)
        m.bias.zero_()
