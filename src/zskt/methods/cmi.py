"""Contrastive model inversion, CMI (Fang et al., IJCAI 2021), as its authors' benchmark runs it (zju-vipa CMI
`datafree/synthesis/contrastive.py`, `datafree_kd.py --method cmi`, `scripts/cmi_cifar10.sh`);
docs/data_free.md.

Each round re-initialises the generator (weights ~ N(0, 0.02), BN scales ~ N(1, 0.02)) and draws latent codes
z ~ N(0, I) and random classes y (sorted); generator and z take `g_steps` Adam steps (lr 1e-3, betas 0.5,
0.999) on x = G(z) ∈ [0, 1] with two views of it, a global one (pad-4 random crop and flip) and a local one
(random resized crop of 25-100 % of the area, and flip), both normalised:

    bn · Σ_l BN-statistic loss of the teacher on the global view
  + oh · CE(T(global), y)
  + adv · (−mean over the batch of KL(T ‖ S) on samples where T and S agree)    (the student in eval mode)
  + cr · contrastive loss

The contrastive loss: each sample's feature is the concatenation of the spatial means of the inputs of all the
teacher's BN layers (for the global view and, in a second teacher forward, for the local view); an MLP head
(Linear, ReLU, Linear to `head_dim`, L2-normalised, Adam at lr_g, trained all run) projects them; the local
projections of the current batch and of `n_neg` feature pairs drawn from a memory bank of earlier rounds' best
batches are classified against the (detached) global projections with temperature cr_T
(losses.contrastive_loss). The lowest-loss batch of the round joins the image bank and its features the
memory bank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zskt.config import check, field
from zskt.data.loader import pad_crop_flip
from zskt.losses import agreement_adversarial_loss, contrastive_loss
from zskt.methods.bn_hooks import BNStatistics
from zskt.methods.inversion import (
    InversionConfig,
    crop_flip_params,
    crop_padding,
    resized_crop,
    resized_crop_params,
    run_inversion,
    standardize,
)
from zskt.models.cmi_generator import CMIGenerator, reset_cmi_generator
from zskt.runlog import RunLog
from zskt.runtime import Precision

PRESETS = {
    # scripts/cmi_cifar10.sh: batch 256, 200 epochs of 400 KD steps, 200 synthesis steps; all images kept.
    "cifar10": {
        "iterations": 200,
        "batch_size": 256,
        "synthesis_batch_size": 256,
        "kd_steps": 400,
        "g_steps": 200,
        "warmup": 0,
        "bank_size": 51_200,
        "eval_every": 1,
    },
    # Ours, for the 2-core CPU (docs/data_free.md, measured).
    "digits": {
        "iterations": 15,
        "batch_size": 64,
        "synthesis_batch_size": 64,
        "kd_steps": 30,
        "g_steps": 20,
        "warmup": 0,
        "bank_size": 960,
        "eval_every": 5,
    },
}


@dataclass(frozen=True)
class CMIConfig(InversionConfig):
    """`zskt cmi`: defaults from the CMI repository's scripts/cmi_cifar10.sh and datafree_kd.py."""

    PRESETS: ClassVar[dict] = PRESETS
    generator_lr: float = field(1e-3, "Adam learning rate of generator, latent codes and head (--lr_g 1e-3)")
    adv: float = field(0.5, "weight of the agreement-masked adversarial term (--adv 0.5)")
    bn: float = field(1.0, "weight of the BN-statistic term (--bn 1)")
    oh: float = field(1.0, "weight of the one-hot cross-entropy term (--oh 1)")
    cr: float = field(0.8, "weight of the contrastive term (--cr 0.8)")
    cr_temperature: float = field(0.2, "temperature of the contrastive logits (--cr_T 0.2)")
    z_dim: int = field(256, "generator latent size (datafree_kd.py: nz 256)")
    generator_width: int = field(64, "generator base width ngf (datafree_kd.py: 64)")
    head_dim: int = field(256, "output size of the contrastive head (datafree_kd.py: head_dim 256)")
    feature_bank_size: int = field(
        40960, "feature pairs kept in the memory bank (datafree_kd.py: bank_size 40960)"
    )
    n_neg: int = field(
        4096, "cached feature pairs drawn from the memory bank per step (datafree_kd.py: 4096)"
    )

    def __post_init__(self):
        super().__post_init__()
        check(
            self.generator_lr > 0 and self.cr_temperature > 0,
            "generator_lr and cr_temperature must be positive",
        )
        check(min(self.adv, self.bn, self.oh, self.cr) >= 0, "loss weights must be >= 0")
        check(
            min(self.z_dim, self.generator_width, self.head_dim, self.feature_bank_size) >= 1,
            "z_dim, generator_width, head_dim and feature_bank_size must be positive",
        )
        check(self.n_neg >= 0, f"n_neg must be >= 0, got {self.n_neg}")


