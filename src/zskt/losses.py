"""The losses of the paper and of the authors' code, as small pure functions (SPEC §3, §4, §9).

Each docstring names the equation and which variant it computes: the authors' code and the paper differ in
the KL reduction and the attention distance, and the code's forms are the defaults here.
"""

from __future__ import annotations

import math
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


# ------------------------------------------------------------------------ data-free generator family
# The generator objectives of DAFL (Chen et al. 2019), DFAD (Fang et al. 2019) and DFQ (Choi et al. 2020) as
# the zju-vipa DataFree code computes them (`datafree/synthesis/generative.py`, `datafree/hooks.py`): each
# term a small function, weighted and summed by the method (docs/data_free.md). Each computes in float32 at
# least (bf16 inputs under autocast) and keeps float64 as float64, so the step tests can compare in float64.


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def one_hot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's one-hot loss, Eq. (2) of Chen et al.: CE(t, argmax t), mean over the batch. Pushes each pseudo
    image towards a confident teacher prediction; the target is the teacher's own arg-max (no gradient through
    it).
    # (B, C) -> ()
    """
    logits = _wide(teacher_logits)
    return F.cross_entropy(logits, logits.detach().argmax(dim=1))


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """DAFL's activation loss, Eq. (3): −mean |f_T| over batch and features, f_T the teacher's penultimate
    features (the pooled input of its classifier). Minimising it makes the features large.
    # (B, D) -> ()
    """
    return -_wide(features).abs().mean()


def information_entropy_loss(teacher_logits: torch.Tensor, log_base: float | None = None) -> torch.Tensor:
    """DAFL's information-entropy loss, Eq. (4), the benchmark code's `loss_balance`: Σ_c p̄_c log p̄_c
    with p̄ = the teacher's softmax averaged over the batch, i.e. minus the entropy of the mean prediction.
    Minimising it balances the classes over the batch. Natural log as the DataFree code; DAFL's own code takes
    log10 (`log_base=10`), which only divides the term by ln 10.
    # (B, C) -> ()
    """
    p = F.softmax(_wide(teacher_logits), dim=1).mean(dim=0)
    total = (p * torch.log(p)).sum()
    return total / math.log(log_base) if log_base else total


def bn_statistic_loss(
    mean: torch.Tensor, var: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor
) -> torch.Tensor:
    """One BatchNorm layer's statistic-matching term (DFQ's BN-statistic loss, DeepInversion's R_feature) as
    the DataFree code's `DeepInversionHook` computes it: ‖μ − μ_BN‖₂ + ‖σ² − σ²_BN‖₂, plain L2 norms (not
    squared, no per-layer scale), with μ, σ² the batch mean and *biased* variance of the layer's input over
    (B, H, W).
    DFQ's paper states the matching as a divergence between the per-channel Gaussians the statistics describe;
    the code's norms are what produced the benchmark's numbers and are computed here.
    # (C,), (C,), (C,), (C,) -> ()
    """
    return torch.linalg.vector_norm(_wide(running_var) - _wide(var)) + torch.linalg.vector_norm(
        _wide(running_mean) - _wide(mean)
    )


def l1_logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's discrepancy, Eq. (5) of Fang et al. 2019: mean absolute difference of the logits, over batch and
    classes (`F.l1_loss`). The student minimises it; the generator maximises it (`−l1_logit_loss`).
    # (B, C), (B, C) -> ()
    """
    return F.l1_loss(_wide(student_logits), _wide(teacher_logits))


def kd_kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """The DataFree code's `KLDiv`: T² · KL(softmax(t/T) ‖ softmax(s/T)), summed over classes and averaged
    over the batch (`batchmean`). Its student loss and, negated, the adversarial term of DFQ and ZSKT there.
    # (B, C), (B, C) -> ()
    """
    log_p_student = F.log_softmax(_wide(student_logits) / temperature, dim=1)
    log_p_teacher = F.log_softmax(_wide(teacher_logits) / temperature, dim=1)
    # From log-probabilities (log_target): the value of kl_div(log q, p), finite where p underflows to 0.
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True) / student_logits.shape[0]
    return kl * temperature**2


# ------------------------------------------------------------------------ data-free inversion family
# DeepInversion (Yin et al. 2020), CMI (Fang et al. 2021) and Fast (Fang et al. 2022) as the zju-vipa code
# computes their terms (docs/data_free.md); float64 stays float64, as above.


