"""SLOW REFERENCE: the zju-vipa synthesisers' iterations written out literally (CMI `datafree/synthesis/
deepinversion.py`, `contrastive.py`; Fast-Datafree `fast_meta.py`, `hooks.py`, `criterions.py`,
`datafree_kd.py` `train()`), and NAYER's loop (tmtuan1307/NAYER `datafree/synthesis/nayer.py`), for the
equivalence tests and benchmarks/bench_inversion.py. Networks keep `requires_grad=True` as in the reference
(their weight gradients are computed and never used), hooks compute the statistics as the reference does
(permute, contiguous copy, var), the best batch is chosen with a host sync per iteration (`loss.item()`), and
CMI's second teacher forward recomputes the BN term. Kornia's augmentations are replaced by an independent
per-sample implementation taking the same crop parameters as zskt's (a loop of slices, and an explicit
bilinear sampler), so the two can be compared on equal draws.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bn_networks(seed=0):
    """The equivalence tests' networks, float64: a 1-channel WRN-16-1 teacher in eval mode with batch-norm
    statistics away from (0, 1), and a fresh WRN-16-1 student in eval mode."""
    from zskt.models import build_model

    torch.manual_seed(seed)
    teacher = build_model("wrn-16-1", 10, 1).double()
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    teacher.eval()
    student = build_model("wrn-16-1", 10, 1).double().eval()
    return teacher, student


class RefDeepInversionHook:
    def __init__(self, module, mmt_rate=0.0):
        self.hook = module.register_forward_hook(self.hook_fn)
        self.mmt_rate, self.mmt, self.tmp_val = mmt_rate, None, None

    def hook_fn(self, module, input, output):
        nch = input[0].shape[1]
        mean = input[0].mean([0, 2, 3])
        var = input[0].permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
        if self.mmt is None:
            r = torch.norm(module.running_var.data - var, 2) + torch.norm(module.running_mean.data - mean, 2)
        else:
            mean_mmt, var_mmt = self.mmt
            r = torch.norm(
                module.running_var.data - (1 - self.mmt_rate) * var - self.mmt_rate * var_mmt, 2
            ) + torch.norm(
                module.running_mean.data - (1 - self.mmt_rate) * mean - self.mmt_rate * mean_mmt, 2
            )
        self.r_feature = r
        self.tmp_val = (mean, var)

    def update_mmt(self):
        mean, var = self.tmp_val
        if self.mmt is None:
            self.mmt = (mean.data, var.data)
        else:
            mean_mmt, var_mmt = self.mmt
            self.mmt = (
                self.mmt_rate * mean_mmt + (1 - self.mmt_rate) * mean.data,
                self.mmt_rate * var_mmt + (1 - self.mmt_rate) * var.data,
            )

    def remove(self):
        self.hook.remove()


class RefInstanceMeanHook:
    def __init__(self, module):
        self.hook = module.register_forward_hook(self.hook_fn)

    def hook_fn(self, module, input, output):
        self.instance_mean = torch.mean(input[0], dim=[2, 3])

    def remove(self):
        self.hook.remove()


def ref_hooks(model, cls=RefDeepInversionHook, **kw):
    return [cls(m, **kw) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def ref_kldiv(logits, targets, T=1.0, reduction="batchmean"):
    q = F.log_softmax(logits / T, dim=1)
    p = F.softmax(targets / T, dim=1)
    return F.kl_div(q, p, reduction=reduction) * (T * T)


def ref_jsdiv(logits, targets, T=1.0, reduction="batchmean"):
    P = F.softmax(logits / T, dim=1)
    Q = F.softmax(targets / T, dim=1)
    M = 0.5 * (P + Q)
    P = torch.clamp(P, 0.01, 0.99)
    Q = torch.clamp(Q, 0.01, 0.99)
    M = torch.clamp(M, 0.01, 0.99)
    return 0.5 * F.kl_div(torch.log(P), M, reduction=reduction) + 0.5 * F.kl_div(
        torch.log(Q), M, reduction=reduction
    )


def ref_tv(x):
    diff1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    diff2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    diff3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    diff4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return torch.norm(diff1) + torch.norm(diff2) + torch.norm(diff3) + torch.norm(diff4)


def ref_clip_images(image_tensor, mean, std):
    for c in range(image_tensor.shape[1]):
        m, s = mean[c], std[c]
        image_tensor[:, c] = torch.clamp(image_tensor[:, c], -m / s, (1 - m) / s)
    return image_tensor


def ref_normalize(x, mean, std):
    m = torch.as_tensor(mean, dtype=x.dtype)[None, :, None, None]
    s = torch.as_tensor(std, dtype=x.dtype)[None, :, None, None]
    return (x - m) / s


def ref_crop_flip(x, offsets, flips, pad):
    padded = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    out = []
    for i in range(len(x)):
        r, c = int(offsets[i, 0]), int(offsets[i, 1])
        img = padded[i, :, r : r + h, c : c + w]
        out.append(torch.flip(img, dims=(2,)) if flips[i] else img)
    return torch.stack(out)


def ref_resized_crop(x, boxes, flips):
    """Bilinear resampling of box (x0, y0, w, h) to the full size: output pixel i reads input coordinate
    x0 + (i + ½)·w/W − ½ (pixel centres), clamped to the image (border), as an affine warp of the whole
    image."""
    n, _, height, width = x.shape
    out = []
    for k in range(n):
        x0, y0, bw, bh = (float(v) for v in boxes[k])
        cols = (x0 + (torch.arange(width, dtype=x.dtype) + 0.5) * bw / width - 0.5).clamp(0, width - 1)
        rows = (y0 + (torch.arange(height, dtype=x.dtype) + 0.5) * bh / height - 0.5).clamp(0, height - 1)
        if flips[k]:
            cols = cols.flip(0)
        c0, r0 = cols.floor().long(), rows.floor().long()
        c1, r1 = (c0 + 1).clamp(max=width - 1), (r0 + 1).clamp(max=height - 1)
        fc, fr = cols - c0, rows - r0
        img = x[k]
        top = img[:, r0][:, :, c0] * (1 - fc) + img[:, r0][:, :, c1] * fc
        bottom = img[:, r1][:, :, c0] * (1 - fc) + img[:, r1][:, :, c1] * fc
        out.append(top * (1 - fr)[:, None] + bottom * fr[:, None])
    return torch.stack(out)


def ref_deepinversion_iteration(
    inputs, optimizer, teacher, student, hooks, targets, shift, flip, w, mean, std
):
    """One iteration of DeepInvSyntheiszer.synthesize (w: dict of bn, oh, adv, tv, l2)."""
    inputs_aug = torch.roll(inputs, shifts=shift, dims=(2, 3))
    if flip:
        inputs_aug = torch.flip(inputs_aug, dims=(3,))
    t_out = teacher(inputs_aug)[0]
    loss_bn = sum([h.r_feature for h in hooks])
    loss_oh = F.cross_entropy(t_out, targets)
    s_out = student(inputs_aug)[0]
    loss_adv = -ref_jsdiv(s_out, t_out, T=3)
    loss_tv = ref_tv(inputs)
    loss_l2 = torch.norm(inputs, 2)
    loss = w["bn"] * loss_bn + w["oh"] * loss_oh + w["adv"] * loss_adv + w["tv"] * loss_tv + w["l2"] * loss_l2
    best_cost = loss.item()  # the reference's host sync per iteration
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    inputs.data = ref_clip_images(inputs.data, mean, std)
    return best_cost


def ref_cmi_iteration(
    generator,
    z,
    optimizer,
    head,
    optimizer_head,
    teacher,
    student,
    hooks,
    cmi_hooks,
    targets,
    cached,
    global_aug,
    local_aug,
    w,
    mean,
    std,
    pad,
    synthesis_batch_size,
):
    """One iteration of CMISynthesizer.synthesize (w: bn, oh, adv, cr, cr_T)."""
    inputs = generator(z)
    global_view = ref_normalize(ref_crop_flip(inputs, *global_aug, pad), mean, std)
    local_view = ref_normalize(ref_resized_crop(inputs, *local_aug), mean, std)
    t_out = teacher(global_view)[0]
    loss_bn = sum([h.r_feature for h in hooks])
    loss_oh = F.cross_entropy(t_out, targets)
    s_out = student(global_view)[0]
    mask = (s_out.max(1)[1] == t_out.max(1)[1]).float()
    loss_adv = -(ref_kldiv(s_out, t_out, reduction="none").sum(1) * mask).mean()
    loss_inv = w["bn"] * loss_bn + w["oh"] * loss_oh + w["adv"] * loss_adv
    global_feature = torch.cat([h.instance_mean for h in cmi_hooks], dim=1)
    _ = teacher(local_view)
    local_feature = torch.cat([h.instance_mean for h in cmi_hooks], dim=1)
    cached_local_feature, cached_global_feature = torch.chunk(cached, chunks=2, dim=1)
    proj_feature = head(
        torch.cat([local_feature, cached_local_feature, global_feature, cached_global_feature], dim=0)
    )
    proj_local_feature, proj_global_feature = torch.chunk(proj_feature, chunks=2, dim=0)
    cr_logits = torch.mm(proj_local_feature, proj_global_feature.detach().T) / w["cr_T"]
    cr_labels = torch.arange(start=0, end=len(cr_logits))
    loss_cr = F.cross_entropy(cr_logits, cr_labels, reduction="none")
    loss_cr = loss_cr[:synthesis_batch_size].mean() + loss_cr[synthesis_batch_size:].mean()
    loss = w["cr"] * loss_cr + loss_inv
    best_cost = loss.item()
    optimizer.zero_grad()
    optimizer_head.zero_grad()
    loss.backward()
    optimizer.step()
    optimizer_head.step()
    return best_cost, inputs.data


def ref_fomaml_grad(src, tar):
    for p, tar_p in zip(src.parameters(), tar.parameters(), strict=False):
        if p.grad is None:
            p.grad = torch.zeros(p.size(), dtype=p.dtype)
        p.grad.data.add_(tar_p.grad.data)


def ref_fast_round(
    meta_generator,
    meta_optimizer,
    fast_generator,
    z,
    optimizer,
    teacher,
    student,
    hooks,
    targets,
    augs,
    w,
    mean,
    std,
    pad,
):
    """The g_steps iterations of FastMetaSynthesizer.synthesize (is_maml=1, adversarial on), meta step
    included; `augs` holds each iteration's (offsets, flips)."""
    iterations = len(augs)
    for it in range(iterations):
        inputs = fast_generator(z)
        inputs_aug = ref_normalize(ref_crop_flip(inputs, *augs[it], pad), mean, std)
        t_out = teacher(inputs_aug)[0]
        loss_bn = sum([h.r_feature for h in hooks])
        loss_oh = F.cross_entropy(t_out, targets)
        s_out = student(inputs_aug)[0]
        mask = (s_out.max(1)[1] == t_out.max(1)[1]).float()
        loss_adv = -(ref_kldiv(s_out, t_out, reduction="none").sum(1) * mask).mean()
        loss = w["bn"] * loss_bn + w["oh"] * loss_oh + w["adv"] * loss_adv
        _ = loss.item()
        optimizer.zero_grad()
        loss.backward()
        if it == 0:
            meta_optimizer.zero_grad()
        ref_fomaml_grad(meta_generator, fast_generator)
        if it == iterations - 1:
            meta_optimizer.step()
        optimizer.step()
    for h in hooks:
        h.update_mmt()


