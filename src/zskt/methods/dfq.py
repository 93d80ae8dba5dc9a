"""DFQ (Choi et al., CVPR-W 2020, "Data-Free Network Quantization With Adversarial Knowledge Distillation") as
the zju-vipa DataFree benchmark runs it: DFAD's adversarial game with KL, plus the teacher's batch-norm
statistics as a prior on the generated images, DAFL's one-hot and class-balance terms (docs/data_free.md).

    L_G = bn · Σ_l (‖μ_l(x) − μ_BN,l‖₂ + ‖σ²_l(x) − σ²_BN,l‖₂) + oh · CE(T(x), argmax T(x))
          − adv · KL(T(x) ‖ S(x)) + balance · Σ_c p̄_c log p̄_c                                      (x = G(z))
    L_S = KL(T(x) ‖ S(x))

The BN statistics come from forward hooks on the teacher's BN layers (`zskt.methods.bn_hooks`), so the teacher
keeps them in the generator step. The loop is the family's (`zskt.methods.generative`); this file is DFQ's
settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from zskt.config import field
from zskt.methods.generative import GenerativeConfig, run_generative
from zskt.runlog import RunLog


@dataclass(frozen=True)
class DFQConfig(GenerativeConfig):
    """DFQ with the reference's per-pair script (CMI `scripts/dfq/dfq_cifar10_wrn402_wrn161.sh`, WRN-40-2 →
    WRN-16-1; the older `scripts/dfq_cifar10.sh` had --kd_steps 5 --lr_g 1e-4 --adv 0.5 --oh 0.5)."""

    adv: float = field(1.0, "weight of the adversarial term −KL (reference per-pair script --adv 1)")
    bn: float = field(1.0, "weight of the BN-statistic term (reference per-pair script --bn 1)")
    oh: float = field(1.0, "weight of the one-hot term (reference per-pair script --oh 1)")
    balance: float = field(
        20.0, "weight of the information-entropy term (reference per-pair script --balance 20)"
    )
    student_steps: int = field(10, "student steps per round (reference per-pair script --kd_steps 10)")
    generator_lr: float = field(1e-3, "generator Adam learning rate (reference per-pair script --lr_g 1e-3)")
    discrepancy: Literal["kl", "l1"] = field("kl", "D: kl (the reference code's KLDiv at T = 1) or l1")

    # digits (ours, measured: docs/data_free.md)
    DIGITS: ClassVar[dict] = {"epochs": 12, "epoch_steps": 50, "batch_size": 64, "ngf": 32}


def run_dfq(cfg: DFQConfig, log: RunLog) -> dict:
    """`zskt dfq`: DFQ from a teacher file into a fresh student."""
    return run_generative(cfg, log, "dfq")