class _BatchStatistics(torch.autograd.Function):
    """Per-channel mean and biased variance of a (B, C, H, W) batch with a one-pass backward.

    `torch.var_mean(dim=(0, 2, 3))` takes a slow reduction path on CPU for both memory layouts, and its
    backward three elementwise passes; inside every BN hook of a synthesis step that was a sixth of the step
    (docs/benchmarks.md). The forward is the two-pass form (the mean, then the mean square of the centred
    batch: no cancellation); the backward of g_μ·μ + g_σ²·σ² is the one fused `addcmul`
    x·(2g_σ²/n) + (g_μ − 2g_σ²·μ)/n per element, the derivative var_mean's backward computes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.numel() // x.shape[1]
        mean = x.sum(dim=(0, 2, 3)) / n
        var = (x - mean.view(1, -1, 1, 1)).square_().sum(dim=(0, 2, 3)) / n
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_mean: torch.Tensor | None, grad_var: torch.Tensor | None) -> torch.Tensor:
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
        scale = 2 * grad_var / n
        shift = grad_mean / n - scale * mean
        return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))


def batch_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over batch and space of a (B, C, H, W) batch: what a train-mode
    BatchNorm2d would normalise with, in float32 at least; differentiable (once).
    # (B, C, H, W) -> (C,), (C,)"""
    return _BatchStatistics.apply(_wide(features))


def js_divergence_clamped(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 3.0
) -> torch.Tensor:
    """The adaptive-DeepInversion competition term as both reference codes compute it (NVlabs
    `deepinversion_cifar10.py`, zju-vipa `criterions.jsdiv`): with P = softmax(s/T), Q = softmax(t/T),
    M = (P + Q)/2, each clamped to [0.01, 0.99] after M is formed, ½·KL(M ‖ P) + ½·KL(M ‖ Q), batchmean.
    The paper writes the Jensen-Shannon divergence ½KL(P‖M) + ½KL(Q‖M); the code's arguments are the other
    way round (F.kl_div(log P, M) is KL(M ‖ P)). # (B, K), (B, K) -> ()"""
    p = F.softmax(_wide(student_logits) / temperature, dim=1)
    q = F.softmax(_wide(teacher_logits) / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    batch = student_logits.shape[0]
    return 0.5 * (F.kl_div(p.log(), m, reduction="sum") + F.kl_div(q.log(), m, reduction="sum")) / batch


def agreement_adversarial_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CMI's and Fast's "decision adversarial" term: −mean over the batch of KL(softmax(t) ‖ softmax(s)) per
    sample, counting only samples on which student and teacher predict the same class (the others add 0 but
    still count in the mean). Minimising it moves the images towards disagreement. # (B, K), (B, K) -> ()"""
    log_p_student = F.log_softmax(_wide(student_logits), dim=1)
    p_teacher = F.softmax(_wide(teacher_logits), dim=1)
    per_sample = F.kl_div(log_p_student, p_teacher, reduction="none").sum(1)
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).to(per_sample.dtype)
    return -(per_sample * agree).mean()


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """DeepInversion's image prior R_TV (`get_image_prior_losses`, the L2 form): the sum of the Frobenius
    norms of the differences to the right, down, down-left and down-right neighbours. # (B, C, H, W) -> ()"""
    x = _wide(images)
    diffs = (
        x[..., :, :-1] - x[..., :, 1:],
        x[..., :-1, :] - x[..., 1:, :],
        x[..., 1:, :-1] - x[..., :-1, 1:],
        x[..., :-1, :-1] - x[..., 1:, 1:],
    )
    return sum(torch.linalg.vector_norm(d) for d in diffs)


def contrastive_loss(
    local_projection: torch.Tensor, global_projection: torch.Tensor, n_current: int, temperature: float
) -> torch.Tensor:
    """CMI's instance-discrimination loss (Fang et al. 2021, Eq. 6, the code's "naive implementation"):
    rows are the L2-normalised head outputs of the local views (current batch first, then the memory bank's
    cached ones), columns those of the global views, which get no gradient. logits = local · globalᵀ / τ; each
    row's positive is its own global view (the diagonal); cross-entropy per row. With cached rows the loss is
    mean(current rows) + mean(cached rows), so the current batch's gradient is not diluted by the bank size;
    without, the mean over the current rows. # (N, D), (N, D) -> ()"""
    logits = _wide(local_projection) @ _wide(global_projection.detach()).T / temperature
    per_row = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
    if len(per_row) > n_current:
        return per_row[:n_current].mean() + per_row[n_current:].mean()
    return per_row.mean()