class ProjectionHead(nn.Module):
    """CMI's `MLPHead`: Linear(d, d), ReLU, Linear(d, head_dim), then L2 normalisation per row."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(x), dim=1, p=2)


class FeatureBank:
    """CMI's `MemoryBank`: a ring of `capacity` feature rows (local and global features side by side), filled
    with the best batch of each round; `sample(k)` draws k distinct filled rows uniformly. Rows are allocated
    as they fill (the reference fills unused rows with noise that is never read)."""

    def __init__(self, capacity: int, device: torch.device):
        self.capacity, self.device = capacity, device
        self.data: torch.Tensor | None = None
        self.added = 0

    @property
    def filled(self) -> int:
        return min(self.added, self.capacity)

    def add(self, features: torch.Tensor) -> None:
        features = features.detach()
        if self.data is None:
            self.data = torch.zeros((0, features.shape[1]), dtype=features.dtype, device=self.device)
        slots = (torch.arange(self.added, self.added + len(features)) % self.capacity)[-self.capacity :]
        features = features[-self.capacity :]
        if len(self.data) < self.capacity:
            grow = min(self.capacity, self.added + len(features)) - len(self.data)
            if grow > 0:
                self.data = torch.cat([self.data, self.data.new_zeros((grow, self.data.shape[1]))])
        self.data[slots.to(self.device)] = features.to(self.device)
        self.added += len(features)

    def sample(self, k: int) -> torch.Tensor | None:
        if self.filled == 0 or k == 0:
            return None
        index = torch.randperm(self.filled)[:k]
        return self.data[index.to(self.device)]

    def state_dict(self) -> dict:
        return {"data": None if self.data is None else self.data[: self.filled].clone(), "added": self.added}

    def load_state_dict(self, state: dict) -> None:
        self.data = None if state["data"] is None else state["data"].to(self.device)
        self.added = state["added"]


def cmi_step(
    generator: nn.Module,
    z: torch.Tensor,
    opt: torch.optim.Optimizer,
    head: nn.Module,
    opt_head: torch.optim.Optimizer,
    teacher: nn.Module,
    student: nn.Module,
    hooks: BNStatistics,
    targets: torch.Tensor,
    cached: torch.Tensor | None,
    global_aug: tuple,
    local_aug: tuple,
    cfg: CMIConfig,
    mean,
    std,
    pad: int,
    precision: Precision | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One CMI synthesis iteration: the loss at the current generator and z, its gradient to the generator, z
    and the head only, one step of each optimiser. `global_aug` = (offsets, flips) of the crop, `local_aug` =
    (boxes, flips) of the resized crop; `cached` the memory-bank rows (local ‖ global) or None. Returns the
    loss terms (detached), the images G(z) ∈ [0, 1] and the features (local ‖ global) of this iteration."""
    precision = precision or Precision("fp32", "cpu", False)
    x = generator(z)
    offsets, flips = global_aug
    global_view = standardize(pad_crop_flip(x, offsets.to(x.device), flips.to(x.device), pad=pad), mean, std)
    local_view = standardize(resized_crop(x, *local_aug), mean, std)
    hooks.set_loss(True)
    with precision.autocast():
        teacher_logits, _ = teacher(precision.layout(global_view))
    loss_bn = hooks.loss()
    global_feature = hooks.features()
    loss_oh = F.cross_entropy(teacher_logits, targets)
    terms = {"bn_loss": loss_bn, "oh_loss": loss_oh}
    loss = cfg.bn * loss_bn + cfg.oh * loss_oh
    if cfg.adv > 0:
        with precision.autocast():
            student_logits, _ = student(precision.layout(global_view))
        loss_adv = agreement_adversarial_loss(student_logits, teacher_logits)
        loss = loss + cfg.adv * loss_adv
        terms["adv_loss"] = loss_adv
    hooks.set_loss(
        False
    )  # the local view only needs the features (the reference also recomputes the BN term)
    with precision.autocast():
        teacher(precision.layout(local_view))
    hooks.set_loss(True)
    local_feature = hooks.features()
    # The head runs on the current rows, the cached rows and (without a graph) the global side separately: the
    # reference's one head call on all four blocks gives the same projections, but computes the gradient of
    # the first Linear's input for the constant cached rows and the weight gradient of the detached global
    # half (all zeros), the largest cost of an iteration at the reference's 4096 cached pairs.
    local_projection = head(local_feature)
    with torch.no_grad():
        global_projection = head(global_feature)
    if cached is not None:
        cached_local, cached_global = cached.chunk(2, dim=1)
        local_projection = torch.cat([local_projection, head(cached_local)])
        with torch.no_grad():
            global_projection = torch.cat([global_projection, head(cached_global)])
    loss_cr = contrastive_loss(local_projection, global_projection, len(z), cfg.cr_temperature)
    loss = loss + cfg.cr * loss_cr
    terms["cr_loss"] = loss_cr
    opt.zero_grad(set_to_none=True)
    opt_head.zero_grad(set_to_none=True)
    params = [p for group in opt.param_groups for p in group["params"]] + list(head.parameters())
    loss.backward(inputs=params)
    opt.step()
    opt_head.step()
    features = torch.cat([local_feature, global_feature], dim=1).detach()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}, x.detach(), features


