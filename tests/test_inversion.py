"""DeepInversion, CMI and Fast: the losses against hand-computed values, one synthesis step and one student
step of each against the reference's semantics written out literally (tests/reference_inversion.py) in
float64, the image bank's bound and resume, and the commands end to end at toy size."""

import copy
import json
import math

import pytest
import torch

from zskt.losses import (
    agreement_adversarial_loss,
    bn_statistic_loss,
    contrastive_loss,
    js_divergence_clamped,
    kd_kl_loss,
    total_variation,
)
from zskt.methods.bn_hooks import BNStatistics
from zskt.methods.cmi import CMIConfig, ProjectionHead, cmi_step
from zskt.methods.deepinversion import DeepInversionConfig, deepinversion_step
from zskt.methods.fast import FastConfig, accumulate_maml, fast_step
from zskt.methods.image_bank import ImageBank, to_uint8
from zskt.methods.inversion import crop_flip_params, resized_crop_params, student_step
from zskt.models import build_model, frozen_copy
from zskt.models.cmi_generator import CMIGenerator

from reference_inversion import (
    RefDeepInversionHook,
    RefInstanceMeanHook,
    bn_networks,
    ref_cmi_iteration,
    ref_deepinversion_iteration,
    ref_fast_round,
    ref_hooks,
    ref_jsdiv,
    ref_kldiv,
    ref_student_step,
)

MEAN, STD = (0.3,), (0.3,)


# ------------------------------------------------------------------------------------- losses


def test_bn_statistic_loss_hand_values():
    mean, var = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])
    running_mean, running_var = torch.tensor([0.0, 0.0]), torch.tensor([4.0, 1.0])
    # ‖(4, 1) − (1, 1)‖ + ‖(0, 0) − (1, 2)‖ = 3 + √5
    assert bn_statistic_loss(mean, var, running_mean, running_var).item() == pytest.approx(3 + math.sqrt(5))


def test_bn_hook_zero_at_running_statistics_and_equal_to_reference_elsewhere():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3).double().eval()
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64) * 2 + 1
    bn.running_mean.copy_(x.mean((0, 2, 3)))
    bn.running_var.copy_(x.var((0, 2, 3), unbiased=False))
    hooks = BNStatistics(bn)
    bn(x)
    assert hooks.loss().item() == pytest.approx(0.0, abs=1e-12)
    ref = RefDeepInversionHook(bn)
    other = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    bn(other)
    assert hooks.loss().item() > 0.1
    assert torch.allclose(hooks.loss(), ref.r_feature, rtol=0, atol=1e-12)


def test_bn_hook_momentum_matches_reference():
    torch.manual_seed(1)
    bn = torch.nn.BatchNorm2d(2).double().eval()
    hooks, ref = BNStatistics(bn, momentum=0.9), RefDeepInversionHook(bn, 0.9)
    for _ in range(3):
        bn(torch.randn(4, 2, 3, 3, dtype=torch.float64))
        assert torch.allclose(hooks.loss(), ref.r_feature, rtol=0, atol=1e-12)
        hooks.update_momentum()
        ref.update_mmt()


