"""SLOW REFERENCE: one round of the DataFree code's generator family (CMI `datafree/synthesis/generative.py`
`GenerativeSynthesizer.synthesize()` then `datafree_kd.py` `train()`, commit acbbea6) written out literally,
for tests/test_data_free.py's float64 equality and benchmarks/bench_data_free.py's timings. The teacher keeps
`requires_grad`, its BN hooks are always on and compute the statistics through a transposed copy, all five
loss terms are computed whatever their weights, `loss.backward()` fills the student's gradients in the
generator step, and the generator's output is normalised outside it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ReferenceHook:
    """`datafree.hooks.DeepInversionHook`: always on; the last forward's ‖var_run − var‖ + ‖mean_run −
    mean‖."""

    def __init__(self, module):
        self.handle = module.register_forward_hook(self.hook_fn)

    def hook_fn(self, module, inputs, output):
        nch = inputs[0].shape[1]
        mean = inputs[0].mean([0, 2, 3])
        var = inputs[0].permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
        self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(
            module.running_mean.data - mean, 2
        )


def reference_kldiv(logits, targets, T=1.0):
    return (
        F.kl_div(F.log_softmax(logits / T, dim=1), F.softmax(targets / T, dim=1), reduction="batchmean")
        * T
        * T
    )


def teacher_with_features(teacher, x):
    """The WRN's `return_features=True`: logits and the pooled input of the classifier."""
    act3 = teacher.block3(teacher.block2(teacher.block1(teacher.conv1(x))))
    features = F.adaptive_avg_pool2d(F.relu(teacher.bn1(act3)), 1).flatten(1)
    return teacher.fc(features), features


def reference_round(
    teacher,
    student,
    generator,
    opt_g,
    opt_s,
    criterion,
    w,
    z_source,
    g_steps,
    kd_steps,
    batch_size,
    mean,
    std,
    sample_eval=True,
):
    """One pass of `for _ in range(ep_steps // kd_steps)`: `synthesizer.synthesize()` then `train(...)`.
    `mean`, `std`: (1, C, 1, 1) tensors of the normaliser, whose dtype and device the z draws take."""
    hooks = [ReferenceHook(m) for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]

    def normalizer(x):  # their Normalizer
        return (x - mean) / std

    def draw():
        return torch.randn(
            batch_size, generator.z_dim, generator=z_source, dtype=mean.dtype, device=mean.device
        )

    # synthesize()
    student.eval()
    generator.train()
    teacher.eval()
    for _ in range(g_steps):
        opt_g.zero_grad()
        inputs = normalizer(generator(draw()))
        t_out, t_feat = teacher_with_features(teacher, inputs)
        loss_bn = sum(h.r_feature for h in hooks)
        loss_oh = F.cross_entropy(t_out, t_out.max(1)[1])
        loss_act = -t_feat.abs().mean()
        if w["adv"] > 0:
            s_out = student(inputs)[0]
            loss_adv = -criterion(s_out, t_out)
        else:
            loss_adv = loss_oh.new_zeros(1)
        p = F.softmax(t_out, dim=1).mean(0)
        loss_balance = (p * torch.log(p)).sum()
        loss = (
            w["bn"] * loss_bn
            + w["oh"] * loss_oh
            + w["adv"] * loss_adv
            + w["balance"] * loss_balance
            + w["act"] * loss_act
        )
        loss.backward()
        opt_g.step()
    # train()
    student.train()
    teacher.eval()
    for _ in range(kd_steps):
        with torch.no_grad():  # sample()
            if sample_eval:
                generator.eval()
            images = normalizer(generator(draw()))
        with torch.no_grad():
            t_out = teacher_with_features(teacher, images)[0]
        s_out = student(images.detach())[0]
        loss_s = criterion(s_out, t_out.detach())
        opt_s.zero_grad()
        loss_s.backward()
        opt_s.step()
    for h in hooks:
        h.handle.remove()
