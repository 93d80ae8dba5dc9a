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


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  reduction: KLReduction = "mean") -> torch.Tensor:
    """Forward KL(teacher ‖ student) on softened outputs, `F.kl_div(log_softmax(s/T), softmax(t/T))`.

    reduction="mean" is the authors' code (PyTorch 1.0's default): the sum over batch and classes divided by
    B·C, i.e. the per-sample KL divided by the number of classes (SPEC §3, §9.4). "batchmean" divides by B
    only: the mathematical per-sample KL of the paper's Eq. (2)/(3). No T² factor.
    # (B, C), (B, C) -> ()
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=1)
    total = F.kl_div(log_p_student, p_teacher, reduction="sum")
    # Spelled out rather than reduction="mean", whose meaning PyTorch has announced it will change.
    if reduction == "mean":
        return total / student_logits.numel()
    if reduction == "batchmean":
        return total / student_logits.shape[0]
    raise ValueError(f"unknown KL reduction {reduction!r}; use 'mean' (authors) or 'batchmean'")


class _ChannelMeanSquare(torch.autograd.Function):
    """(B, C, H, W) -> (B, H, W): the mean over channels of the squared activation, with a one-pass backward.

    Computed in float32 at least (float64 stays float64), as `x.float().permute(0, 2, 3, 1).pow(2).mean(-1)`.
    Autograd's backward for that chain materialises the broadcast of the mean's gradient, divides it, multiplies
    twice for the power and casts back: about 8 ms for a (128, 16, 32, 32) activation on the 2-core CPU, against
    0.2 ms for the one multiply `x * (2/C * grad)` written here (a WRN-16-1 zero-shot student step went from 94
    to 88 ms in float32 and from 74 to 61 ms in bf16; docs/benchmarks.md). The gradient keeps the activation's
    dtype and memory format (channels_last stays channels_last).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.permute(0, 2, 3, 1).to(torch.promote_types(x.dtype, torch.float32)).pow(2).mean(dim=-1)

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
    view is contiguous, and the gradient flowing back stays channels_last. Reducing dim 1 of the NCHW view gave
    the same numbers but an NCHW gradient, which then met the residual branch's channels_last gradient in a
    mixed-layout add (15x slower than a same-layout add in bf16) and a layout copy in every convolution's
    backward: 13 % of a bf16 zero-shot pseudo batch (docs/benchmarks.md). The mean of squares has its own
    backward (`_ChannelMeanSquare`).
    """
    return F.normalize(_ChannelMeanSquare.apply(activation).flatten(1), dim=1, eps=1e-12)


def attention_diff(student_act: torch.Tensor, teacher_act: torch.Tensor) -> torch.Tensor:
    """Mean over all B·H·W elements of the squared difference of the two attention maps (authors' code).

    The paper's Eq. (1) writes the L2 norm of the difference instead; the code's mean-square form is what
    produced the published numbers (SPEC §9.3). Channel counts may differ; spatial sizes must match.
    `teacher_act` may also be the teacher's attention map already computed, (B, H*W): the zero-shot loop computes
    it once per pseudo batch for its n_S student steps.
    # (B, Cs, H, W), (B, Ct, H, W) or (B, H*W) -> ()
    """
    teacher_map = teacher_act if teacher_act.dim() == 2 else attention_map(teacher_act)
    return (attention_map(student_act) - teacher_map).pow(2).mean()


def attention_loss(student_acts: Sequence[torch.Tensor], teacher_acts: Sequence[torch.Tensor],
                   beta: float) -> torch.Tensor:
    """β · Σ_l attention_diff over the layers: β per layer with no division by the layer count (SPEC §3)."""
    total = sum(attention_diff(s, t) for s, t in zip(student_acts, teacher_acts, strict=True))
    return beta * total


def zero_shot_student_loss(student_logits: torch.Tensor, student_acts: Sequence[torch.Tensor],
                           teacher_logits: torch.Tensor, teacher_acts: Sequence[torch.Tensor], *,
                           beta: float = 250.0, temperature: float = 1.0,
                           reduction: KLReduction = "mean") -> torch.Tensor:
    """`KT_loss_student`: KL(teacher ‖ student) + β · Σ_{l=1..3} attention_diff_l, β = 250 (SPEC §3)."""
    loss = kl_divergence(student_logits, teacher_logits, temperature, reduction)
    if beta:
        loss = loss + attention_loss(student_acts, teacher_acts, beta)
    return loss


def zero_shot_generator_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                             temperature: float = 1.0, reduction: KLReduction = "mean") -> torch.Tensor:
    """`KT_loss_generator`: −KL(teacher ‖ student); the generator maximises the disagreement (SPEC §3)."""
    return -kl_divergence(student_logits, teacher_logits, temperature, reduction)


def kd_at_loss(student_logits: torch.Tensor, student_acts: Sequence[torch.Tensor], labels: torch.Tensor,
               teacher_logits: torch.Tensor | None, teacher_acts: Sequence[torch.Tensor] | None, *,
               alpha: float = 0.9, temperature: float = 4.0, beta: float = 1000.0,
               kl_reduction: KLReduction = "mean", kd_factor: float = 2.0) -> torch.Tensor:
    """The few-shot KD+AT loss of the authors' FSKT code (SPEC §4):

        (1 − α)·CE(s, y) + kd_factor·α·T²·KL_mean(s/T ‖ t/T) + β·Σ_l attention_diff_l

    with α = 0.9, T = 4, β = 1000 per layer, kd_factor = 2 (the older attention-transfer convention that FSKT
    keeps: KL weight 28.8 with the element-mean KL). With no teacher (or α = 0 and β = 0) it is plain
    cross-entropy: the "no teacher" baseline.
    """
    loss = F.cross_entropy(student_logits.float(), labels)
    if teacher_logits is None:
        return loss
    loss = (1.0 - alpha) * loss
    if alpha:
        kl = kl_divergence(student_logits, teacher_logits, temperature, kl_reduction)
        loss = loss + kd_factor * alpha * temperature**2 * kl
    if beta:
        loss = loss + attention_loss(student_acts, teacher_acts, beta)
    return loss


# ------------------------------------------------------------------ data-free methods (docs/data_free.md)


def at_least_f32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 when it already is (the equivalence tests run in float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def batch_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over batch and space of a (B, C, H, W) batch: what a train-mode
    BatchNorm2d would normalise with. One fused `var_mean`, in float32 at least. # (B, C, H, W) -> (C,), (C,)"""
    x = at_least_f32(features)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    return mean, var


def bn_statistic_loss(mean: torch.Tensor, var: torch.Tensor, running_mean: torch.Tensor,
                      running_var: torch.Tensor) -> torch.Tensor:
    """DeepInversion's feature-distribution term for one BN layer (Yin et al. 2020, Eq. 4, as their code and
    the zju-vipa code compute it): ‖σ²_running − σ²_batch‖₂ + ‖μ_running − μ_batch‖₂, Euclidean norms over the
    channels, not squared; the batch variance is the biased one. Zero when the batch's statistics equal the
    layer's running statistics. # (C,) x 4 -> ()"""
    return torch.linalg.vector_norm(running_var - var) + torch.linalg.vector_norm(running_mean - mean)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The zju-vipa distillation loss (`criterions.KLDiv`): T² · KL(softmax(t/T) ‖ softmax(s/T)), summed over
    classes and averaged over the batch ("batchmean"). # (B, K), (B, K) -> ()"""
    log_p_student = F.log_softmax(at_least_f32(student_logits) / temperature, dim=1)
    p_teacher = F.softmax(at_least_f32(teacher_logits) / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="sum") / len(student_logits) * temperature**2


def js_divergence_clamped(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          temperature: float = 3.0) -> torch.Tensor:
    """The adaptive-DeepInversion competition term as both reference codes compute it (NVlabs
    `deepinversion_cifar10.py`, zju-vipa `criterions.jsdiv`): with P = softmax(s/T), Q = softmax(t/T),
    M = (P + Q)/2, each clamped to [0.01, 0.99] after M is formed, ½·KL(M ‖ P) + ½·KL(M ‖ Q), batchmean.
    The paper writes the Jensen-Shannon divergence ½KL(P‖M) + ½KL(Q‖M); the code's arguments are the other
    way round (F.kl_div(log P, M) is KL(M ‖ P)). # (B, K), (B, K) -> ()"""
    p = F.softmax(at_least_f32(student_logits) / temperature, dim=1)
    q = F.softmax(at_least_f32(teacher_logits) / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    batch = student_logits.shape[0]
    return 0.5 * (F.kl_div(p.log(), m, reduction="sum") + F.kl_div(q.log(), m, reduction="sum")) / batch


def agreement_adversarial_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CMI's and Fast's "decision adversarial" term: −mean over the batch of KL(softmax(t) ‖ softmax(s)) per
    sample, counting only samples on which student and teacher predict the same class (the others add 0 but
    still count in the mean). Minimising it moves the images towards disagreement. # (B, K), (B, K) -> ()"""
    log_p_student = F.log_softmax(at_least_f32(student_logits), dim=1)
    p_teacher = F.softmax(at_least_f32(teacher_logits), dim=1)
    per_sample = F.kl_div(log_p_student, p_teacher, reduction="none").sum(1)
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).to(per_sample.dtype)
    return -(per_sample * agree).mean()


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """DeepInversion's image prior R_TV (`get_image_prior_losses`, the L2 form): the sum of the Frobenius
    norms of the differences to the right, down, down-left and down-right neighbours. # (B, C, H, W) -> ()"""
    x = at_least_f32(images)
    diffs = (x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :],
             x[..., 1:, :-1] - x[..., :-1, 1:], x[..., :-1, :-1] - x[..., 1:, 1:])
    return sum(torch.linalg.vector_norm(d) for d in diffs)


def contrastive_loss(local_projection: torch.Tensor, global_projection: torch.Tensor, n_current: int,
                     temperature: float) -> torch.Tensor:
    """CMI's instance-discrimination loss (Fang et al. 2021, Eq. 6, the code's "naive implementation"):
    rows are the L2-normalised head outputs of the local views (current batch first, then the memory bank's
    cached ones), columns those of the global views, which get no gradient. logits = local · globalᵀ / τ; each
    row's positive is its own global view (the diagonal); cross-entropy per row. With cached rows the loss is
    mean(current rows) + mean(cached rows), so the current batch's gradient is not diluted by the bank size;
    without, the mean over the current rows. # (N, D), (N, D) -> ()"""
    logits = at_least_f32(local_projection) @ at_least_f32(global_projection.detach()).T / temperature
    per_row = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
    if len(per_row) > n_current:
        return per_row[:n_current].mean() + per_row[n_current:].mean()
    return per_row.mean()
