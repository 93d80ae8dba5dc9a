"""DeepInversion with its adaptive competition term, ADI (Yin et al., CVPR 2020), as the zju-vipa CMI code
runs it in its data-free benchmark (`datafree/synthesis/deepinversion.py`, `datafree_kd.py --method deepinv`,
`scripts/deepinv_cifar10.sh`); docs/data_free.md.

Each round optimises a batch of images directly, starting from N(0, 1) noise in normalised space, for
`g_steps` Adam steps (lr 0.1, betas (0.5, 0.99)) on

    bn · Σ_l ‖σ²_l − σ̂²_l‖ + ‖μ_l − μ̂_l‖      (teacher BN statistics, forward hooks)
  + oh · CE(T(x̃), y)                          (y: random classes, sorted)
  − adv · JS(S(x̃), T(x̃); τ = 3)             (the student in eval mode; the clamped JS of the reference)
  + tv · R_TV(x) + l2 · ‖x‖₂

where x̃ is x rolled by a random offset of up to 1/8 of the side in each direction and flipped with
probability ½ (the whole batch alike), and after each step x is clipped to the pixel range [0, 1] in
normalised units. The batch with the lowest loss seen goes to the image bank; the student distils from the
bank (methods/inversion.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from zskt.config import check, field
from zskt.losses import js_divergence_clamped, total_variation
from zskt.methods.bn_hooks import BNStatistics
from zskt.methods.inversion import InversionConfig, run_inversion
from zskt.runlog import RunLog
from zskt.runtime import Precision

PRESETS = {
    # scripts/deepinv_cifar10.sh (CMI): batch 256, 200 epochs of 400 KD steps, 1000 inversion iterations; the
    # bank keeps all 200 x 256 images, as the reference's ImagePool does.
    "cifar10": {
        "iterations": 200,
        "batch_size": 256,
        "synthesis_batch_size": 256,
        "kd_steps": 400,
        "g_steps": 1000,
        "warmup": 0,
        "bank_size": 51_200,
        "eval_every": 1,
    },
    # Ours, for the 2-core CPU (docs/data_free.md, measured): 16x16 single-channel digits.
    "digits": {
        "iterations": 15,
        "batch_size": 64,
        "synthesis_batch_size": 64,
        "kd_steps": 30,
        "g_steps": 30,
        "warmup": 0,
        "bank_size": 960,
        "eval_every": 5,
    },
}


@dataclass(frozen=True)
class DeepInversionConfig(InversionConfig):
    """`zskt deepinversion`: defaults from the CMI repository's scripts/deepinv_cifar10.sh and
    datafree_kd.py."""

    PRESETS: ClassVar[dict] = PRESETS
    generator_lr: float = field(0.1, "Adam learning rate of the image pixels (--lr_g 0.1; betas 0.5, 0.99)")
    adv: float = field(1.0, "weight of the student-teacher competition term, -JS (--adv 1)")
    bn: float = field(10.0, "weight of the BN-statistic term (--bn 10)")
    oh: float = field(1.0, "weight of the one-hot cross-entropy term (--oh 1)")
    tv: float = field(
        1e-3,
        "weight of the total-variation image prior (CMI datafree_kd.py: 0.001; the "
        "Fast-Datafree copy passes 0)",
    )
    l2: float = field(0.0, "weight of the L2 norm of the images (datafree_kd.py: 0)")
    js_temperature: float = field(3.0, "temperature of the JS competition term (reference: 3)")

    def __post_init__(self):
        super().__post_init__()
        check(self.generator_lr > 0, "generator_lr must be positive")
        check(min(self.adv, self.bn, self.oh, self.tv, self.l2) >= 0, "loss weights must be >= 0")
        check(self.js_temperature > 0, "js_temperature must be positive")


def jitter_and_flip(x: torch.Tensor, shift: tuple[int, int], flip: bool) -> torch.Tensor:
    """The reference's `jitter_and_flip`: roll by (rows, cols) with wrap-around, then flip left-right."""
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if flip else x