def ref_student_step(student, teacher, optimizer, images, T):
    """datafree_kd.py train(): one KD step."""
    with torch.no_grad():
        t_out = teacher(images)[0]
    s_out = student(images.detach())[0]
    loss_s = ref_kldiv(s_out, t_out.detach(), T=T)
    optimizer.zero_grad()
    loss_s.backward()
    optimizer.step()
    return loss_s


# ------------------------------------------------------------------ NAYER (tmtuan1307/NAYER), literally


def ref_nl_forward(gen, label_emb, targets, nl):
    """NLGenerator.forward: embeddings, BN1d, the noisy layer of each block of `nl` rows, l1, conv_blocks
    (the layers as written: nn.Upsample then the 3x3 conv)."""
    le = label_emb[targets]
    le = gen.n1(le)
    v = None
    for i in range(len(gen.le1)):
        if (i + 1) * nl > le.shape[0]:  # noqa: SIM108 (as written)
            sle = le[i * nl :]
        else:
            sle = le[i * nl : (i + 1) * nl]
        sv = gen.le1[i](sle)
        v = sv if v is None else torch.cat((v, sv))
    out = gen.l1(v)
    out = out.view(out.shape[0], -1, gen.init_size, gen.init_size)
    return gen.conv_blocks(out)


def ref_custom_cross_entropy(preds, target):
    return torch.mean(torch.sum(-target * preds.log_softmax(dim=-1), dim=-1))


