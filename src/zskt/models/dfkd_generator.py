"""The generator of the zju-vipa DataFree benchmark code (CMI's `LargeGenerator`), which its DAFL, DFAD, DFQ
and ZSKT runs share, with the data set's normalisation as its last step (their `Normalizer`)."""

from __future__ import annotations

import torch
from torch import nn

from zskt.errors import ZsktError
from zskt.models.generator import upsample_conv


class DataFreeGenerator(nn.Module):
    """z (B, z_dim) -> normalised pseudo images (B, out_channels, image_size, image_size).

    The DataFree code's `LargeGenerator(nz, ngf=64, img_size=32, nc=3)` (CMI `datafree/models/generator.py`,
    used by `datafree_kd.py` for zskt/dfad/dfq/dafl since commit acbbea6), layer for layer:
    Linear(z_dim → 4·ngf·s²), s = image_size/4; BN(4·ngf); upsample ×2; conv 3×3 4·ngf → 2·ngf (no bias);
    BN; LeakyReLU 0.2; upsample ×2; conv 3×3 2·ngf → ngf (no bias); BN; LeakyReLU 0.2; conv 3×3 ngf → C
    (bias); sigmoid. The sigmoid's [0, 1] image is then normalised with the data set's mean and std (their
    synthesizer calls `normalizer(generator(z))`), so the output is at the scale of the networks' normalised
    inputs.

    As `zskt.models.Generator`, each "upsample ×2, conv 3×3" pair runs as one stride-2 transposed convolution
    (the same function to float rounding at 16/36 of the multiply-adds); `fuse_upsample=False` runs the
    literal layers.
    """

    def __init__(
        self,
        z_dim: int = 256,
        image_size: int = 32,
        out_channels: int = 3,
        ngf: int = 64,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        fuse_upsample: bool = True,
    ):
        super().__init__()
        if image_size < 4 or image_size % 4 != 0:
            raise ZsktError(
                f"generator image_size {image_size} is invalid; expected a multiple of 4 (32, 16)"
            )
        for label, value in (("z_dim", z_dim), ("out_channels", out_channels), ("ngf", ngf)):
            if int(value) != value or value < 1:
                raise ZsktError(f"generator {label} {value!r} is invalid; expected a positive integer")
        self.z_dim, self.image_size = int(z_dim), int(image_size)
        self.out_channels, self.ngf = int(out_channels), int(ngf)
        self.fuse_upsample = bool(fuse_upsample)
        s = self.image_size // 4
        # Module names and indices are theirs (`l1.0`, `conv_blocks.N`), so their generator state_dict loads.
        self.l1 = nn.Sequential(nn.Linear(self.z_dim, 4 * ngf * s * s))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(4 * ngf),  # 0
            nn.Upsample(scale_factor=2),  # 1: nearest
            nn.Conv2d(4 * ngf, 2 * ngf, 3, stride=1, padding=1, bias=False),  # 2
            nn.BatchNorm2d(2 * ngf),  # 3
            nn.LeakyReLU(0.2, inplace=True),  # 4
            nn.Upsample(scale_factor=2),  # 5
            nn.Conv2d(2 * ngf, ngf, 3, stride=1, padding=1, bias=False),  # 6
            nn.BatchNorm2d(ngf),  # 7
            nn.LeakyReLU(0.2, inplace=True),  # 8
            nn.Conv2d(ngf, self.out_channels, 3, stride=1, padding=1),  # 9
            nn.Sigmoid(),  # 10
        )
        mean = (0.0,) * self.out_channels if mean is None else tuple(float(m) for m in mean)
        std = (1.0,) * self.out_channels if std is None else tuple(float(v) for v in std)
        if len(mean) != self.out_channels or len(std) != self.out_channels or min(std) <= 0:
            raise ZsktError(
                f"generator normalisation needs {self.out_channels} means and positive stds, got "
                f"{mean} and {std}"
            )
        # Buffers, not parameters: part of the state (a saved generator makes the same images) but not
        # trained.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.image_size // 4
        block = self.conv_blocks
        x = block[0](self.l1(z).view(len(z), -1, s, s))
        if self.fuse_upsample:
            x = block[4](block[3](upsample_conv(x, block[2])))
            x = block[8](block[7](upsample_conv(x, block[6])))
        else:
            x = block[4](block[3](block[2](block[1](x))))
            x = block[8](block[7](block[6](block[5](x))))
        images = block[10](block[9](x))
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def sample_z(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """z ~ N(0, I), (batch_size, z_dim), on this module's device unless `device` says otherwise."""
        device = self.l1[0].weight.device if device is None else device
        return torch.randn(batch_size, self.z_dim, generator=generator, device=device)

    def arch(self) -> dict:
        return {
            "family": "datafree-generator",
            "z_dim": self.z_dim,
            "image_size": self.image_size,
            "out_channels": self.out_channels,
            "ngf": self.ngf,
        }

    def extra_repr(self) -> str:
        return (
            f"z_dim={self.z_dim}, image_size={self.image_size}, out_channels={self.out_channels}, "
            f"ngf={self.ngf}"
        )
