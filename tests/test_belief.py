"""Specification of adversarial belief matching (SPEC §6): the transition-curve procedure, its batched form
against the authors' one-at-a-time loop, image and target selection, the MTE, and `zskt belief` end to end."""

from __future__ import annotations

import copy
import json
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from zskt.cli import main
from zskt.data import ImageSplit
from zskt.evaluate import predict
from zskt.evaluate.belief import (
    mean_transition_error,
    mte_breakdown,
    shuffle_and_collect,
    targets_for,
    transition_curves,
)
from zskt.models import save_model

from reference_transition_curves import authors_transition_curves


class Linear(nn.Module):
    """logits = W flatten(x) + b, returned in the project's (logits, acts) form."""

    def __init__(self, weight, bias):
        super().__init__()
        self.fc = nn.Linear(len(weight[0]), len(weight))
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight, dtype=torch.float32))
            self.fc.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def forward(self, x):
        return self.fc(x.flatten(1)), ()


# ------------------------------------------------------------------------------------------ the procedure


def test_hand_computed_linear_case():
    # x = (0, 0), three classes, W = [[1, 0], [0, 1], [0, 0]], b = 0: p = (1/3, 1/3, 1/3) at the clean image.
    # Target j = 1: dCE/dx = W^T (p - e_1) = (1/3, -2/3); xi = 3 gives x1 = (-1, 2) and logits (-1, 2, 0).
    # The teacher is 2W: logits (-2, 4, 0) at x1. Target j = 2: dCE/dx = (1/3, 1/3), x1 = (-1, -1).
    student = Linear([[1, 0], [0, 1], [0, 0]], [0, 0, 0])
    teacher = Linear([[2, 0], [0, 2], [0, 0]], [0, 0, 0])
    image = torch.zeros(1, 1, 1, 2)
    targets = targets_for(torch.tensor([0]), 3)
    assert targets.tolist() == [[1, 2]]
    p_s, p_t = transition_curves(student, teacher, image, targets, steps=2, step_size=3.0)
    e = math.e
    expected_s = [[1 / 3, e**2 / (e**-1 + e**2 + 1)], [1 / 3, 1 / (e**-1 + e**-1 + 1)]]
    expected_t = [[1 / 3, e**4 / (e**-2 + e**4 + 1)], [1 / 3, 1 / (e**-2 + e**-2 + 1)]]
    torch.testing.assert_close(p_s[0], torch.tensor(expected_s), rtol=0, atol=1e-6)
    torch.testing.assert_close(p_t[0], torch.tensor(expected_t), rtol=0, atol=1e-6)
    # Entry 0 is the clean image (recorded before the update), so the MTE over one step is 0.
    assert mean_transition_error(p_s, p_t, k=1) == 0
    gaps = [abs(expected_t[c][1] - expected_s[c][1]) for c in range(2)]
    assert mean_transition_error(p_s, p_t, k=2) == pytest.approx(sum(gaps) / 4, abs=1e-7)
    # The authors' loop gives the same numbers.
    a_s, a_t = authors_transition_curves(student, teacher, image, torch.tensor([0]), steps=2, step_size=3.0)
    torch.testing.assert_close(a_s, p_s, rtol=0, atol=1e-6)
    torch.testing.assert_close(a_t, p_t, rtol=0, atol=1e-6)


def test_identical_networks_give_mte_zero(random_wrn):
    student = random_wrn(0, num_classes=5)
    images = torch.randn(3, 1, 8, 8)
    targets = targets_for(torch.tensor([0, 2, 4]), 5)
    for teacher in (student, copy.deepcopy(student)):
        p_s, p_t = transition_curves(student, teacher, images, targets, steps=4, step_size=1.0)
        assert mean_transition_error(p_s, p_t, k=4) == 0.0
        assert p_s.shape == (3, 4, 4) and p_s.dtype == torch.float32


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_batched_equals_authors_one_at_a_time(dtype, tolerance, random_wrn):
    # The authors step each (image, target) alone, a batch of one; here all pairs of a chunk step together.
    # Eval-mode networks couple no samples, so only floating-point summation order inside the convolutions
    # differs. In float64 the curves agree to the float32 they are stored in (measured: identical, also over
    # 100 steps of trained digits networks); in float32 the order differences grow along a curve (measured
    # ~2e-5 after 20 steps on these random networks), hence 1e-4 here, and the MTE to 1e-5.
    student, teacher = random_wrn(1, num_classes=5).to(dtype), random_wrn(2, num_classes=5).to(dtype)
    torch.manual_seed(3)
    images = torch.randn(2, 1, 8, 8, dtype=dtype)
    labels = torch.tensor([0, 3])
    a_s, a_t = authors_transition_curves(student, teacher, images, labels, steps=6, step_size=1.0)
    b_s, b_t = transition_curves(
        student, teacher, images, targets_for(labels, 5), steps=6, step_size=1.0, chunk_size=5
    )
    torch.testing.assert_close(b_s, a_s, rtol=0, atol=tolerance)
    torch.testing.assert_close(b_t, a_t, rtol=0, atol=tolerance)
    assert abs(mean_transition_error(b_s, b_t, 6) - mean_transition_error(a_s, a_t, 6)) < tolerance / 10
    # The attack works: the student's probability of the target rises along each curve.
    assert (b_s[..., -1] > b_s[..., 0]).float().mean() > 0.9


