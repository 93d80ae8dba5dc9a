"""Fast data-free distillation (Fang et al., AAAI 2022) in its meta-learned form, `fast_meta` (zju-vipa
Fast-Datafree `datafree/synthesis/fast_meta.py`, `datafree_kd.py --method fast_meta`,
`scripts/fast_cifar.sh`); docs/data_free.md.

A meta generator holds an initialisation that a few synthesis steps turn into a useful batch. Each round a
copy of it (the "fast" generator) and fresh latent codes z ~ N(0, I) take `g_steps` Adam steps (betas 0.5,
0.999; generator lr_g, codes lr_z) on x = G(z) ∈ [0, 1], seen through a pad-4 random crop and flip,
normalised:

    bn · Σ_l BN-statistic loss of the teacher, with the batch statistics blended with a running average of
         earlier rounds' (momentum bn_mmt, bn_hooks.py)
  + oh · CE(T(x̃), y)      (y: random classes)
  + adv · (−mean of KL(T ‖ S) on samples where T and S agree)
        (from round `warmup` on; the student in eval mode)

Meta update (`is_maml`, the scripts' choice): first-order MAML, the sum of the fast generator's gradients over
the g_steps iterations applied to the meta generator by Adam at lr_g·g_steps; or Reptile: the meta generator
moves by Adam along 67·(meta − fast). The lowest-loss batch of the round joins the image bank; the student
distils from the bank after `warmup` rounds. At round warmup + 60 % of the trained rounds, the meta
generator's first Linear and first BN are re-initialised (`reset_l0`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from zskt.config import check, field
from zskt.methods.bn_hooks import BNStatistics
from zskt.methods.inversion import (
    InversionConfig,
    crop_flip_params,
    crop_padding,
    generator_synthesis_step,
    run_inversion,
)
from zskt.models.cmi_generator import CMIGenerator, reset_first_layers
from zskt.runlog import RunLog
from zskt.runtime import Precision

PRESETS = {
    # scripts/fast_cifar.sh, WRN-40-2 teacher lines: batch 256, 220 epochs (20 warm-up) of 400 KD steps,
    # Fast-10.
    "cifar10": {
        "iterations": 220,
        "batch_size": 256,
        "synthesis_batch_size": 256,
        "kd_steps": 400,
        "g_steps": 10,
        "warmup": 20,
        "bank_size": 56_320,
        "eval_every": 1,
    },
    # Ours, for the 2-core CPU (docs/data_free.md, measured).
    "digits": {
        "iterations": 30,
        "batch_size": 64,
        "synthesis_batch_size": 64,
        "kd_steps": 30,
        "g_steps": 5,
        "warmup": 4,
        "bank_size": 1920,
        "eval_every": 5,
    },
}


@dataclass(frozen=True)
class FastConfig(InversionConfig):
    """`zskt fast`: defaults from Fast-Datafree's scripts/fast_cifar.sh (the WRN-40-2 teacher's Fast-10
    line)."""

    PRESETS: ClassVar[dict] = PRESETS
    student_lr: float = field(0.2, "student SGD learning rate (--lr 0.2)")
    lr_schedule: Literal["multistep", "cosine"] = field(
        "cosine",
        "student schedule per round: cosine to 2e-4 over the rounds after warmup (Fast-Datafree "
        "datafree_kd.py) or multistep (x0.1 at lr_milestones)",
    )
    generator_lr: float = field(
        2e-3,
        "Adam learning rate of the fast generator (--lr_g 2e-3 for 10 steps; "
        "5e-3 for 2, 3e-3 for 5); the meta generator's is this x g_steps",
    )
    z_lr: float = field(0.01, "Adam learning rate of the latent codes (--lr_z 0.01; 0.015 for 2 steps)")
    adv: float = field(1.1, "weight of the agreement-masked adversarial term (--adv 1.1 for WRN-40-2)")
    bn: float = field(10.0, "weight of the BN-statistic term (--bn 10)")
    oh: float = field(0.4, "weight of the one-hot cross-entropy term (--oh 0.4 for WRN-40-2)")
    bn_momentum: float = field(
        0.9,
        "momentum of the running average of synthesis-batch BN statistics "
        "(--bn_mmt 0.9); 0 = plain DeepInversion statistics",
    )
    meta: Literal["maml", "reptile"] = field(
        "maml", "meta update of the generator (--is_maml 1: first-order MAML; reptile)"
    )
    reptile_scale: float = field(67.0, "Reptile gradient factor (the reference's hard-coded 67)")
    reset_first_layers: bool = field(
        True,
        "re-initialise the meta generator's first Linear and BN once, after "
        "60 % of the trained rounds (--reset_l0 1)",
    )
    z_dim: int = field(256, "generator latent size (datafree_kd.py: nz 256)")
    generator_width: int = field(64, "generator base width ngf (datafree_kd.py: 64)")

    def __post_init__(self):
        super().__post_init__()
        check(self.generator_lr > 0 and self.z_lr > 0, "generator_lr and z_lr must be positive")
        check(min(self.adv, self.bn, self.oh) >= 0, "loss weights must be >= 0")
        check(0 <= self.bn_momentum < 1, f"bn_momentum must be in [0, 1), got {self.bn_momentum}")
        check(self.meta in ("maml", "reptile"), f"meta must be maml or reptile, got {self.meta!r}")
        check(min(self.z_dim, self.generator_width) >= 1, "z_dim and generator_width must be positive")

    @property
    def reset_round(self) -> int:
        """0-based round before whose synthesis the first layers are re-initialised (reference: synthesize
        call 120 + warmup, i.e. round 119 + warmup, of 200 trained epochs)."""
        warmup = self.value("warmup")
        return warmup + round(0.6 * (self.rounds - warmup)) - 1


# One synthesis iteration of the fast generator on z: the loss at the current weights and z, gradients to the
# fast generator and z only (left in their .grad for the meta update), one Adam step; returns the loss terms
# (detached) and the images G(z) ∈ [0, 1] before the step. The family's generator step, taken as it is.
fast_step = generator_synthesis_step


def accumulate_maml(meta: nn.Module, fast: nn.Module) -> None:
    """First-order MAML (`fomaml_grad`): meta.grad += fast.grad, parameter by parameter."""
    for p, q in zip(meta.parameters(), fast.parameters(), strict=True):
        if q.grad is None:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.add_(q.grad)


def reptile_gradient(meta: nn.Module, fast: nn.Module, scale: float) -> None:
    """Reptile (`reptile_grad`): meta.grad = scale · (meta − fast)."""
    for p, q in zip(meta.parameters(), fast.parameters(), strict=True):
        p.grad = (p.detach() - q.detach()) * scale


class FastSynthesizer:
    """The meta generator, its Adam, and the BN-statistic momentum: carried over rounds and checkpointed."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        cfg: FastConfig,
        shape: dict,
        device: torch.device,
        precision: Precision,
    ):
        self.teacher, self.student, self.cfg, self.shape = teacher, student, cfg, shape
        self.device, self.precision = device, precision
        self.hooks = BNStatistics(teacher, momentum=cfg.bn_momentum)
        self.generator = CMIGenerator(cfg.z_dim, cfg.generator_width, shape["size"], shape["channels"])
        self.generator = self.generator.to(device).train()
        self.meta_opt = torch.optim.Adam(
            self.generator.parameters(), lr=cfg.generator_lr * cfg.value("g_steps"), betas=(0.5, 0.999)
        )
        self.losses: dict[str, torch.Tensor] = {}

    def synthesize(self, round_index: int) -> torch.Tensor:
        cfg, shape = self.cfg, self.shape
        n, g_steps, pad = cfg.value("synthesis_batch_size"), cfg.value("g_steps"), crop_padding(shape["size"])
        if cfg.reset_first_layers and round_index == cfg.reset_round:
            reset_first_layers(self.generator)
        z = torch.randn(n, cfg.z_dim).to(self.device).requires_grad_()
        targets = torch.randint(0, shape["num_classes"], (n,)).to(self.device)
        fast = self.generator.clone()
        opt = torch.optim.Adam(
            [{"params": fast.parameters()}, {"params": [z], "lr": cfg.z_lr}],
            lr=cfg.generator_lr,
            betas=(0.5, 0.999),
        )
        adversarial = round_index + 1 >= cfg.value("warmup")  # the reference's `self.ep >= self.ep_start`
        best, best_loss = None, torch.tensor(float("inf"), device=self.device)
        was_training = self.student.training
        self.student.eval()
        try:
            self.meta_opt.zero_grad(set_to_none=True)
            for _ in range(g_steps):
                aug = crop_flip_params(n, pad)
                terms, x = fast_step(
                    fast,
                    z,
                    opt,
                    self.teacher,
                    self.student,
                    self.hooks,
                    targets,
                    aug,
                    cfg,
                    shape["mean"],
                    shape["std"],
                    pad,
                    adversarial,
                    self.precision,
                )
                if cfg.meta == "maml":
                    accumulate_maml(self.generator, fast)
                if best is None:
                    best, best_loss = x, terms["loss"]
                else:
                    better = terms["loss"] < best_loss
                    best, best_loss = (
                        torch.where(better, x, best),
                        torch.where(better, terms["loss"], best_loss),
                    )
            if cfg.meta == "reptile":
                reptile_gradient(self.generator, fast, cfg.reptile_scale)
            self.meta_opt.step()
        finally:
            self.student.train(was_training)
        if cfg.bn_momentum:
            self.hooks.update_momentum()
        self.losses = {f"synth_{k}": v for k, v in terms.items()}
        return best

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict(),
            "meta_opt": self.meta_opt.state_dict(),
            "bn": self.hooks.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.meta_opt.load_state_dict(state["meta_opt"])
        self.hooks.load_state_dict(state["bn"])


def run_fast(cfg: FastConfig, log: RunLog) -> dict:
    """`zskt fast`."""
    return run_inversion(
        cfg,
        log,
        "fast",
        lambda teacher, student, run, shape: FastSynthesizer(
            teacher, student, cfg, shape, run.device, run.precision
        ),
    )
