"""NAYER's generator (Tran et al., CVPR 2024; reference tmtuan1307/NAYER `datafree/models/generator.py`,
`NLGenerator`): the zju-vipa generator body (models/cmi_generator.py) fed not by random codes but by the
class's label-text embedding through a *noisy layer*, a Linear re-drawn before every synthesised batch.

    e = BN1d(E[y])                     E: (num_classes, D) label embeddings, fixed; the BN in train mode
    v = NL_k(e) for the k-th block of num_classes rows, NL_k: Linear(D -> nz), weights ~ N(0, 1), bias 0
    x = CMIGenerator body(v) ∈ [0, 1]  Linear(nz -> 2·ngf·s·s), BN, up, conv, BN, LReLU, up, conv, BN, LReLU,
                                       conv, sigmoid

A batch of n images has ceil(n / num_classes) noisy layers: rows k·C .. (k+1)·C − 1 (C = num_classes) go
through layer k, so with NAYER's targets (every class once per block, `balanced_targets`) each layer sees each
class once. The module names (`n1`, `le1.k`, `l1.0`, `conv_blocks.N`) are the reference's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zskt.models.cmi_generator import CMIGenerator


class NoisyLayerGenerator(CMIGenerator):
    def __init__(
        self,
        embeddings: torch.Tensor,
        batch_size: int,
        nz: int = 1000,
        ngf: int = 64,
        img_size: int = 32,
        nc: int = 3,
        fuse_upsample: bool = True,
    ):
        super().__init__(nz=nz, ngf=ngf, img_size=img_size, nc=nc, fuse_upsample=fuse_upsample)
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be (num_classes, D), got shape {tuple(embeddings.shape)}")
        self.num_classes, dim = embeddings.shape
        self.register_buffer("embeddings", embeddings.detach().clone(), persistent=False)
        self.n1 = nn.BatchNorm1d(dim)
        n_layers = math.ceil(batch_size / self.num_classes)
        self.le1 = nn.ModuleList(nn.Linear(dim, nz) for _ in range(n_layers))
        self.reset_noisy_layers()

    @torch.no_grad()
    def reset_noisy_layers(self) -> None:
        """The reference's `re_init_le`: every noisy layer's weight ~ N(0, 1), bias 0 (before each batch)."""
        for layer in self.le1:
            layer.weight.normal_(0.0, 1.0)
            layer.bias.zero_()

    @torch.no_grad()
    def reinitialise(self) -> None:
        """A fresh generator (the reference's `reinit()`, every g_life rounds): PyTorch's default
        initialisation of every layer, BN statistics cleared, then new noisy layers."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        self.reset_noisy_layers()

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        """(n,) class indices -> (n, nc, img_size, img_size) images in [0, 1]."""
        e = self.n1(self.embeddings[targets])
        c = self.num_classes
        blocks = [self.le1[k](e[k * c : (k + 1) * c]) for k in range(math.ceil(len(e) / c))]
        return super().forward(torch.cat(blocks))

    def arch(self) -> dict:
        return {**super().arch(), "num_classes": self.num_classes, "noisy_layers": len(self.le1)}


def balanced_targets(n: int, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """NAYER's `generate_ys`: n // C copies of 0..C−1 in order, then n mod C random classes."""
    rest = torch.randint(num_classes, (n % num_classes,), generator=generator)
    return torch.cat([torch.arange(num_classes).repeat(n // num_classes), rest])
