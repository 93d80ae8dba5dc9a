"""DAFL (Chen et al., ICCV 2019, "Data-Free Learning of Student Networks") as the zju-vipa DataFree benchmark
runs it: a generator trained on the teacher alone to make images the teacher classifies confidently (one-hot
loss), with large features (activation loss) and balanced classes (information-entropy loss); the student
distils the teacher on them (docs/data_free.md).

    L_G = oh · CE(T(x), argmax T(x)) + act · (−mean |f_T(x)|) + balance · Σ_c p̄_c log p̄_c      (x = G(z))
    L_S = KL(T(x) ‖ S(x))

The loop is the family's (`zskt.methods.generative`); this file is DAFL's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from zskt.config import field
from zskt.methods.generative import GenerativeConfig, run_generative
from zskt.runlog import RunLog


@dataclass(frozen=True)
class DAFLConfig(GenerativeConfig):
    """DAFL with the reference script's settings (CMI `scripts/dafl_cifar10.sh`, WRN-40-2 → WRN-16-1)."""

    oh: float = field(1.0, "weight of the one-hot term (reference script --oh 1; DAFL paper and code: 1)")
    act: float = field(0.1, "weight of the activation term (reference script --act 0.1; DAFL: 0.1)")
    balance: float = field(
        20.0,
        "weight of the information-entropy term (reference script --balance 20, natural "
        "log; DAFL's code: 5 (MNIST) or 20 (CIFAR) with log10)",
    )
    adv: float = field(0.0, "weight of the adversarial term (DAFL has none; reference script --adv 0)")
    bn: float = field(0.0, "weight of the BN-statistic term (DAFL has none; reference script --bn 0)")
    z_dim: int = field(
        256,
        "generator noise dimension (the script runs --method zskt, which gives 256; "
        "--method dafl would give 512, docs/decisions.md)",
    )
    student_steps: int = field(5, "student steps per round (reference script --kd_steps 5)")
    generator_lr: float = field(1e-3, "generator Adam learning rate (reference script --lr_g 1e-3)")
    discrepancy: Literal["kl", "l1"] = field("kl", "D: kl (the reference code's KLDiv at T = 1) or l1")

    # digits (ours, measured: docs/data_free.md)
    DIGITS: ClassVar[dict] = {"epochs": 20, "epoch_steps": 50, "batch_size": 64, "ngf": 32}


def run_dafl(cfg: DAFLConfig, log: RunLog) -> dict:
    """`zskt dafl`: DAFL from a teacher file into a fresh student."""
    return run_generative(cfg, log, "dafl")
