"""SLOW REFERENCE: the authors' `ZeroShotKTSolver` loop kept literally, once, for the equivalence tests and
the benchmarks (benchmarks/ put this folder on sys.path). Not part of the package: nothing a user runs calls
it.

Every one of the n_G + n_S calls per pseudo batch re-runs the generator on the same z with a graph (their
`LearnableLoader`); the teacher keeps `requires_grad=True` and runs with a graph in the generator step (its
parameter gradients accumulate, unused); the student steps back-propagate through the generator; the teacher's
outputs for the student phase come from the first student call. It gives the same parameters as
`zskt.methods.zero_shot.zero_shot_steps` (tests/test_zero_shot.py, tests/test_float64_equivalence.py), at
about twice the cost. Default options only (no fresh batch per student step).
"""

from __future__ import annotations

import torch

from zskt.losses import zero_shot_generator_loss, zero_shot_student_loss
from zskt.methods.optim import clip
from zskt.methods.zero_shot import ZeroShotConfig, ZeroShotState
from zskt.runtime import Precision


def reference_zero_shot_steps(
    teacher: torch.nn.Module,
    state: ZeroShotState,
    n_pseudo_batches: int,
    cfg: ZeroShotConfig,
    *,
    precision: Precision | None = None,
) -> torch.Tensor | None:
    """The authors' loop over `n_pseudo_batches`; the teacher's requires_grad flags are restored
    afterwards."""
    if cfg.fresh_batch_per_student_step:
        raise ValueError("the reference loop is the authors' default loop; it has no fresh-batch variant")
    precision = precision or Precision("fp32", "cpu", False)
    kl = {"temperature": cfg.temperature, "reduction": cfg.kl_reduction}
    student, generator = state.student, state.generator
    flags = [p.requires_grad for p in teacher.parameters()]
    teacher.requires_grad_(True)
    n_repeat = cfg.n_generator_steps + cfg.n_student_steps
    x = None
    try:
        for _ in range(n_pseudo_batches):
            z = generator.sample_z(cfg.batch_size, generator=state.z_source)
            for call in range(n_repeat):
                with precision.autocast():
                    x = precision.layout(generator(z))
                if call < cfg.n_generator_steps:
                    with precision.autocast():
                        student_logits, _ = student(x)
                        teacher_logits, _ = teacher(x)
                    loss = zero_shot_generator_loss(student_logits, teacher_logits, **kl)
                    state.generator_optimiser.zero_grad()
                    loss.backward()
                    clip(generator.parameters(), cfg.grad_clip)
                    state.generator_optimiser.step()
                else:
                    if call == cfg.n_generator_steps:
                        with torch.no_grad(), precision.autocast():
                            teacher_logits, teacher_acts = teacher(x)
                    with precision.autocast():
                        student_logits, student_acts = student(x)
                    loss = zero_shot_student_loss(
                        student_logits,
                        student_acts,
                        teacher_logits,
                        teacher_acts,
                        beta=cfg.attention_beta,
                        **kl,
                    )
                    state.student_optimiser.zero_grad()
                    loss.backward()
                    clip(student.parameters(), cfg.grad_clip)
                    state.student_optimiser.step()
            state.generator_schedule.step()
            state.student_schedule.step()
    finally:
        for p, flag in zip(teacher.parameters(), flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None
    return x.detach() if x is not None else None