def test_contrastive_loss_hand_case():
    eye = torch.eye(2, dtype=torch.float64)
    # logits = I / 1: each row's positive scores 1, the other 0: CE = log(1 + e^-1) per row
    per_row = math.log(1 + math.exp(-1))
    assert contrastive_loss(eye, eye, n_current=2, temperature=1.0).item() == pytest.approx(per_row)
    # one current row, one cached: mean of each part, summed
    assert contrastive_loss(eye, eye, n_current=1, temperature=1.0).item() == pytest.approx(2 * per_row)
    # temperature 0.5 doubles the logits
    assert contrastive_loss(eye, eye, 2, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_divergences_match_reference_forms():
    torch.manual_seed(2)
    s, t = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    assert torch.allclose(js_divergence_clamped(s, t, 3.0), ref_jsdiv(s, t, T=3))
    assert torch.allclose(kd_kl_loss(s, t, 20.0), ref_kldiv(s, t, T=20))
    mask = (s.argmax(1) == t.argmax(1)).double()
    expected = -(ref_kldiv(s, t, reduction="none").sum(1) * mask).mean()
    assert torch.allclose(agreement_adversarial_loss(s, t), expected)
    t2 = s.clone()  # full agreement: the plain negative KL, which is 0 for equal logits
    assert agreement_adversarial_loss(s, t2).item() == pytest.approx(0.0, abs=1e-12)


def test_total_variation_hand_case():
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    x[0, 0, 0, 0] = 1.0
    # right diffs (1, 0) -> 1; down (1, 0) -> 1; down-left: x[1,0] - x[0,1] = 0; down-right: 1 -> total 3
    assert total_variation(x).item() == pytest.approx(3.0)


# ------------------------------------------------------------------------------------- networks


def _close_params(a, b, atol=1e-10):
    return all(torch.allclose(p, q, rtol=0, atol=atol) for p, q in zip(a, b, strict=True))


def test_deepinversion_step_equals_reference():
    teacher, student = bn_networks()
    cfg = DeepInversionConfig(teacher="t.pt", l2=0.01)
    torch.manual_seed(3)
    x0 = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3])
    low, high = torch.tensor(-MEAN[0] / STD[0]).double(), torch.tensor((1 - MEAN[0]) / STD[0]).double()

    ours = x0.clone().requires_grad_()
    opt = torch.optim.Adam([ours], lr=cfg.generator_lr, betas=(0.5, 0.99))
    hooked = frozen_copy(teacher, fold_bn=False)  # zskt's teacher, as the commands build it
    hooks = BNStatistics(hooked)
    for shift, flip in (((1, -2), True), ((0, 2), False)):
        terms = deepinversion_step(ours, opt, hooked, student, hooks, targets, shift, flip, cfg, low, high)
    hooks.remove()

    ref_x = x0.clone().requires_grad_()
    ref_opt = torch.optim.Adam([ref_x], lr=cfg.generator_lr, betas=(0.5, 0.99))
    rhooks = ref_hooks(teacher)
    weights = {"bn": cfg.bn, "oh": cfg.oh, "adv": cfg.adv, "tv": cfg.tv, "l2": cfg.l2}
    teacher.requires_grad_(True)
    for shift, flip in (((1, -2), True), ((0, 2), False)):
        cost = ref_deepinversion_iteration(
            ref_x, ref_opt, teacher, student, rhooks, targets, shift, flip, weights, MEAN, STD
        )
    # Adam's first steps divide each gradient by its own magnitude (+1e-8): pixels whose gradient is ~1e-8
    # turn float64 rounding of the two summation orders into ~1e-7 differences; anything real would be ~lr =
    # 0.1.
    assert terms["loss"].item() == pytest.approx(cost, rel=1e-9)
    assert torch.allclose(ours.detach(), ref_x.detach(), rtol=0, atol=1e-6)
    assert not torch.equal(ours.detach(), x0)