class CMISynthesizer:
    """Generator (re-initialised each round), contrastive head and memory bank; head, its optimiser and the
    memory bank carry over between rounds and are checkpointed."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        cfg: CMIConfig,
        shape: dict,
        device: torch.device,
        precision: Precision,
    ):
        self.teacher, self.student, self.cfg, self.shape = teacher, student, cfg, shape
        self.device, self.precision = device, precision
        self.hooks = BNStatistics(teacher, keep_instance_mean=True)
        self.generator = CMIGenerator(cfg.z_dim, cfg.generator_width, shape["size"], shape["channels"])
        self.generator = self.generator.to(device).train()
        feature_dim = sum(h.module.num_features for h in self.hooks.hooks)
        self.head = ProjectionHead(feature_dim, cfg.head_dim).to(device).train()
        self.opt_head = torch.optim.Adam(self.head.parameters(), lr=cfg.generator_lr)
        self.bank = FeatureBank(cfg.feature_bank_size, device)
        self.losses: dict[str, torch.Tensor] = {}

    def synthesize(self, round_index: int) -> torch.Tensor:
        cfg, shape = self.cfg, self.shape
        n = cfg.value("synthesis_batch_size")
        z = torch.randn(n, cfg.z_dim).to(self.device).requires_grad_()
        targets = torch.randint(0, shape["num_classes"], (n,)).sort().values.to(self.device)
        reset_cmi_generator(self.generator)
        opt = torch.optim.Adam(
            [{"params": self.generator.parameters()}, {"params": [z]}],
            lr=cfg.generator_lr,
            betas=(0.5, 0.999),
        )
        best = best_features = None
        best_loss = torch.tensor(float("inf"), device=self.device)
        was_training = self.student.training
        self.student.eval()
        try:
            for _ in range(cfg.value("g_steps")):
                global_aug = crop_flip_params(n, crop_padding(shape["size"]))
                local_aug = resized_crop_params(n, shape["size"])
                cached = self.bank.sample(cfg.n_neg)
                terms, x, features = cmi_step(
                    self.generator,
                    z,
                    opt,
                    self.head,
                    self.opt_head,
                    self.teacher,
                    self.student,
                    self.hooks,
                    targets,
                    cached,
                    global_aug,
                    local_aug,
                    cfg,
                    shape["mean"],
                    shape["std"],
                    crop_padding(shape["size"]),
                    self.precision,
                )
                if best is None:
                    best, best_features, best_loss = x, features, terms["loss"]
                else:
                    better = terms["loss"] < best_loss
                    best, best_features = (
                        torch.where(better, x, best),
                        torch.where(better, features, best_features),
                    )
                    best_loss = torch.where(better, terms["loss"], best_loss)
        finally:
            self.student.train(was_training)
        self.bank.add(best_features)
        self.losses = {f"synth_{k}": v for k, v in terms.items()}
        return best

    def state_dict(self) -> dict:
        return {
            "head": self.head.state_dict(),
            "opt_head": self.opt_head.state_dict(),
            "bank": self.bank.state_dict(),
            "generator": self.generator.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.opt_head.load_state_dict(state["opt_head"])
        self.bank.load_state_dict(state["bank"])
        self.generator.load_state_dict(state["generator"])


def run_cmi(cfg: CMIConfig, log: RunLog) -> dict:
    """`zskt cmi`."""
    return run_inversion(
        cfg,
        log,
        "cmi",
        lambda teacher, student, run, shape: CMISynthesizer(
            teacher, student, cfg, shape, run.device, run.precision
        ),
    )
