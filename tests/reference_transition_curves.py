"""SLOW REFERENCE: the authors' `TransitionCurves.run` (their utils/transition_curves.py) kept literally,
once, for the batched `zskt.evaluate.belief.transition_curves` to be tested against (tests/test_belief.py) and
timed beside (benchmarks/bench_belief.py puts this folder on sys.path). Not part of the package."""

from __future__ import annotations

import torch
from torch import nn


def authors_transition_curves(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    sources: torch.Tensor,
    steps: int = 200,
    step_size: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' `TransitionCurves.run`, one image and one target at a time: (p_student, p_teacher), each
    float32 (n, C-1, steps). Slow by design; kept as the reference the batched version is tested against.

    `images` normalised (n, C, H, W); `sources` (n,) the classes targets are taken relative to (the authors:
    the label). Statement for statement: clone x with requires_grad; per step logits_A with grad, logits_B
    under no_grad, CrossEntropyLoss(logits_A, j) (mean over a batch of one), backward, x -= xi * grad, zero
    the grad, record both softmax(.)[j] from the logits computed before the update.
    """
    student.eval()
    teacher.eval()
    criterion = nn.CrossEntropyLoss()
    device = next(student.parameters()).device
    n = len(images)
    with torch.no_grad():
        num_classes = student(images[:1].to(device))[0].shape[1]
    curves_a = torch.zeros(n, num_classes - 1, steps)
    curves_b = torch.zeros(n, num_classes - 1, steps)
    for im_idx in range(n):
        x = images[im_idx : im_idx + 1].to(device)
        y = sources[im_idx : im_idx + 1].to(device)
        for class_idx in range(num_classes - 1):
            x_adversarial = x.detach().clone()
            x_adversarial.requires_grad = True
            y_adversarial = (y + class_idx + 1) % num_classes
            for step_idx in range(steps):
                logits_a, _ = student(x_adversarial)
                with torch.no_grad():
                    logits_b, _ = teacher(x_adversarial)
                loss = criterion(logits_a, y_adversarial)
                student.zero_grad()
                loss.backward()
                x_adversarial.data -= step_size * x_adversarial.grad.data
                x_adversarial.grad.data.zero_()
                with torch.no_grad():
                    curves_a[im_idx, class_idx, step_idx] = torch.softmax(logits_a, dim=1)[0, y_adversarial]
                    curves_b[im_idx, class_idx, step_idx] = torch.softmax(logits_b, dim=1)[0, y_adversarial]
    return curves_a, curves_b