def test_chunk_size_does_not_change_the_curves(random_wrn):
    student, teacher = random_wrn(4, num_classes=4), random_wrn(5, num_classes=4)
    images = torch.randn(4, 1, 8, 8)
    targets = targets_for(torch.tensor([0, 1, 2, 3]), 4)
    reference = transition_curves(student, teacher, images, targets, steps=3, step_size=1.0, chunk_size=1000)
    for chunk in (1, 5):
        got = transition_curves(student, teacher, images, targets, steps=3, step_size=1.0, chunk_size=chunk)
        for a, b in zip(got, reference, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_networks_are_restored_after_the_attack(random_wrn):
    student = random_wrn(6, num_classes=3)
    student.train()
    transition_curves(student, student, torch.randn(1, 1, 8, 8), targets_for(torch.tensor([0]), 3), steps=1)
    assert student.training and all(p.requires_grad for p in student.parameters())
    assert all(p.grad is None for p in student.parameters())  # gradients were taken w.r.t. the input only


# ------------------------------------------------------------------------------------------ selection


@pytest.mark.parametrize("num_classes", [3, 10])
def test_targets_are_every_other_class(num_classes):
    sources = torch.arange(num_classes).repeat(2)
    targets = targets_for(sources, num_classes)
    assert targets.shape == (len(sources), num_classes - 1)
    for source, row in zip(sources.tolist(), targets.tolist(), strict=True):
        assert source not in row
        assert sorted([*row, source]) == list(range(num_classes))
        assert row[0] == (source + 1) % num_classes  # the authors' order: j = (y + c + 1) mod C


class Lookup(nn.Module):
    """Predicts class (pixel value) mod C, shifted by one on the images listed in `shifted`."""

    def __init__(self, num_classes, shifted=()):
        super().__init__()
        self.num_classes, self.shifted = num_classes, set(shifted)

    def forward(self, x):
        ids = (x[:, 0, 0, 0] * 255).round().long()  # normalised with mean 0, std 1: pixel / 255
        shift = torch.tensor([int(i) in self.shifted for i in ids.tolist()], dtype=torch.long)
        return 10.0 * nn.functional.one_hot((ids + shift) % self.num_classes, self.num_classes).float(), ()


def select_agreeing(student, teacher, split, mean, std, n_images, seed=0):
    # run_belief's selection: both networks' predictions on the split, then the seeded walk.
    agree = predict(student, split, mean, std) == predict(teacher, split, mean, std)
    return shuffle_and_collect(agree, n_images, seed)


def test_selection_never_picks_a_disagreeing_image(caplog):
    n = 40
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    split = ImageSplit(images, torch.arange(n) % 10)
    disagree = set(range(0, n, 3))
    student, teacher = Lookup(10), Lookup(10, shifted=disagree)
    chosen = select_agreeing(student, teacher, split, (0.0,), (1.0,), n_images=10, seed=0)
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10
    assert not disagree & set(chosen.tolist())
    # Seeded: the same seed picks the same images in the same order, another seed another draw.
    assert torch.equal(chosen, select_agreeing(student, teacher, split, (0.0,), (1.0,), 10, seed=0))
    assert not torch.equal(chosen, select_agreeing(student, teacher, split, (0.0,), (1.0,), 10, seed=1))
    # Asking for more than agree: all agreeing images, and a warning.
    with caplog.at_level(logging.WARNING, logger="zskt.evaluate.belief"):
        every = select_agreeing(student, teacher, split, (0.0,), (1.0,), n_images=n, seed=0)
    assert sorted(every.tolist()) == sorted(set(range(n)) - disagree)
    assert "only 26 of 40" in caplog.text


# ------------------------------------------------------------------------------------------ the error


def test_mte_and_breakdown_known_values():
    # Two images (sources 0 and 1) x 2 targets x 3 steps in a 3-class problem; |diff| is 0.1 * (curve + 1)
    # at steps 1-2 and 0 at step 0, where both start from the same clean image in this construction.
    p_s = torch.zeros(2, 2, 3)
    p_t = torch.zeros(2, 2, 3)
    for curve in range(4):
        p_t.view(4, 3)[curve, 1:] = 0.1 * (curve + 1)
    assert mean_transition_error(p_s, p_t, k=3) == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) * 2 / 12)
    assert mean_transition_error(p_s, p_t, k=1) == 0.0
    with pytest.raises(ValueError, match="recorded steps"):
        mean_transition_error(p_s, p_t, k=4)
    sources = torch.tensor([0, 1])
    parts = mte_breakdown(p_s, p_t, sources, targets_for(sources, 3), num_classes=3, k=2)
    np.testing.assert_allclose(parts.per_step, [0.0, 0.25, 0.25])
    # Source 0 -> targets 1, 2 (curves 0, 1); source 1 -> targets 2, 0 (curves 2, 3); means over 2 steps.
    np.testing.assert_allclose(parts.per_pair[0, 1:], [0.05, 0.1])
    np.testing.assert_allclose(parts.per_pair[1, [2, 0]], [0.15, 0.2])
    assert np.isnan(parts.per_pair[2]).all() and np.isnan(np.diag(parts.per_pair)).all()
    assert parts.pair_counts.sum() == 4


