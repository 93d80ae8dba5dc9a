"""Losses against hand-computed values (SPEC §3, §4, §9.3-9.4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from zskt import losses


def test_kl_mean_reduction_is_per_sample_kl_over_classes():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[0.0, 2.0, 0.0], [1.0, -1.0, 0.0]])
    p_t, p_s = t.softmax(1), s.softmax(1)
    per_sample = (p_t * (p_t.log() - p_s.log())).sum(1)  # KL(T || S) per sample
    # Authors' code: F.kl_div default 'mean' divides the total by B*C, not B (SPEC §3).
    assert torch.allclose(losses.kl_divergence(s, t), per_sample.sum() / 6)
    assert torch.allclose(losses.kl_divergence(s, t, reduction="batchmean"), per_sample.mean())


def test_kl_temperature_and_zero_when_equal():
    s = torch.randn(4, 10)
    assert losses.kl_divergence(s, s).abs() < 1e-7
    t = torch.randn(4, 10)
    expected = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="sum") / 40
    assert torch.allclose(losses.kl_divergence(s, t, temperature=4.0), expected)


def test_attention_map_by_hand():
    # One sample, two channels, 1x2 map: squares averaged over channels -> [(1+9)/2, (4+0)/2] = [5, 2].
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    expected = torch.tensor([[5.0, 2.0]]) / math.sqrt(29.0)
    assert torch.allclose(losses.attention_map(a), expected)


def test_attention_diff_is_mean_square_over_batch_and_space_and_ignores_channels():
    a = torch.tensor([[[[1.0, 0.0]]]])  # map [1, 0]
    b = torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]]]])  # two channels, map [0, 1]
    # (1-0)^2 + (0-1)^2 over 2 elements = 1.0
    assert torch.allclose(losses.attention_diff(a, b), torch.tensor(1.0))
    x = torch.randn(3, 4, 5, 5)
    assert losses.attention_diff(x, 2 * x) < 1e-12  # scale-free after normalisation


def test_zero_shot_losses_weights():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    sa = [torch.randn(8, 4, 6, 6), torch.randn(8, 8, 3, 3)]
    ta = [torch.randn(8, 16, 6, 6), torch.randn(8, 32, 3, 3)]
    kl = losses.kl_divergence(s, t)
    at = sum(losses.attention_diff(x, y) for x, y in zip(sa, ta, strict=True))
    got = losses.zero_shot_student_loss(s, sa, t, ta, beta=250.0)
    assert torch.allclose(got, kl + 250.0 * at)
    assert torch.allclose(losses.zero_shot_student_loss(s, sa, t, ta, beta=0.0), kl)
    assert torch.allclose(losses.zero_shot_generator_loss(s, t), -kl)
    assert losses.zero_shot_generator_loss(s, t) < 0


def test_kd_at_loss_weights_by_hand():
    torch.manual_seed(0)
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    sa, ta = [torch.randn(5, 3, 4, 4)], [torch.randn(5, 6, 4, 4)]
    ce = F.cross_entropy(s, y)
    kl_mean = (F.softmax(t / 4, 1) * (F.log_softmax(t / 4, 1) - F.log_softmax(s / 4, 1))).sum() / 50
    at = ((losses.attention_map(sa[0]) - losses.attention_map(ta[0])) ** 2).mean()
    # FSKT: 0.1 * CE + 2 * 0.9 * 16 * KL_mean + 1000 * AT  (KL weight 28.8)
    expected = 0.1 * ce + 28.8 * kl_mean + 1000 * at
    assert torch.allclose(losses.kd_at_loss(s, sa, y, t, ta), expected, rtol=1e-5)
    assert torch.allclose(losses.kd_at_loss(s, sa, y, None, None), ce)
    assert torch.allclose(losses.kd_at_loss(s, sa, y, t, ta, alpha=0.0, beta=0.0), ce)


@pytest.mark.parametrize(
    "layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"]
)
def test_attention_map_gradient_is_autograds(layout):
    # attention_map has its own backward for the channel mean of squares; gradcheck in float64 against finite
    # differences, and the gradient keeps the activation's memory format.
    torch.manual_seed(3)
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    assert torch.autograd.gradcheck(losses.attention_map, (x,))
    target = torch.randn(3, 24, dtype=torch.float64)
    (losses.attention_map(x) - target).pow(2).sum().backward()
    assert x.grad.is_contiguous(memory_format=layout)


def test_attention_map_gradient_in_bfloat16_matches_the_float32_chain():
    # A bf16 activation (the bf16 option's autocast) gets a bf16 gradient equal, to bf16 rounding, to the
    # plain autograd chain x.float().pow(2).mean(channels) computed in float32.
    torch.manual_seed(5)
    x32 = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    x16 = x32.to(torch.bfloat16).requires_grad_()
    ref = x16.detach().float().requires_grad_()
    target = torch.randn(4, 64)
    (losses.attention_map(x16) - target).pow(2).sum().backward()
    plain = torch.nn.functional.normalize(ref.pow(2).mean(1).flatten(1), dim=1)
    (plain - target).pow(2).sum().backward()
    assert x16.grad.dtype == torch.bfloat16 and x16.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x16.grad.float(), ref.grad, rtol=1e-2, atol=1e-2 * ref.grad.abs().max().item())


def test_attention_diff_takes_a_precomputed_teacher_map():
    torch.manual_seed(6)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3)
    assert torch.equal(losses.attention_diff(s, t), losses.attention_diff(s, losses.attention_map(t)))


def _authors_kl(s, t, temperature=1.0):
    # The authors' form: F.kl_div(log_softmax(s/T), softmax(t/T)), element mean (PyTorch 1.0's "mean").
    return (
        F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="sum")
        / s.numel()
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_equals_the_authors_form_on_ordinary_logits(temperature, dtype):
    g = torch.Generator().manual_seed(0)
    s, t = (
        3 * torch.randn(16, 10, generator=g, dtype=dtype),
        3 * torch.randn(16, 10, generator=g, dtype=dtype),
    )
    ours, authors = losses.kl_divergence(s, t, temperature), _authors_kl(s, t, temperature)
    assert ours.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(ours, authors, rtol=tol, atol=0)
    # And the gradients with respect to both sides.
    s1, t1 = s.clone().requires_grad_(), t.clone().requires_grad_()
    s2, t2 = s.clone().requires_grad_(), t.clone().requires_grad_()
    losses.kl_divergence(s1, t1, temperature).backward()
    _authors_kl(s2, t2, temperature).backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=10 * tol, atol=10 * tol * s2.grad.abs().max().item())
    torch.testing.assert_close(t1.grad, t2.grad, rtol=10 * tol, atol=10 * tol * t2.grad.abs().max().item())


def test_kl_gradient_is_finite_for_a_confident_teacher():
    # A 120-logit gap: exp(-120) underflows to 0 in float32, so one teacher probability is exactly 0.
    s = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]])
    t = torch.tensor([[120.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    assert F.softmax(t, 1)[0, 1] == 0  # the situation under test
    # The authors' form: a finite value, but NaN back through the teacher's softmax (0 · log 0).
    t_authors = t.clone().requires_grad_()
    _authors_kl(s, t_authors).backward()
    assert t_authors.grad.isnan().any()
    # Ours: the same value, finite gradients on both sides (the generator step needs the teacher side's).
    s_ours, t_ours = s.clone().requires_grad_(), t.clone().requires_grad_()
    value = losses.kl_divergence(s_ours, t_ours)
    torch.testing.assert_close(value, _authors_kl(s, t), rtol=1e-6, atol=0)
    value.backward()
    assert s_ours.grad.isfinite().all() and t_ours.grad.isfinite().all()
    # The generator-side gradient, by hand: d KL_mean / d t = p_t · (log p_t − log p_s − KL_row) / (B·C).
    log_pt, log_ps = F.log_softmax(t.double(), 1), F.log_softmax(s.double(), 1)
    kl_row = (log_pt.exp() * (log_pt - log_ps)).sum(1, keepdim=True)
    expected = log_pt.exp() * (log_pt - log_ps - kl_row) / s.numel()
    torch.testing.assert_close(t_ours.grad.double(), expected, rtol=1e-5, atol=1e-9)


def test_kl_of_bf16_logits_is_float32():
    s, t = torch.randn(4, 10).bfloat16(), torch.randn(4, 10).bfloat16()
    assert losses.kl_divergence(s, t).dtype == torch.float32
    assert losses.kd_at_loss(s, [], torch.zeros(4, dtype=torch.long), None, None).dtype == torch.float32
    assert (
        losses.kd_at_loss(s.double(), [], torch.zeros(4, dtype=torch.long), None, None).dtype == torch.float64
    )


def test_generator_step_gradient_is_finite_with_a_confident_teacher(random_wrn):
    # The generator step differentiates the KL through the teacher's softmax. A teacher whose logits on some
    # pseudo image are 100s apart (a random WRN-40-2, or a very confident trained one) has probabilities that
    # are exactly 0 in float32; the generator's gradient must still be finite (it was NaN with the authors'
    # form).
    from zskt.models import Generator

    teacher = random_wrn(0)
    with torch.no_grad():
        teacher.fc.weight.mul_(1000.0)
    torch.manual_seed(1)
    generator = Generator(16, image_size=8, out_channels=1).train()
    student = random_wrn(2).train()
    x = generator(generator.sample_z(8, generator=torch.Generator().manual_seed(0)))
    teacher_logits, _ = teacher(x)
    assert (F.softmax(teacher_logits, 1) == 0).any()  # the situation under test
    loss = losses.zero_shot_generator_loss(student(x)[0], teacher_logits)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in generator.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
