"""Seconds per synthesis iteration of DeepInversion, CMI and Fast and per student step, the reference's
semantics (tests/reference_inversion.py, written out from the zju-vipa code) beside zskt's step functions,
interleaved in one process, float32; then each method's synthesis cost per batch (iterations per batch x
seconds per iteration) beside DeepInversion's, Fast's headline ratio.

    python benchmarks/bench_inversion.py   # WRN-40-2 -> WRN-16-1, 32x32x3, synthesis batch 64, KD batch 256
    python benchmarks/bench_inversion.py --batch 256 --repeats 5 --device cuda

What the reference spends and zskt does not: the networks' weight gradients in every synthesis backward (the
reference's teacher and student keep requires_grad=True), the BN statistics through a permuted contiguous
copy, a host sync per iteration for the best batch, CMI's BN term recomputed on the local view, the eval-mode
batch-norm kernel where zskt's hooked teacher computes the same affine map in one multiply-add
(models/frozen.FrozenBatchNorm2d), and the unfolded teacher in the student step (zskt distils from the
BN-folded copy, models/frozen.py, in cache-sized chunks on the CPU). The student step runs at the scripts'
KD batch (--batch_size 256), the synthesis steps at a smaller batch than their 256 to keep this short.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
import _common as common

from zskt.methods.bn_hooks import BNStatistics
from zskt.methods.cmi import CMIConfig, ProjectionHead, cmi_step
from zskt.methods.deepinversion import DeepInversionConfig, deepinversion_step
from zskt.methods.fast import FastConfig, accumulate_maml, fast_step
from zskt.methods.inversion import crop_flip_params, resized_crop_params, student_step
from zskt.methods.nayer import NayerConfig, nayer_step
from zskt.models import build_model
from zskt.models.cmi_generator import CMIGenerator
from zskt.models.frozen import CompiledInference, frozen_copy
from zskt.models.nayer_generator import NoisyLayerGenerator, balanced_targets
from zskt.runtime import resolve_precision

from reference_inversion import (
    RefInstanceMeanHook,
    ref_cmi_iteration,
    ref_deepinversion_iteration,
    ref_fast_round,
    ref_hooks,
    ref_nayer_loop,
    ref_student_step,
)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# Synthesis iterations per batch: DeepInv-2k and CMI-500 of the published table, and the scripts' values.
PER_BATCH = {"deepinversion": (2000, 1000), "cmi": (500, 200), "fast": (10, 2), "nayer": (60, 30)}
SCRIPT_STEPS = {"deepinversion": 1000, "cmi": 200, "fast": 10, "nayer": 60}  # the CIFAR-10 scripts' per round
# (NAYER: 2 loops of --g_steps 30 after the warm-up)


def networks(teacher_name: str, student_name: str, device):
    torch.manual_seed(0)
    teacher = build_model(teacher_name, 10, 3)
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return teacher.to(device).eval(), build_model(student_name, 10, 3).to(device)


def timed(device, fn, iterations):
    def case():
        t0 = common.now(device)
        for _ in range(iterations):
            fn()
        return (common.now(device) - t0) / iterations

    fn()  # warm-up
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="wrn-40-2")
    parser.add_argument("--student", default="wrn-16-1")
    parser.add_argument("--batch", type=int, default=64, help="synthesis batch")
    parser.add_argument(
        "--student-batch", type=int, default=256, help="student (KD) batch; the scripts' --batch_size 256"
    )
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    n = args.batch
    teacher, student = networks(args.teacher, args.student, device)

    def copies():
        """A fresh (reference, zskt) pair of teacher copies, so each method's hooks see only its own forwards;
        the reference's weights keep requires_grad, as in its code."""
        return (
            copy.deepcopy(teacher).requires_grad_(True),
            frozen_copy(precision.prepare(copy.deepcopy(teacher)), fold_bn=False),  # as the commands hook it
        )

    student.eval()
    # zskt's side as the command runs it: float32 with its layout policy (channels_last on this CPU).
    precision = resolve_precision("fp32", device)
    student_ours = precision.prepare(copy.deepcopy(student)).eval()
    targets = torch.randint(0, 10, (n,), device=device)
    cases = {}

    # DeepInversion: one iteration on pixels.
    di = DeepInversionConfig(teacher="t")
    teacher_ref_di, teacher_ours_di = copies()
    low = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1).to(device)
    high = ((1 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1).to(device)
    x_ours = torch.randn(n, 3, 32, 32, device=device).requires_grad_()
    x_ref = x_ours.detach().clone().requires_grad_()
    opt_ours = torch.optim.Adam([x_ours], lr=di.generator_lr, betas=(0.5, 0.99))
    opt_ref = torch.optim.Adam([x_ref], lr=di.generator_lr, betas=(0.5, 0.99))
    hooks_ours_di, hooks_ref_di = BNStatistics(teacher_ours_di), ref_hooks(teacher_ref_di)
    weights = {"bn": di.bn, "oh": di.oh, "adv": di.adv, "tv": di.tv, "l2": di.l2}
    cases["deepinversion reference"] = timed(
        device,
        lambda: ref_deepinversion_iteration(
            x_ref, opt_ref, teacher_ref_di, student, hooks_ref_di, targets, (1, -2), True, weights, MEAN, STD
        ),
        args.iterations,
    )
    cases["deepinversion zskt"] = timed(
        device,
        lambda: deepinversion_step(
            x_ours,
            opt_ours,
            teacher_ours_di,
            student_ours,
            hooks_ours_di,
            targets,
            (1, -2),
            True,
            di,
            low,
            high,
            precision,
        ),
        args.iterations,
    )

    # CMI: one iteration of generator, z and head, with 4096 cached feature pairs as the reference draws.
    cmi = CMIConfig(teacher="t")
    teacher_ref_cmi, teacher_ours_cmi = copies()
    hooks_ref_cmi = ref_hooks(teacher_ref_cmi)
    hooks_cmi = BNStatistics(teacher_ours_cmi, keep_instance_mean=True)
    cmi_hooks_ref = ref_hooks(teacher_ref_cmi, RefInstanceMeanHook)
    dim = sum(h.module.num_features for h in hooks_cmi.hooks)
    cached = torch.randn(4096, 2 * dim, device=device)
    g = torch.Generator().manual_seed(0)
    global_aug, local_aug = crop_flip_params(n, 4, g), resized_crop_params(n, 32, generator=g)

    def cmi_parts():
        gen = CMIGenerator(256, 64, 32, 3).to(device).train()
        head = ProjectionHead(dim, cmi.head_dim).to(device)
        z = torch.randn(n, 256, device=device).requires_grad_()
        opt = torch.optim.Adam([{"params": gen.parameters()}, {"params": [z]}], lr=1e-3, betas=(0.5, 0.999))
        return gen, head, z, opt, torch.optim.Adam(head.parameters(), lr=1e-3)

    g1, h1, z1, o1, oh1 = cmi_parts()
    g1.fuse_upsample = False  # the reference's generator runs its layers as written
    g2, h2, z2, o2, oh2 = cmi_parts()
    w_cmi = {"bn": cmi.bn, "oh": cmi.oh, "adv": cmi.adv, "cr": cmi.cr, "cr_T": cmi.cr_temperature}
    cases["cmi reference"] = timed(
        device,
        lambda: ref_cmi_iteration(
            g1,
            z1,
            o1,
            h1,
            oh1,
            teacher_ref_cmi,
            student,
            hooks_ref_cmi,
            cmi_hooks_ref,
            targets,
            cached,
            global_aug,
            local_aug,
            w_cmi,
            MEAN,
            STD,
            4,
            n,
        ),
        args.iterations,
    )
    cases["cmi zskt"] = timed(
        device,
        lambda: cmi_step(
            g2,
            z2,
            o2,
            h2,
            oh2,
            teacher_ours_cmi,
            student_ours,
            hooks_cmi,
            targets,
            cached,
            global_aug,
            local_aug,
            cmi,
            MEAN,
            STD,
            4,
            precision,
        ),
        args.iterations,
    )

    # Fast: one iteration of the fast generator plus the meta-gradient accumulation (the round's meta step is
    # one Adam step on a 2.3M-parameter generator, included in the reference's last iteration only).
    fast = FastConfig(teacher="t")
    teacher_ref_fast, teacher_ours_fast = copies()
    hooks_fast, hooks_fast_ref = (
        BNStatistics(teacher_ours_fast, momentum=0.9),
        ref_hooks(teacher_ref_fast, mmt_rate=0.9),
    )
    meta1, meta2 = CMIGenerator().to(device).train(), CMIGenerator().to(device).train()
    meta1.fuse_upsample = False
    f1, f2 = meta1.clone(), meta2.clone()
    zf1, zf2 = (
        torch.randn(n, 256, device=device).requires_grad_(),
        torch.randn(n, 256, device=device).requires_grad_(),
    )
    of1 = torch.optim.Adam(
        [{"params": f1.parameters()}, {"params": [zf1], "lr": 0.01}], lr=2e-3, betas=(0.5, 0.999)
    )
    of2 = torch.optim.Adam(
        [{"params": f2.parameters()}, {"params": [zf2], "lr": 0.01}], lr=2e-3, betas=(0.5, 0.999)
    )
    mo1 = torch.optim.Adam(meta1.parameters(), lr=0.02, betas=(0.5, 0.999))
    w_fast = {"bn": fast.bn, "oh": fast.oh, "adv": fast.adv}
    aug = crop_flip_params(n, 4, g)
    cases["fast reference"] = timed(
        device,
        lambda: ref_fast_round(
            meta1,
            mo1,
            f1,
            zf1,
            of1,
            teacher_ref_fast,
            student,
            hooks_fast_ref,
            targets,
            [aug],
            w_fast,
            MEAN,
            STD,
            4,
        ),
        args.iterations,
    )

    def ours_fast():
        fast_step(
            f2,
            zf2,
            of2,
            teacher_ours_fast,
            student_ours,
            hooks_fast,
            targets,
            aug,
            fast,
            MEAN,
            STD,
            4,
            True,
            precision,
        )
        accumulate_maml(meta2, f2)

    cases["fast zskt"] = timed(device, ours_fast, args.iterations)

    # NAYER: one iteration of the noisy-layer generator (a fresh Adam per loop in both: created outside the
    # timed iteration here, as the reference's loop of g_steps iterations amortises it), adversarial on.
    nayer = NayerConfig(teacher="t")
    teacher_ref_nayer, teacher_ours_nayer = copies()
    hooks_nayer = BNStatistics(teacher_ours_nayer, momentum=nayer.bn_momentum)
    hooks_nayer_ref = ref_hooks(teacher_ref_nayer, mmt_rate=nayer.bn_momentum)
    embeddings = torch.randn(10, 512, generator=torch.Generator().manual_seed(0))
    gen_ours = NoisyLayerGenerator(embeddings, n, nz=nayer.noisy_dim, ngf=64, img_size=32, nc=3).to(device)
    gen_ref = copy.deepcopy(gen_ours)
    gen_ref.fuse_upsample = False  # the reference's layers as written
    nayer_targets = balanced_targets(n, 10, g).to(device)
    nayer_aug = crop_flip_params(n, 4, g)
    opt_nayer = torch.optim.Adam(gen_ours.parameters(), lr=nayer.generator_lr, betas=(0.5, 0.999))
    w_nayer = {
        "bn": nayer.bn,
        "oh": nayer.oh,
        "adv": nayer.adv,
        "lr_g": nayer.generator_lr,
        "num_classes": 10,
    }
    cases["nayer reference"] = timed(
        device,
        lambda: ref_nayer_loop(
            gen_ref,
            gen_ref.embeddings,
            teacher_ref_nayer,
            student,
            hooks_nayer_ref,
            nayer_targets,
            [nayer_aug],
            w_nayer,
            True,
            4,
            10,
            MEAN,
            STD,
        ),
        args.iterations,
    )
    cases["nayer zskt"] = timed(
        device,
        lambda: nayer_step(
            gen_ours,
            opt_nayer,
            teacher_ours_nayer,
            student_ours,
            hooks_nayer,
            nayer_targets,
            nayer_aug,
            nayer,
            MEAN,
            STD,
            4,
            True,
            precision,
        ),
        args.iterations,
    )

    # The student step, from the stored images to the SGD step. The reference keeps each synthesised image as
    # a PNG and reads a batch through a DataLoader (PIL decode, RandomCrop(32, 4), RandomHorizontalFlip,
    # ToTensor, Normalize; here in the main process, as its workers would on these 2 cores) and distils from
    # the unfolded teacher; zskt samples the uint8 bank on the device, crops/flips/normalises the batch at
    # once and distils from the BN-folded teacher.
    from PIL import Image

    from zskt.methods.image_bank import ImageBank
    from zskt.methods.inversion import student_images

    teacher_ref_kd, teacher_ours_kd = copies()
    folded = frozen_copy(teacher_ours_kd)
    s1, s2 = copy.deepcopy(student).train(), precision.prepare(copy.deepcopy(student)).train()
    sgd1 = torch.optim.SGD(s1.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sgd2 = torch.optim.SGD(s2.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sb = args.student_batch
    stored = torch.randint(0, 256, (4 * sb, 3, 32, 32), dtype=torch.uint8)
    png_dir = Path(tempfile.mkdtemp(prefix="bench_inversion_"))
    for i, image in enumerate(stored):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(png_dir / f"{i}.png")
    files = sorted(png_dir.glob("*.png"))
    mean_t, std_t = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def reference_batch():
        batch = []
        for k in torch.randperm(len(files))[:sb].tolist():
            img = (
                torch.from_numpy(np.array(Image.open(files[k]).convert("RGB"))).permute(2, 0, 1).float() / 255
            )
            padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
            r, c = torch.randint(0, 9, (2,)).tolist()
            img = padded[:, r : r + 32, c : c + 32]
            if torch.rand(()) < 0.5:
                img = img.flip(2)
            batch.append((img - mean_t) / std_t)
        return torch.stack(batch).to(device)

    bank = ImageBank(len(stored), device=device)
    bank.add(stored.to(device))
    cases["student step reference"] = timed(
        device, lambda: ref_student_step(s1, teacher_ref_kd, sgd1, reference_batch(), 20.0), args.iterations
    )
    cases["student step zskt"] = timed(
        device,
        lambda: student_step(
            s2, folded, sgd2, precision.layout(student_images(bank, sb, True, MEAN, STD)), 20.0, precision
        ),
        args.iterations,
    )
    # --compile-teacher: the same step, the folded teacher through torch.compile (compiled in the warm-up).
    s3 = precision.prepare(copy.deepcopy(student)).train()
    sgd3 = torch.optim.SGD(s3.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    compiled_teacher = CompiledInference(folded)
    cases["student step zskt --compile-teacher"] = timed(
        device,
        lambda: student_step(
            s3,
            compiled_teacher,
            sgd3,
            precision.layout(student_images(bank, sb, True, MEAN, STD)),
            20.0,
            precision,
        ),
        args.iterations,
    )

    times = common.interleaved(cases, args.repeats)
    info = common.machine(device)
    print(
        f"# bench_inversion: {args.teacher} -> {args.student}, 32x32x3, synthesis batch {n}, "
        f"student batch {args.student_batch}, float32"
    )
    print(f"# {common.describe_machine(info)}")
    print(f"# cpu flags: {torch.backends.cpu.get_cpu_capability()}, OMP threads {torch.get_num_threads()}")
    print()
    print("| step | reference s | zskt s | speed-up |")
    print("|---|---|---|---|")
    medians = {k: common.median(v) for k, v in times.items()}
    rows = [(w, f"{w} zskt") for w in ("deepinversion", "cmi", "fast", "nayer", "student step")]
    rows.append(("student step", "student step zskt --compile-teacher"))
    for what, ours_case in rows:
        ref, ours = medians[f"{what} reference"], medians[ours_case]
        label = what if ours_case == f"{what} zskt" else f"{what}, --compile-teacher"
        print(
            f"| {label} | {common.spread(times[f'{what} reference'])} | "
            f"{common.spread(times[ours_case])} | "
            f"{ref / ours:.2f}x |"
        )
    print()
    print("| method, scripts' round (iterations + 400 student steps) | reference s | zskt s | speed-up |")
    print("|---|---|---|---|")
    for what, k in SCRIPT_STEPS.items():
        ref = medians[f"{what} reference"] * k + 400 * medians["student step reference"]
        ours = medians[f"{what} zskt"] * k + 400 * medians["student step zskt"]
        print(f"| {what}, {k} + 400 | {ref:.0f} | {ours:.0f} | {ref / ours:.2f}x |")
    print()
    print("| method | synthesis iterations per batch | zskt s per batch | vs DeepInversion-2k |")
    print("|---|---|---|---|")
    di_batch = medians["deepinversion zskt"] * PER_BATCH["deepinversion"][0]
    for what, counts in PER_BATCH.items():
        for k in counts:
            cost = medians[f"{what} zskt"] * k
            print(f"| {what} | {k} | {cost:.1f} | {di_batch / cost:.0f}x fewer seconds |")


if __name__ == "__main__":
    main()