def test_cmi_step_equals_reference():
    teacher, student = bn_networks(1)
    cfg = CMIConfig(teacher="t.pt")
    torch.manual_seed(4)
    gen = CMIGenerator(nz=8, ngf=4, img_size=16, nc=1).double().train()
    head = ProjectionHead(
        sum(m.num_features for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)), 16
    ).double()
    z0 = torch.randn(4, 8, dtype=torch.float64)
    targets = torch.tensor([1, 1, 5, 7])
    cached = torch.randn(3, 2 * head.head[0].in_features, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    global_aug, local_aug = crop_flip_params(4, 2, g), resized_crop_params(4, 16, generator=g)
    gen_ref, head_ref = copy.deepcopy(gen), copy.deepcopy(head)
    gen_ref.fuse_upsample = False  # the reference's layers as written: nn.Upsample, then the 3x3 conv

    z = z0.clone().requires_grad_()
    opt = torch.optim.Adam(
        [{"params": gen.parameters()}, {"params": [z]}], lr=cfg.generator_lr, betas=(0.5, 0.999)
    )
    opt_head = torch.optim.Adam(head.parameters(), lr=cfg.generator_lr)
    hooked = frozen_copy(teacher, fold_bn=False)  # zskt's teacher, as the commands build it
    hooks = BNStatistics(hooked, keep_instance_mean=True)
    terms, images, features = cmi_step(
        gen,
        z,
        opt,
        head,
        opt_head,
        hooked,
        student,
        hooks,
        targets,
        cached,
        global_aug,
        local_aug,
        cfg,
        MEAN,
        STD,
        2,
    )
    hooks.remove()

    z_ref = z0.clone().requires_grad_()
    opt_ref = torch.optim.Adam(
        [{"params": gen_ref.parameters()}, {"params": [z_ref]}], lr=cfg.generator_lr, betas=(0.5, 0.999)
    )
    opt_head_ref = torch.optim.Adam(head_ref.parameters(), lr=cfg.generator_lr)
    teacher.requires_grad_(True)
    rhooks, cmi_hooks = ref_hooks(teacher), ref_hooks(teacher, RefInstanceMeanHook)
    weights = {"bn": cfg.bn, "oh": cfg.oh, "adv": cfg.adv, "cr": cfg.cr, "cr_T": cfg.cr_temperature}
    cost, ref_images = ref_cmi_iteration(
        gen_ref,
        z_ref,
        opt_ref,
        head_ref,
        opt_head_ref,
        teacher,
        student,
        rhooks,
        cmi_hooks,
        targets,
        cached,
        global_aug,
        local_aug,
        weights,
        MEAN,
        STD,
        2,
        4,
    )
    assert terms["loss"].item() == pytest.approx(cost, rel=1e-12)
    assert torch.allclose(images, ref_images, rtol=0, atol=1e-12)
    assert _close_params(gen.parameters(), gen_ref.parameters())
    assert _close_params(head.parameters(), head_ref.parameters())
    assert torch.allclose(z.detach(), z_ref.detach(), rtol=0, atol=1e-12)
    assert features.shape == (4, cached.shape[1])


def test_fast_round_equals_reference():
    teacher, student = bn_networks(2)
    cfg = FastConfig(teacher="t.pt", g_steps=2)
    torch.manual_seed(5)
    meta = CMIGenerator(nz=8, ngf=4, img_size=16, nc=1).double().train()
    meta_ref, meta_init = copy.deepcopy(meta), copy.deepcopy(meta)
    meta_ref.fuse_upsample = False  # the reference's layers as written (its clones inherit this)
    z0 = torch.randn(4, 8, dtype=torch.float64)
    targets = torch.tensor([3, 0, 9, 2])
    g = torch.Generator().manual_seed(1)
    augs = [crop_flip_params(4, 2, g) for _ in range(2)]

    def run(meta, synth_round):
        fast = meta.clone()
        z = z0.clone().requires_grad_()
        opt = torch.optim.Adam(
            [{"params": fast.parameters()}, {"params": [z], "lr": cfg.z_lr}],
            lr=cfg.generator_lr,
            betas=(0.5, 0.999),
        )
        meta_opt = torch.optim.Adam(meta.parameters(), lr=cfg.generator_lr * 2, betas=(0.5, 0.999))
        synth_round(fast, z, opt, meta_opt)
        return fast, z

    hooked = frozen_copy(teacher, fold_bn=False)  # zskt's teacher, as the commands build it
    hooks = BNStatistics(hooked, momentum=cfg.bn_momentum)
    hooks.hooks[0].average = None

    def ours(fast, z, opt, meta_opt):
        meta_opt.zero_grad(set_to_none=True)
        for aug in augs:
            fast_step(fast, z, opt, hooked, student, hooks, targets, aug, cfg, MEAN, STD, 2, True)
            accumulate_maml(meta, fast)
        meta_opt.step()
        hooks.update_momentum()

    fast, z = run(meta, ours)
    hooks.remove()
    teacher.requires_grad_(True)
    rhooks = ref_hooks(teacher, mmt_rate=cfg.bn_momentum)
    weights = {"bn": cfg.bn, "oh": cfg.oh, "adv": cfg.adv}
    fast_ref, z_ref = run(
        meta_ref,
        lambda f, zz, o, mo: ref_fast_round(
            meta_ref, mo, f, zz, o, teacher, student, rhooks, targets, augs, weights, MEAN, STD, 2
        ),
    )
    assert _close_params(meta.parameters(), meta_ref.parameters())
    assert _close_params(fast.parameters(), fast_ref.parameters())
    assert torch.allclose(z.detach(), z_ref.detach(), rtol=0, atol=1e-12)
    for ours_hook, ref_hook in zip(hooks.hooks, rhooks, strict=True):
        assert torch.allclose(ours_hook.average[1], ref_hook.mmt[1], rtol=0, atol=1e-12)
    assert not _close_params(meta.parameters(), meta_init.parameters(), atol=1e-4)  # the meta step moved it


def test_student_step_equals_reference():
    teacher, _ = bn_networks(3)
    torch.manual_seed(6)
    student = build_model("wrn-16-1", 10, 1).double().train()
    student_ref = copy.deepcopy(student)
    # 130 images: zskt's folded teacher answers them in parts of 64 on the CPU (Precision.inference_chunk).
    x = torch.randn(130, 1, 16, 16, dtype=torch.float64)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt_ref = torch.optim.SGD(student_ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    folded = frozen_copy(teacher)
    for _ in range(2):
        loss = student_step(student, folded, opt, x, 20.0)
        loss_ref = ref_student_step(student_ref, teacher, opt_ref, x, 20.0)
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-12)
    assert _close_params(student.parameters(), student_ref.parameters())
    assert _close_params(student.buffers(), student_ref.buffers())


# ------------------------------------------------------------------------------------- image bank


def _batch(first, n=3):
    return torch.arange(first, first + n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()


def test_image_bank_bound_counts_and_files(tmp_path):
    bank = ImageBank(5, root=tmp_path, seed=0)
    for first in (0, 3, 6):
        bank.add(_batch(first))
    assert bank.counts() == {"images_synthesized": 9, "images_kept": 5}
    assert bank.all_images()[:, 0, 0, 0].tolist() == [4, 5, 6, 7, 8]  # oldest dropped first
    bank.state_dict()  # a checkpoint deletes the files of shards no longer kept
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["000000003.npy", "000000006.npy"]
    assert json.loads((tmp_path / "index.json").read_text())["images_synthesized"] == 9
    seen = torch.cat([bank.sample(2) for _ in range(3)])[:, 0, 0, 0].tolist()  # a pass: 2, 2, then the last 1
    assert sorted(seen) == [4, 5, 6, 7, 8]
    assert to_uint8(torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0])).tolist() == [0, 0, 127, 255, 255]


