"""The losses of the paper and of the authors' code, as small pure functions (SPEC §3, §4, §9).

Each docstring names the equation and which variant it computes: the authors' code and the paper differ in
the KL reduction and the attention distance, and the code's forms are the defaults here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

KLReduction = Literal["mean", "batchmean"]


def kl_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: KLReduction = "mean",
) -> torch.Tensor:
    """KL(teacher ‖ student) of softened outputs, as the authors' `F.kl_div(log_softmax(s/T), softmax(t/T))`.

    Computed from log-probabilities on both sides (`log_target=True`): Σ p_t·(log p_t − log p_s) with
    p_t = exp(log_softmax(t/T)). The value is the authors' up to rounding, but where a teacher probability
    underflows to exactly 0 (a logit gap above ~100 in float32: a random or very confident teacher) the
    authors' form back-propagates 0·log(0) = NaN into the teacher's logits, i.e. into the generator step;
    this form's gradient there is 0, as the mathematics says.

    reduction="mean" is the authors' code (PyTorch 1.0's default): the sum over batch and classes divided by
    B·C, i.e. the per-sample KL divided by the number of classes (SPEC §3, §9.4). "batchmean" divides by B
    only: the mathematical per-sample KL of the paper's Eq. (2)/(3). No T² factor. In float32 at least
    (bf16 autocast logits are promoted), float64 stays float64.
    # (B, C), (B, C) -> ()
    """
    dtype = _at_least_float32(student_logits.dtype, teacher_logits.dtype)
    log_p_student = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=1)
    total = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    # Spelled out rather than reduction="mean", whose meaning PyTorch has announced it will change.
    if reduction == "mean":
        return total / student_logits.numel()
    if reduction == "batchmean":
        return total / student_logits.shape[0]
    raise ValueError(f"unknown KL reduction {reduction!r}; use 'mean' (authors) or 'batchmean'")


def _at_least_float32(*dtypes: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16 (autocast) inputs, float64 for float64 ones: losses never lose precision."""
    dtype = torch.float32
    for d in dtypes:
        dtype = torch.promote_types(dtype, d)
    return dtype


class _ChannelMeanSquare(torch.autograd.Function):
    """(B, C, H, W) -> (B, H, W): the mean over channels of the squared activation, with a one-pass backward.

    Computed in float32 at least (float64 stays float64), as `x.float().permute(0, 2, 3, 1).pow(2).mean(-1)`.
    Autograd's backward for that chain materialises the broadcast of the mean's gradient, divides it,
    multiplies twice for the power and casts back; the one multiply `x * (2/C * grad)` written here does the
    same in one pass (timings in docs/benchmarks.md). The gradient keeps the activation's dtype and memory
    format (channels_last stays channels_last).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.permute(0, 2, 3, 1).to(_at_least_float32(x.dtype)).pow(2).mean(dim=-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        scaled = (grad * (2.0 / x.shape[1])).unsqueeze(-1)  # (B, H, W, 1), float32 or float64
        return (x.permute(0, 2, 3, 1) * scaled).to(x.dtype).permute(0, 3, 1, 2)


def attention_map(activation: torch.Tensor) -> torch.Tensor:
    """The authors' spatial attention map: channel **mean** of squared activations, L2-normalised per sample.

    Zagoruyko & Komodakis sum over channels; the mean differs by a constant that the normalisation removes.
    (B, C, H, W) -> (B, H*W) in float32 (float64 for float64 input), positions in row-major (h, w) order.

    The channel mean is taken over the last axis of the (B, H, W, C) view: for a channels_last activation that
    view is contiguous, and the gradient flowing back stays channels_last. Reducing dim 1 of the NCHW view
    gave the same numbers but an NCHW gradient, which then met the residual branch's channels_last gradient in
    a slow mixed-layout add and a layout copy in every convolution's backward (docs/benchmarks.md). The mean
    of squares has its own backward (`_ChannelMeanSquare`).
    """
    return F.normalize(_ChannelMeanSquare.apply(activation).flatten(1), dim=1, eps=1e-12)


def attention_diff(student_act: torch.Tensor, teacher_act: torch.Tensor) -> torch.Tensor:
    """Mean over all B·H·W elements of the squared difference of the two attention maps (authors' code).

    The paper's Eq. (1) writes the L2 norm of the difference instead; the code's mean-square form is what
    produced the published numbers (SPEC §9.3). Channel counts may differ; spatial sizes must match.
    `teacher_act` may also be the teacher's attention map already computed, (B, H*W): the zero-shot loop
    computes it once per pseudo batch for its n_S student steps.
    # (B, Cs, H, W), (B, Ct, H, W) or (B, H*W) -> ()
    """
    teacher_map = teacher_act if teacher_act.dim() == 2 else attention_map(teacher_act)
    return (attention_map(student_act) - teacher_map).pow(2).mean()


def attention_loss(
    student_acts: Sequence[torch.Tensor], teacher_acts: Sequence[torch.Tensor], beta: float
) -> torch.Tensor:
    """β · Σ_l attention_diff over the layers: β per layer with no division by the layer count (SPEC §3)."""
    total = sum(attention_diff(s, t) for s, t in zip(student_acts, teacher_acts, strict=True))
    return beta * total


def zero_shot_student_loss(
    student_logits: torch.Tensor,
    student_acts: Sequence[torch.Tensor],
    teacher_logits: torch.Tensor,
    teacher_acts: Sequence[torch.Tensor],
    *,
    beta: float = 250.0,
    temperature: float = 1.0,
    reduction: KLReduction = "mean",
) -> torch.Tensor:
    """`KT_loss_student`: KL(teacher ‖ student) + β · Σ_{l=1..3} attention_diff_l, β = 250 (SPEC §3)."""
    loss = kl_divergence(student_logits, teacher_logits, temperature, reduction)
    if beta:
        loss = loss + attention_loss(student_acts, teacher_acts, beta)
    return loss


def zero_shot_generator_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    reduction: KLReduction = "mean",
) -> torch.Tensor:
    """`KT_loss_generator`: −KL(teacher ‖ student); the generator maximises the disagreement (SPEC §3)."""
    return -kl_divergence(student_logits, teacher_logits, temperature, reduction)


def kd_at_loss(
    student_logits: torch.Tensor,
    student_acts: Sequence[torch.Tensor],
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    teacher_acts: Sequence[torch.Tensor] | None,
    *,
    alpha: float = 0.9,
    temperature: float = 4.0,
    beta: float = 1000.0,
    kl_reduction: KLReduction = "mean",
    kd_factor: float = 2.0,
) -> torch.Tensor:
    """The few-shot KD+AT loss of the authors' FSKT code (SPEC §4):

        (1 − α)·CE(s, y) + kd_factor·α·T²·KL_mean(s/T ‖ t/T) + β·Σ_l attention_diff_l

    with α = 0.9, T = 4, β = 1000 per layer, kd_factor = 2 (the older attention-transfer convention that FSKT
    keeps: KL weight 28.8 with the element-mean KL). With no teacher (or α = 0 and β = 0) it is plain
    cross-entropy: the "no teacher" baseline.
    """
    loss = F.cross_entropy(student_logits.to(_at_least_float32(student_logits.dtype)), labels)
    if teacher_logits is None:
        return loss
    loss = (1.0 - alpha) * loss
    if alpha:
        kl = kl_divergence(student_logits, teacher_logits, temperature, kl_reduction)
        loss = loss + kd_factor * alpha * temperature**2 * kl
    if beta:
        loss = loss + attention_loss(student_acts, teacher_acts, beta)
    return loss
