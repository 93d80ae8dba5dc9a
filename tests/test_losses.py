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
    at = sum(losses.attention_diff(x, y) for x, y in zip(sa, ta))
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


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
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
    # A bf16 activation (the bf16 option's autocast) gets a bf16 gradient equal, to bf16 rounding, to the plain
    # autograd chain x.float().pow(2).mean(channels) computed in float32.
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