def test_image_bank_resume_reproduces_contents_and_sampling(tmp_path):
    bank = ImageBank(5, root=tmp_path, seed=1)
    for first in (0, 3, 6):
        bank.add(_batch(first))
    bank.sample(2)
    state = copy.deepcopy(bank.state_dict())
    bank.add(_batch(9))  # after the checkpoint: the resumed run redoes it
    resumed = ImageBank(5, root=tmp_path, seed=99)
    resumed.load_state_dict(state)
    assert not (tmp_path / "000000009.npy").exists()
    assert resumed.counts() == {"images_synthesized": 9, "images_kept": 5}
    original = ImageBank(5, root=tmp_path / "other", seed=1)
    for first in (0, 3, 6):
        original.add(_batch(first))
    original.sample(2)
    assert torch.equal(resumed.all_images(), original.all_images())
    for _ in range(4):
        assert torch.equal(resumed.sample(2), original.sample(2))
    resumed.add(_batch(9))
    original.add(_batch(9))
    assert torch.equal(resumed.sample(5), original.sample(5))


def test_image_bank_missing_shard_is_a_one_line_error(tmp_path):
    from zskt.errors import ZsktError

    bank = ImageBank(10, root=tmp_path)
    bank.add(_batch(0))
    state = bank.state_dict()
    (tmp_path / "000000000.npy").unlink()
    with pytest.raises(ZsktError, match="--overwrite"):
        ImageBank(10, root=tmp_path).load_state_dict(state)


# ------------------------------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    from zskt.models import save_model

    torch.manual_seed(0)
    teacher = build_model("wrn-16-1", 10, 1)
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    save_model(teacher, path, dataset="digits", image_size=16)
    return path


