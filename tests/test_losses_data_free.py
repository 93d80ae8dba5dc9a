"""The data-free generator family's loss terms against hand-computed values, and the BN-statistic hook
(docs/data_free.md)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zskt import losses
from zskt.errors import ZsktError
from zskt.methods.bn_hooks import BNStatisticHook


def test_one_hot_loss_is_cross_entropy_with_the_teachers_argmax():
    t = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # Sample 1: target 0, -log(e^2 / (e^2 + 1)); sample 2: target 1, -log(e / (e + 1)).
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert losses.one_hot_loss(t).item() == pytest.approx(expected, rel=1e-6)
    # The target carries no gradient: the gradient is softmax - onehot(argmax), over B.
    t = t.clone().requires_grad_()
    losses.one_hot_loss(t).backward()
    grad = (F.softmax(t.detach(), 1) - torch.eye(2)) / 2
    assert torch.allclose(t.grad, grad)


def test_activation_loss_is_minus_mean_absolute_feature():
    f = torch.tensor([[1.0, -3.0], [0.0, 2.0]])
    assert losses.activation_loss(f).item() == pytest.approx(-1.5)


def test_information_entropy_loss_is_minus_entropy_of_the_mean_prediction():
    # Two samples that are each certain of a different class: mean prediction (1/2, 1/2), entropy ln 2.
    t = torch.tensor([[100.0, 0.0], [0.0, 100.0]])
    assert losses.information_entropy_loss(t).item() == pytest.approx(-math.log(2), rel=1e-5)
    # DAFL's own code: log10.
    assert losses.information_entropy_loss(t, log_base=10).item() == pytest.approx(-math.log10(2), rel=1e-5)
    # Balanced is the minimum: all samples on one class gives ~0.
    same = torch.tensor([[100.0, 0.0], [100.0, 0.0]])
    assert losses.information_entropy_loss(same).item() == pytest.approx(0.0, abs=1e-6)
    # A uniform mean prediction over C classes gives -ln C.
    assert losses.information_entropy_loss(torch.zeros(3, 5)).item() == pytest.approx(-math.log(5), rel=1e-6)


def test_bn_statistic_loss_is_the_sum_of_two_l2_norms():
    mean, var = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    running_mean, running_var = torch.tensor([1.0, 5.0]), torch.tensor([0.0, 0.0])
    # ||(0, -3)|| + ||(-3, -4)|| = 3 + 5 (not squared)
    assert losses.bn_statistic_loss(mean, var, running_mean, running_var).item() == pytest.approx(8.0)
    assert losses.bn_statistic_loss(mean, var, mean, var).item() == 0.0


def test_l1_logit_loss_and_kd_kl_loss():
    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert losses.l1_logit_loss(s, t).item() == pytest.approx(1.5)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    p_t = F.softmax(t / 3, 1)
    per_sample = (p_t * (p_t.log() - F.log_softmax(s / 3, 1))).sum(1)
    expected = 9 * per_sample.mean().item()
    assert losses.kd_kl_loss(s, t, temperature=3.0).item() == pytest.approx(expected, rel=1e-5)
    assert losses.kd_kl_loss(s, s).item() == pytest.approx(0.0, abs=1e-6)


def test_bn_statistic_hook_matches_hand_computed_statistics_and_is_off_outside_recording():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.BatchNorm2d(3)).eval()
    for bn in (model[1], model[3]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    hook = BNStatisticHook(model)
    x = torch.randn(4, 2, 5, 5)
    model(x)
    assert hook.terms == []  # not recording: nothing computed
    with hook.recording():
        model(x)
    expected = 0.0
    inputs = [model[0](x), model[2](model[1](model[0](x)))]
    for bn, a in zip((model[1], model[3]), inputs, strict=True):
        flat = a.permute(1, 0, 2, 3).reshape(3, -1)  # the reference's permute/view form
        mean, var = flat.mean(1), flat.var(1, unbiased=False)
        expected += (bn.running_var - var).norm() + (bn.running_mean - mean).norm()
    assert hook.loss().item() == pytest.approx(float(expected.detach()), rel=1e-5)
    hook.remove()
    with hook.recording():
        model(x)
    assert hook.terms == []


def test_bn_statistic_hook_needs_batch_norms():
    with pytest.raises(ZsktError, match="no BatchNorm2d"):
        BNStatisticHook(nn.Sequential(nn.Conv2d(1, 1, 1)))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_batch_statistics_are_var_mean_and_their_gradient_is_var_means(layout):
    # The one-pass backward against autograd through torch.var_mean, in float64 on both memory layouts, with
    # either output unused (its gradient None) and a numerical check of the Jacobian.
    torch.manual_seed(0)
    x0 = (torch.randn(4, 3, 5, 6, dtype=torch.float64) * 0.7 + 2.0).to(memory_format=layout)
    x_ref, x = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    var_ref, mean_ref = torch.var_mean(x_ref, dim=(0, 2, 3), correction=0)
    mean, var = losses.batch_statistics(x)
    torch.testing.assert_close(mean, mean_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(var, var_ref, rtol=0, atol=1e-12)
    (var_ref.sin().sum() + mean_ref.cos().sum()).backward()
    (var.sin().sum() + mean.cos().sum()).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)
    for pick in (0, 1):
        g = torch.autograd.grad(losses.batch_statistics(x)[pick].square().sum(), x)[0]
        g_ref = torch.autograd.grad(
            torch.var_mean(x, dim=(0, 2, 3), correction=0)[1 - pick].square().sum(), x
        )[0]
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda t: losses.batch_statistics(t), (x0[:2, :, :3, :3].clone().requires_grad_(),)
    )
    # Half-precision activations are measured in float32.
    assert losses.batch_statistics(x0.to(torch.bfloat16))[1].dtype == torch.float32