# ------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, random_wrn):
    """A random digits teacher, and a student that is the teacher with a perturbed classifier (so the two
    agree on most images but not all); plus a 5-class network for the error path."""
    root = tmp_path_factory.mktemp("belief_nets")
    teacher = random_wrn(10)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.fc.weight.add_(0.3 * torch.randn_like(student.fc.weight))
    save_model(teacher, root / "teacher.pt")
    save_model(student, root / "student.pt")
    save_model(random_wrn(11, num_classes=5), root / "five.pt")
    return root


def _belief(tmp_path, checkpoints, out, *extra):
    return main(
        [
            "belief",
            "--student",
            str(checkpoints / "student.pt"),
            "--teacher",
            str(checkpoints / "teacher.pt"),
            "--dataset",
            "digits",
            "--out",
            str(tmp_path / out),
            "--quiet",
            "-N",
            "6",
            "-K",
            "3",
            "--mte-steps",
            "2",
            "--step-size",
            "0.5",
            *extra,
        ]
    )


def test_cli_end_to_end_on_digits(tmp_path, checkpoints, capsys):
    assert _belief(tmp_path, checkpoints, "label") == 0
    out = tmp_path / "label"
    assert "mte" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["command"] == "belief"
    assert (result["images"], result["steps"], result["mte_steps"], result["step_size"]) == (6, 3, 2, 0.5)
    assert result["targets"] == "label" and result["precision"] == "fp32"
    assert (out / "transition_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out / "curves.npz") as curves:
        p_s, p_t = torch.from_numpy(curves["p_student"]), torch.from_numpy(curves["p_teacher"])
        assert p_s.shape == p_t.shape == (6, 9, 3)
        assert result["mte"] == pytest.approx(mean_transition_error(p_s, p_t, 2), abs=1e-12)
        assert np.array_equal(curves["sources"], curves["labels"])
        assert not (curves["targets"] == curves["labels"][:, None]).any()
        labels, predictions = curves["labels"], curves["predictions"]
    # Algorithm 2's form: targets relative to the agreed prediction (here in bf16, which is recorded).
    assert _belief(tmp_path, checkpoints, "prediction", "--targets", "prediction", "--precision", "bf16") == 0
    out = tmp_path / "prediction"
    result = json.loads((out / "result.json").read_text())
    assert result["targets"] == "prediction" and result["precision"] == "bf16"
    with np.load(out / "curves.npz") as curves:
        assert np.array_equal(curves["sources"], curves["predictions"])
        assert not (curves["targets"] == curves["predictions"][:, None]).any()
        assert np.array_equal(curves["labels"], labels) and np.array_equal(curves["predictions"], predictions)
    assert (labels != predictions).any()  # random networks: the two modes really differ here


def test_cli_rejects_a_checkpoint_for_another_class_count(tmp_path, checkpoints, capsys):
    code = main(
        [
            "belief",
            "--student",
            str(checkpoints / "five.pt"),
            "--teacher",
            str(checkpoints / "teacher.pt"),
            "--dataset",
            "digits",
            "--out",
            str(tmp_path / "x"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--student" in err and "5-class" in err and "10 classes" in err
    code = main(
        [
            "belief",
            "--student",
            str(checkpoints / "student.pt"),
            "--teacher",
            str(checkpoints / "teacher.pt"),
            "--out",
            str(tmp_path / "y"),
            "--mte-steps",
            "300",
        ]
    )
    assert code == 2 and "mte_steps" in capsys.readouterr().err