@pytest.mark.parametrize("method", ["deepinversion", "cmi", "fast"])
def test_command_end_to_end_and_resume(method, digits_teacher, tmp_path, monkeypatch):
    from zskt.cli import main

    args = [
        method,
        "--teacher",
        str(digits_teacher),
        "--dataset",
        "digits",
        "-N",
        "3",
        "--kd-steps",
        "2",
        "--g-steps",
        "2",
        "--batch-size",
        "8",
        "--synthesis-batch-size",
        "8",
        "--eval-every",
        "1",
        "--warmup",
        "1",
        "--bank-size",
        "16",
        "--device",
        "cpu",
        "--quiet",
    ]
    if method == "cmi":
        args += ["--n-neg", "4", "--feature-bank-size", "16"]
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["images_synthesized"] == 24 and result["images_kept"] == 16
    assert 0 <= result["test_accuracy"] <= 100
    assert (out / "model.pt").is_file() and (out / "synthetic.png").is_file()
    assert len(list((out / "bank").glob("*.npy"))) == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]

    # A run stopped after its round-2 checkpoint and resumed ends with the uninterrupted run's student.
    from zskt.models import load_model
    from zskt.runlog import RunLog

    original = RunLog.save_checkpoint

    def save_then_stop(self, state):
        original(self, state)
        if state["step"] >= 2:
            raise Interrupt

    cut = tmp_path / "cut"
    monkeypatch.setattr(RunLog, "save_checkpoint", save_then_stop)
    with pytest.raises(Interrupt):
        main([*args, "--out", str(cut)])
    monkeypatch.setattr(RunLog, "save_checkpoint", original)
    (cut / "bank" / "000000016.npy").write_bytes(b"stale")  # a shard written after the checkpoint is redone
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    a, b = load_model(out / "model.pt"), load_model(cut / "model.pt")
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    resumed = json.loads((cut / "result.json").read_text())
    assert resumed["test_accuracy"] == result["test_accuracy"]
    assert resumed["images_synthesized"] == 24


class Interrupt(BaseException):
    pass


def test_own_data_takes_the_nearest_builtin_sets_presets(tmp_path, caplog):
    # A 1x16x16 npz set runs with the digits preset (not the CIFAR-10 scripts' days-long one), said once in
    # the log; a field given on the command line still wins, and a built-in name is matched however typed.
    import logging

    import numpy as np

    np.savez(tmp_path / "own.npz", x=np.zeros((30, 16, 16), np.uint8), y=np.arange(30) % 3)
    cfg = DeepInversionConfig(teacher="t.pt", dataset=f"npz:{tmp_path / 'own.npz'}", kd_steps=7)
    with caplog.at_level(logging.WARNING, logger="zskt.methods"):
        assert cfg.rounds == DeepInversionConfig.PRESETS["digits"]["iterations"]
        assert cfg.value("g_steps") == DeepInversionConfig.PRESETS["digits"]["g_steps"]
    assert cfg.value("kd_steps") == 7
    assert caplog.text.count("has no presets of its own: the digits preset") == 1
    assert DeepInversionConfig(teacher="t.pt", dataset="CIFAR-10").rounds == 200


def test_compiled_teacher_answers_as_the_eager_one_and_only_without_a_graph():
    # --compile-teacher: the BN-folded teacher's no-grad forwards through torch.compile (inductor, frozen
    # weights) give the eager logits up to float32 rounding; a forward that records a graph runs it eagerly.
    from zskt.models.frozen import CompiledInference

    torch.manual_seed(0)
    teacher = build_model("wrn-10-1", 10, 1)
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    folded = frozen_copy(teacher)
    compiled = CompiledInference(folded)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        eager = folded(x)[0]
        torch.testing.assert_close(compiled(x)[0], eager, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(compiled(x + 1)[0], folded(x + 1)[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(compiled(x)[0], folded(x)[0])  # with grad enabled: the eager network itself
    assert [n for n, _ in compiled.named_children()] == ["model"]  # one copy of the weights


def test_compiled_teacher_that_cannot_compile_is_one_line(monkeypatch):
    # No C++ compiler, an unsupported layer: the first compiled forward fails as one ZsktError naming the fix.
    from zskt.errors import ZsktError
    from zskt.models.frozen import CompiledInference

    compiled = CompiledInference(frozen_copy(build_model("wrn-10-1", 10, 1)))

    def broken(x):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore lines")

    monkeypatch.setitem(compiled.__dict__, "compiled", broken)
    with torch.no_grad(), pytest.raises(ZsktError) as caught:
        compiled(torch.randn(2, 1, 8, 8))
    text = str(caught.value)
    assert "run without --compile-teacher" in text and "No working C++ compiler" in text and "\n" not in text
