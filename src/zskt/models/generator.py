"""The generator that produces pseudo images from noise (SPEC.md §2), with the authors' layer indices."""

from __future__ import annotations

import torch
from torch import nn

from zskt.errors import ZsktError


class Generator(nn.Module):
    """z (B, z_dim) -> pseudo images (B, out_channels, image_size, image_size), unbounded.

    One ``nn.Sequential`` named ``layers`` whose indices are the authors' (``models/generator.py`` since
    ``fab3b92``), so their ``generator_state_dict`` loads once the wrapper's ``generator.`` prefix is dropped:
    0 Linear(z_dim -> 128*s*s) with s = image_size // 4, 1 reshape, 2 BN, 3 upsample x2, 4 conv, 5 BN, 6 LeakyReLU,
    7 upsample x2, 8 conv, 9 BN, 10 LeakyReLU, 11 conv, 12 BN(out_channels). There is no tanh: the last BN
    standardises each channel over batch and space, which puts pseudo images at the scale of normalised data.

    ``final_bn_affine=False`` gives the final BN of the initial commit ``f9060a1`` (the rest of that commit's
    network, a 10x10 seed map upsampled x1.6, is not reproduced). The defaults are the authors' CIFAR-10/SVHN
    generator; ``image_size=16, out_channels=1`` is the embedded-digits variant (a 4x4 seed map).
    """

    def __init__(
        self, z_dim: int = 100, image_size: int = 32, out_channels: int = 3, final_bn_affine: bool = True
    ):
        super().__init__()
        if image_size < 4 or image_size % 4 != 0:
            raise ZsktError(
                f"generator image_size {image_size} is invalid; expected a multiple of 4 (e.g. 32 or 16)"
            )
        for label, value in (("z_dim", z_dim), ("out_channels", out_channels)):
            if int(value) != value or value < 1:
                raise ZsktError(f"generator {label} {value!r} is invalid; expected a positive integer")
        self.z_dim, self.image_size, self.out_channels = int(z_dim), int(image_size), int(out_channels)
        self.final_bn_affine = bool(final_bn_affine)
        s = self.image_size // 4  # the seed map is upsampled twice by 2: 8x8 -> 32x32 at the paper's size

        # PyTorch's default init everywhere, as in the authors' code (no custom init). Their PyTorch 1.0 drew
        # BN scales from U(0,1); PyTorch >= 1.2 starts them at 1 (pytorch PR #12325, issue #12259), so the four
        # affine BNs here start at 1, not at what the authors' runs started from.
        self.layers = nn.Sequential(
            nn.Linear(self.z_dim, 128 * s * s),  # 0
            nn.Unflatten(1, (128, s, s)),  # 1: the authors' View((-1, 128, 8, 8)); no parameters
            nn.BatchNorm2d(128),  # 2: no activation follows, as in the authors' code
            nn.Upsample(scale_factor=2),  # 3: nearest
            nn.Conv2d(128, 128, 3, stride=1, padding=1),  # 4
            nn.BatchNorm2d(128),  # 5
            nn.LeakyReLU(0.2, inplace=True),  # 6
            nn.Upsample(scale_factor=2),  # 7
            nn.Conv2d(128, 64, 3, stride=1, padding=1),  # 8
            nn.BatchNorm2d(64),  # 9
            nn.LeakyReLU(0.2, inplace=True),  # 10
            nn.Conv2d(64, self.out_channels, 3, stride=1, padding=1),  # 11
            nn.BatchNorm2d(self.out_channels, affine=self.final_bn_affine),  # 12: the output
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)

    def sample_z(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """z ~ N(0, I) of shape (batch_size, z_dim), on this module's device unless ``device`` says otherwise."""
        if device is None:
            device = self.layers[0].weight.device
        return torch.randn(batch_size, self.z_dim, generator=generator, device=device)

    def arch(self) -> dict:
        """Everything needed to rebuild this generator; the project's checkpoints record it."""
        return {
            "family": "generator",
            "z_dim": self.z_dim,
            "image_size": self.image_size,
            "out_channels": self.out_channels,
            "final_bn_affine": self.final_bn_affine,
        }

    def extra_repr(self) -> str:
        return (
            f"z_dim={self.z_dim}, image_size={self.image_size}, out_channels={self.out_channels}, "
            f"final_bn_affine={self.final_bn_affine}"
        )