def deepinversion_step(
    x: torch.Tensor,
    opt: torch.optim.Optimizer,
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    hooks: BNStatistics,
    targets: torch.Tensor,
    shift: tuple[int, int],
    flip: bool,
    cfg: DeepInversionConfig,
    low: torch.Tensor,
    high: torch.Tensor,
    precision: Precision | None = None,
) -> dict[str, torch.Tensor]:
    """One inversion iteration on the leaf images `x` (normalised units): the loss at x, its gradient to x
    only (not to either network's weights), the Adam step, the clip to [low, high]. Returns the loss terms at
    x (detached); "loss" is the total the best batch is chosen by."""
    precision = precision or Precision("fp32", "cpu", False)
    x_aug = precision.layout(jitter_and_flip(x, shift, flip))
    with precision.autocast():
        teacher_logits, _ = teacher(x_aug)
    loss_bn = hooks.loss()
    loss_oh = F.cross_entropy(teacher_logits, targets)
    loss = cfg.bn * loss_bn + cfg.oh * loss_oh
    terms = {"bn_loss": loss_bn, "oh_loss": loss_oh}
    if cfg.adv > 0:
        with precision.autocast():
            student_logits, _ = student(x_aug)
        loss_adv = -js_divergence_clamped(student_logits, teacher_logits, cfg.js_temperature)
        loss = loss + cfg.adv * loss_adv
        terms["adv_loss"] = loss_adv
    if cfg.tv:
        loss = loss + cfg.tv * total_variation(x)
    if cfg.l2:
        loss = loss + cfg.l2 * torch.linalg.vector_norm(x)
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=[x])
    opt.step()
    with torch.no_grad():
        x.copy_(torch.maximum(torch.minimum(x, high), low))
    return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}


class DeepInversionSynthesizer:
    """Optimises a fresh batch of images per round; keeps nothing between rounds (no state to checkpoint)."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        student: torch.nn.Module,
        cfg: DeepInversionConfig,
        shape: dict,
        device: torch.device,
        precision: Precision,
    ):
        self.teacher, self.student, self.cfg, self.shape = teacher, student, cfg, shape
        self.device, self.precision = device, precision
        self.hooks = BNStatistics(teacher)
        c = shape["channels"]
        self.mean = torch.tensor(shape["mean"], device=device).view(1, c, 1, 1)
        self.std = torch.tensor(shape["std"], device=device).view(1, c, 1, 1)
        self.losses: dict[str, torch.Tensor] = {}

    def synthesize(self, round_index: int) -> torch.Tensor:
        """One round: `g_steps` iterations from noise; the lowest-loss batch, in [0, 1]."""
        cfg, shape = self.cfg, self.shape
        n, c, size = cfg.value("synthesis_batch_size"), shape["channels"], shape["size"]
        targets = torch.randint(0, shape["num_classes"], (n,)).sort().values.to(self.device)
        x = torch.randn(n, c, size, size).to(self.device).requires_grad_()
        opt = torch.optim.Adam([x], lr=cfg.generator_lr, betas=(0.5, 0.99))
        low, high = -self.mean / self.std, (1 - self.mean) / self.std  # pixel range [0, 1], normalised
        lim = int(size / 8)
        best, best_loss = x.detach().clone(), torch.tensor(float("inf"), device=self.device)
        was_training = self.student.training
        self.student.eval()
        try:
            for _ in range(cfg.value("g_steps")):
                dy, dx = (int(v) for v in torch.randint(-lim, lim + 1, (2,)))
                flip = bool(torch.rand(()) < 0.5)
                before = x.detach().clone()
                terms = deepinversion_step(
                    x,
                    opt,
                    self.teacher,
                    self.student,
                    self.hooks,
                    targets,
                    (dy, dx),
                    flip,
                    cfg,
                    low,
                    high,
                    self.precision,
                )
                better = terms["loss"] < best_loss  # on the device: no host sync per iteration
                best = torch.where(better, before, best)
                best_loss = torch.where(better, terms["loss"], best_loss)
        finally:
            self.student.train(was_training)
        self.losses = {f"synth_{k}": v for k, v in terms.items()}
        return best * self.std + self.mean

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def run_deepinversion(cfg: DeepInversionConfig, log: RunLog) -> dict:
    """`zskt deepinversion`."""
    return run_inversion(
        cfg,
        log,
        "deepinversion",
        lambda teacher, student, run, shape: DeepInversionSynthesizer(
            teacher, student, cfg, shape, run.device, run.precision
        ),
    )
