"""The generator that produces pseudo images from noise (SPEC.md §2), with the authors' layer indices."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zskt.errors import ZsktError


def upsample_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """The 4x4 transposed-convolution kernel equal to "nearest upsample x2, then this 3x3 convolution (padding
    1)".

    With u the upsampled map, output row 2m reads u rows 2m-1, 2m, 2m+1 = input rows m-1, m, m, and row 2m+1
    reads input rows m, m, m+1; so taps that land on the same input pixel add up. In one dimension, with
    kernel taps w0 w1 w2 (offsets -1 0 +1), `conv_transpose(stride 2, padding 1)` needs the taps
    [w2, w1 + w2, w0 + w1, w0]; both dimensions take the same map. Returns (in, out, 4, 4), the layout
    `F.conv_transpose2d` expects. Built from additions only, so autocast leaves it in the weight's dtype.
    """
    rows = torch.stack(
        [
            weight[..., 2, :],
            weight[..., 1, :] + weight[..., 2, :],
            weight[..., 0, :] + weight[..., 1, :],
            weight[..., 0, :],
        ],
        dim=-2,
    )
    both = torch.stack(
        [rows[..., 2], rows[..., 1] + rows[..., 2], rows[..., 0] + rows[..., 1], rows[..., 0]], dim=-1
    )
    return both.transpose(0, 1)


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(F.interpolate(x, scale_factor=2, mode="nearest"))` for a 3x3, stride 1, padding 1 `conv`,
    computed as one stride-2 transposed convolution on x: 16/36 of the multiply-adds (each output pixel sums 4
    input pixels, not 9 upsampled ones) and no upsampled tensor in memory. Equal up to float rounding (the
    summed taps); gradients reach `conv.weight` and `conv.bias` through `upsample_conv_weight`.
    """
    weight = upsample_conv_weight(conv.weight)
    if conv.weight.is_contiguous(memory_format=torch.channels_last):
        # The weight's layout picks the output's (as for the literal conv): a channels_last module stays
        # channels_last here, whatever the (small, NCHW) seed map's layout; mixing layouts later costs copies.
        weight = weight.contiguous(memory_format=torch.channels_last)
    return F.conv_transpose2d(x, weight, conv.bias, stride=2, padding=1)


class Generator(nn.Module):
    """z (B, z_dim) -> pseudo images (B, out_channels, image_size, image_size), unbounded.

    One ``nn.Sequential`` named ``layers`` whose indices are the authors' (``models/generator.py`` since
    ``fab3b92``), so their ``generator_state_dict`` loads once the wrapper's ``generator.`` prefix is dropped:
    0 Linear(z_dim -> 128*s*s) with s = image_size // 4, 1 reshape, 2 BN, 3 upsample x2, 4 conv, 5 BN, 6
    LeakyReLU, 7 upsample x2, 8 conv, 9 BN, 10 LeakyReLU, 11 conv, 12 BN(out_channels). There is no tanh: the
    last BN standardises each channel over batch and space, which puts pseudo images at the scale of
    normalised data.

    The forward pass runs each "upsample x2, conv" pair (3-4 and 7-8) as one transposed convolution
    (`upsample_conv`): the same function to float rounding at 16/36 of the multiply-adds, with the same
    parameters and state_dict. ``fuse_upsample=False`` (or setting the attribute) runs the layers literally,
    as the authors' code does; the benchmarks' authors' loop and the equivalence tests use it
    (docs/decisions.md).

    ``final_bn_affine=False`` gives the final BN of the initial commit ``f9060a1`` (the rest of that commit's
    network, a 10x10 seed map upsampled x1.6, is not reproduced). The defaults are the authors' CIFAR-10/SVHN
    generator; ``image_size=16, out_channels=1`` is the embedded-digits variant (a 4x4 seed map).
    """

    def __init__(
        self,
        z_dim: int = 100,
        image_size: int = 32,
        out_channels: int = 3,
        final_bn_affine: bool = True,
        fuse_upsample: bool = True,
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
        self.fuse_upsample = bool(
            fuse_upsample
        )  # how forward computes, not what: not part of arch() or state
        s = self.image_size // 4  # the seed map is upsampled twice by 2: 8x8 -> 32x32 at the paper's size

        # PyTorch's default init everywhere, as in the authors' code (no custom init). Their PyTorch 1.0 drew
        # BN scales from U(0,1); PyTorch >= 1.2 starts them at 1 (pytorch PR #12325, issue #12259), so the
        # four affine BNs here start at 1, not at what the authors' runs started from.
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
        if not self.fuse_upsample:
            return self.layers(z)
        layer = self.layers
        x = layer[2](layer[1](layer[0](z)))
        x = layer[6](layer[5](upsample_conv(x, layer[4])))
        x = layer[10](layer[9](upsample_conv(x, layer[8])))
        return layer[12](layer[11](x))

    def sample_z(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """z ~ N(0, I) of shape (batch_size, z_dim), on this module's device unless ``device`` says
        otherwise."""
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
