"""DFAD (Fang et al. 2019, "Data-Free Adversarial Distillation") as the zju-vipa DataFree benchmark runs it: a
generator and the student play a min-max game on the mean absolute difference of the logits; the generator
makes the images on which the student disagrees most with the teacher (docs/data_free.md).

    L_G = −adv · mean |S(x) − T(x)|      (x = G(z))
    L_S = mean |S(x) − T(x)|

The loop is the family's (`zskt.methods.generative`); this file is DFAD's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from zskt.config import field
from zskt.methods.generative import GenerativeConfig, run_generative
from zskt.runlog import RunLog


@dataclass(frozen=True)
class DFADConfig(GenerativeConfig):
    """DFAD with the reference script's settings (CMI `scripts/dfad_cifar10.sh`, WRN-40-2 → WRN-16-1)."""

    adv: float = field(1.0, "weight of the adversarial term −L1 (reference script --adv 1)")
    discrepancy: Literal["kl", "l1"] = field(
        "l1",
        "D: l1 (the reference's `torch.nn.L1Loss()` for dfad, student and "
        "generator; DFAD's own code: F.l1_loss) or kl",
    )
    student_steps: int = field(5, "student steps per round (reference script --kd_steps 5; DFAD's code: 5)")
    generator_lr: float = field(
        1e-3, "generator Adam learning rate (reference script --lr_g 1e-3; DFAD: 1e-3)"
    )

    # digits (ours, measured: docs/data_free.md)
    DIGITS: ClassVar[dict] = {"epochs": 20, "epoch_steps": 50, "batch_size": 64, "ngf": 32}


def run_dfad(cfg: DFADConfig, log: RunLog) -> dict:
    """`zskt dfad`: DFAD from a teacher file into a fresh student."""
    return run_generative(cfg, log, "dfad")