def ref_generate_ys(targets, num_classes, cr=0.0, dtype=torch.float64):
    ys = torch.zeros(len(targets), num_classes, dtype=dtype)
    ys.fill_(cr / (num_classes - 1))
    ys.scatter_(1, targets.unsqueeze(1), (1 - cr))
    return ys


def ref_nayer_loop(
    gen, label_emb, teacher, student, hooks, targets, augs, w, adversarial, pad, nl, mean, std
):
    """One `for gs in range(g_loops)` pass of NAYER.synthesize after `re_init_le` and the target draw: a fresh
    Adam over the generator, g_steps iterations (one per entry of `augs`), the best batch, update_mmt."""
    ys = ref_generate_ys(targets, w["num_classes"], dtype=next(gen.parameters()).dtype)
    optimizer = torch.optim.Adam([{"params": gen.parameters()}], lr=w["lr_g"], betas=[0.5, 0.999])
    best_cost, best_inputs, costs = 1e6, None, []
    for aug in augs:
        inputs = ref_nl_forward(gen, label_emb, targets, nl)
        inputs_aug = ref_normalize(ref_crop_flip(inputs, *aug, pad), mean, std)
        t_out = teacher(inputs_aug)[0]
        loss_bn = sum([h.r_feature for h in hooks])
        loss_oh = ref_custom_cross_entropy(t_out, ys.detach())
        if w["adv"] > 0 and adversarial:
            s_out = student(inputs_aug)[0]
            mask = (s_out.max(1)[1] == t_out.max(1)[1]).float()
            loss_adv = -(ref_kldiv(s_out, t_out, reduction="none").sum(1) * mask).mean()
        else:
            loss_adv = loss_oh.new_zeros(1)
        loss = w["bn"] * loss_bn + w["oh"] * loss_oh + w["adv"] * loss_adv
        with torch.no_grad():
            if best_cost > loss.item() or best_inputs is None:
                best_cost = loss.item()
                best_inputs = inputs.data
        costs.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for h in hooks:
        h.update_mmt()
    return best_inputs, costs
