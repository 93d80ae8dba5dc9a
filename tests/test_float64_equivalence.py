"""In float64 the production zero-shot loop is the authors' literal loop, to 1e-9.

`zero_shot_steps` differs from the authors' `ZeroShotKTSolver` loop only in the order of its arithmetic: the
teacher's batch norms are folded (models/frozen.py), the pseudo batch is generated once for the student phase
and the teacher's attention maps are computed once, the generator step back-propagates into the generator
only. None of that changes the function computed, so in float64, where rounding is ~1e-16, two pseudo batches
of both loops must give the same student and generator to far below any float32 difference. A cast to float32
anywhere in the production path (a loss, a folded scale) would show up here as a 1e-3..1e-2 relative gap.
"""

from __future__ import annotations

import copy

import pytest
import torch

from zskt.methods.zero_shot import ZeroShotConfig, ZeroShotState, zero_shot_steps
from zskt.models import Generator, build_model
from zskt.models.frozen import frozen_copy

from reference_zero_shot import reference_zero_shot_steps

SIZE = 8  # the WRN's maps are 8, 4, 2: all three attention maps are compared


@pytest.fixture
def float64_default():
    """torch's default dtype float64 for the test (the generator draws z in the default dtype), then
    restored."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def _networks(random_wrn):
    teacher = random_wrn(0, "wrn-16-2").double()  # non-trivial BN statistics: folding them is under test
    torch.manual_seed(1)
    student = build_model("wrn-16-1", 10, 1).double().train()
    generator = Generator(100, image_size=SIZE, out_channels=1).double().train()
    return teacher, student, generator


def _run(teacher, student, generator, cfg, *, reference: bool):
    state = ZeroShotState.build(student, generator, cfg)
    if reference:
        reference_zero_shot_steps(teacher, state, 2, cfg)
    else:
        zero_shot_steps(teacher, state, cfg, range(2))


def _relative_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    return max(((pa[k] - pb[k]).abs().max() / pa[k].abs().max().clamp(min=1e-12)).item() for k in pa)


@pytest.mark.parametrize("beta", [250.0, 0.0])
def test_production_loop_equals_authors_loop_in_float64(float64_default, random_wrn, beta):
    # Two generator and three student steps per pseudo batch, clipping on, the authors' KL reduction.
    cfg = ZeroShotConfig(
        iterations=10, batch_size=8, n_generator_steps=2, n_student_steps=3, beta=beta, device="cpu"
    )
    teacher, student, generator = _networks(random_wrn)
    ref_student, ref_generator = copy.deepcopy(student), copy.deepcopy(generator)
    start = copy.deepcopy(student)

    _run(frozen_copy(teacher), student, generator, cfg, reference=False)
    _run(teacher.eval(), ref_student, ref_generator, cfg, reference=True)

    assert all(p.dtype == torch.float64 for p in [*student.parameters(), *generator.parameters()])
    assert _relative_gap(start, student) > 1e-4  # the student did move: the comparison below is not vacuous
    for ours, authors in ((student, ref_student), (generator, ref_generator)):
        for (name, p), q in zip(ours.named_parameters(), authors.parameters(), strict=True):
            assert torch.allclose(p, q, rtol=1e-9, atol=1e-9), (name, (p - q).abs().max().item())
    # The student's BN running statistics too. (The generator's differ by design: the authors' loop runs it in
    # train mode n_G + n_S times per pseudo batch, ours n_G + 1; it is only ever used in train mode.)
    for (name, b), c in zip(student.named_buffers(), ref_student.buffers(), strict=True):
        assert torch.allclose(b.double(), c.double(), rtol=1e-9, atol=1e-9), name
