"""NAYER: one synthesis loop against the reference's semantics written out literally below (tmtuan1307/NAYER
`datafree/synthesis/nayer.py` `NAYER.synthesize`, `datafree/models/generator.py` `NLGenerator.forward`) in
float64, the noisy layers and the generator's life, the label-embeddings file and its one-line errors, and the
command end to end at toy size with resume."""

import copy
import json

import numpy as np
import pytest
import torch

from zskt.errors import ZsktError
from zskt.methods.bn_hooks import BNStatistics
from zskt.methods.inversion import crop_flip_params
from zskt.methods.nayer import (
    NayerConfig,
    NayerSynthesizer,
    fallback_embeddings,
    load_label_embeddings,
    nayer_step,
)
from zskt.models import frozen_copy
from zskt.models.nayer_generator import NoisyLayerGenerator, balanced_targets
from zskt.runtime import Precision

from reference_inversion import bn_networks, ref_hooks, ref_nayer_loop, ref_nl_forward

MEAN, STD = (0.3,), (0.3,)

# ------------------------------------------------------------------------------------- networks


def _close(a, b, atol=1e-10):
    return all(torch.allclose(p, q, rtol=0, atol=atol) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("adversarial", [False, True])
def test_nayer_loop_equals_reference(adversarial):
    """Two loops of three steps each (the BN momentum average carried between them), 12 images of 10 classes
    (2 noisy layers, the second on a block of 2 rows), against the reference, float64."""
    teacher, student = bn_networks(1)
    cfg = NayerConfig(teacher="t.pt", adv=1.33)
    torch.manual_seed(7)
    embeddings = torch.randn(10, 6, dtype=torch.float64)
    gen = NoisyLayerGenerator(embeddings, 12, nz=8, ngf=4, img_size=16, nc=1).double().train()
    assert len(gen.le1) == 2
    gen_ref = copy.deepcopy(gen)
    gen_ref.fuse_upsample = False
    g = torch.Generator().manual_seed(3)
    loops = [(balanced_targets(12, 10, g), [crop_flip_params(12, 2, g) for _ in range(3)]) for _ in range(2)]
    assert loops[0][0][:10].tolist() == list(range(10))

    hooked = frozen_copy(teacher, fold_bn=False)  # zskt's teacher, as the commands build it
    hooks = BNStatistics(hooked, momentum=cfg.bn_momentum)
    ours = []
    for targets, augs in loops:
        opt = torch.optim.Adam(gen.parameters(), lr=cfg.generator_lr, betas=(0.5, 0.999))
        steps = [
            nayer_step(gen, opt, hooked, student, hooks, targets, aug, cfg, MEAN, STD, 2, adversarial)
            for aug in augs
        ]
        hooks.update_momentum()
        ours.append(steps)
    hooks.remove()

    teacher.requires_grad_(True)  # the reference's networks keep requires_grad
    student.requires_grad_(True)
    rhooks = ref_hooks(teacher, mmt_rate=cfg.bn_momentum)
    w = {"bn": cfg.bn, "oh": cfg.oh, "adv": cfg.adv, "lr_g": cfg.generator_lr, "num_classes": 10}
    for (targets, augs), steps in zip(loops, ours, strict=True):
        best_ref, costs = ref_nayer_loop(
            gen_ref,
            gen_ref.embeddings,
            teacher,
            student,
            rhooks,
            targets,
            augs,
            w,
            adversarial,
            2,
            10,
            MEAN,
            STD,
        )
        assert [t["loss"].item() for t, _ in steps] == pytest.approx(costs, rel=1e-9)
        best = min(steps, key=lambda s: s[0]["loss"].item())[1]
        assert torch.allclose(best, best_ref, rtol=0, atol=1e-9)
        assert ("adv_loss" in steps[0][0]) == adversarial
    # Adam divides each gradient by its own magnitude: ~1e-8 gradients turn rounding into ~1e-7 differences.
    assert _close(gen.parameters(), gen_ref.parameters(), atol=1e-6)
    assert _close(gen.buffers(), gen_ref.buffers(), atol=1e-9)
    for ours_hook, ref_hook in zip(hooks.hooks, rhooks, strict=True):
        assert torch.allclose(ours_hook.average[0], ref_hook.mmt[0], rtol=0, atol=1e-12)
        assert torch.allclose(ours_hook.average[1], ref_hook.mmt[1], rtol=0, atol=1e-12)


def test_generator_forward_is_the_reference_forward():
    torch.manual_seed(0)
    embeddings = torch.randn(3, 5, dtype=torch.float64)
    gen = NoisyLayerGenerator(embeddings, 7, nz=6, ngf=2, img_size=8, nc=1).double().train()
    targets = balanced_targets(7, 3)
    x = gen(targets)
    assert x.shape == (7, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    literal = copy.deepcopy(gen)
    literal.fuse_upsample = False
    assert torch.allclose(x, ref_nl_forward(literal, embeddings, targets, 3), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------- noisy layers, life


def test_noisy_layers_are_redrawn_and_nothing_else():
    torch.manual_seed(0)
    gen = NoisyLayerGenerator(torch.randn(10, 64), 40, nz=256, ngf=4, img_size=8, nc=1)
    assert len(gen.le1) == 4
    body = {k: v.clone() for k, v in gen.state_dict().items() if not k.startswith("le1.")}
    before = [layer.weight.clone() for layer in gen.le1]
    gen.reset_noisy_layers()
    for layer, old in zip(gen.le1, before, strict=True):
        assert not torch.equal(layer.weight, old)
        assert abs(layer.weight.mean().item()) < 0.02 and abs(layer.weight.std().item() - 1) < 0.02  # N(0, 1)
        assert torch.count_nonzero(layer.bias) == 0
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in body.items())


def test_reinitialise_draws_a_fresh_generator():
    torch.manual_seed(0)
    gen = NoisyLayerGenerator(torch.randn(10, 16), 20, nz=8, ngf=4, img_size=8, nc=1).train()
    gen(balanced_targets(20, 10))  # moves the BN running statistics
    assert gen.conv_blocks[0].running_mean.abs().sum() > 0
    old = {k: v.clone() for k, v in gen.state_dict().items()}
    gen.reinitialise()
    state = gen.state_dict()
    assert not torch.equal(state["l1.0.weight"], old["l1.0.weight"])
    assert not torch.equal(state["le1.0.weight"], old["le1.0.weight"])
    assert torch.count_nonzero(state["conv_blocks.0.running_mean"]) == 0
    assert torch.equal(state["n1.weight"], torch.ones(16))


def test_generator_life_and_loops_follow_the_reference():
    cifar = NayerConfig(teacher="t.pt", dataset="cifar10")
    assert [r for r in range(60) if cifar.fresh_generator(r)] == [0, 10, 20, 30, 40, 50]
    assert [cifar.loops(r) for r in (0, 19, 20, 219)] == [10, 10, 2, 2]
    odd = NayerConfig(teacher="t.pt", dataset="cifar10", warmup=4, g_life=10)
    assert [r for r in range(30) if odd.fresh_generator(r)] == [0, 4, 10, 14, 20, 24]
    assert balanced_targets(23, 10).tolist()[:20] == list(range(10)) * 2
    assert len(balanced_targets(23, 10)) == 23
    with pytest.raises(ZsktError, match="g_loops"):
        NayerConfig(teacher="t.pt", g_loops=0)


def test_synthesizer_round_redraws_noisy_layers_per_loop_and_banks_each_loop(monkeypatch):
    teacher, student = bn_networks(2)
    teacher, student = teacher.float(), student.float().train()
    cfg = NayerConfig(
        teacher="t.pt", synthesis_batch_size=12, g_steps=2, warmup=1, warmup_loops=3, g_loops=2, iterations=3
    )
    shape = {"channels": 1, "size": 16, "num_classes": 10, "mean": MEAN, "std": STD}
    synth = NayerSynthesizer(
        teacher, student, cfg, shape, torch.device("cpu"), Precision("fp32", "cpu", False), torch.randn(10, 4)
    )
    draws = []
    original = NoisyLayerGenerator.reset_noisy_layers

    def counted(self):
        original(self)
        draws.append(self.le1[0].weight.clone())

    monkeypatch.setattr(NoisyLayerGenerator, "reset_noisy_layers", counted)
    images = synth.synthesize(0)  # a warm-up round: a fresh generator, then 3 loops
    assert images.shape == (36, 1, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert len(draws) == 4 and not torch.equal(draws[1], draws[2])
    assert "synth_adv_loss" not in synth.losses
    student_bn = [b.clone() for b in student.buffers()]
    images = synth.synthesize(1)  # the first round after the warm-up: a fresh generator, 2 adversarial loops
    assert images.shape == (24, 1, 16, 16) and len(draws) == 7
    assert "synth_adv_loss" in synth.losses
    # The student stays in eval mode in every loop (the reference's student.train() after the first loop is
    # not copied): synthesis leaves its BN running statistics as they were.
    assert all(torch.equal(a, b) for a, b in zip(student_bn, student.buffers(), strict=True))
    body = synth.generator.l1[0].weight.clone()
    synth.synthesize(2)  # the same generator (its life is 10 rounds), 2 more draws
    assert len(draws) == 9 and not torch.equal(body, synth.generator.l1[0].weight)
    synth.generator.l1[0].weight.data.copy_(body)
    synth.synthesize(11)  # round − warmup = 10: a fresh one
    assert len(draws) == 12
    assert student.training  # restored after synthesis, which ran it in eval mode
    assert synth.hooks.hooks[0].average is not None


# ------------------------------------------------------------------------------------- the embeddings file


def test_embeddings_file_forms(tmp_path):
    rows = np.arange(20, dtype=np.float64).reshape(10, 2)
    np.savez(tmp_path / "one.npz", rows)
    np.savez(tmp_path / "named.npz", embeddings=rows, names=np.arange(10))
    np.save(tmp_path / "plain.npy", rows)
    torch.save(torch.tensor(rows), tmp_path / "t.pt")
    torch.save({"embeddings": torch.tensor(rows).half()}, tmp_path / "d.pth")
    for name in ("one.npz", "named.npz", "plain.npy", "t.pt", "d.pth"):
        value = load_label_embeddings(str(tmp_path / name), 10)
        assert value.dtype == torch.float32 and torch.equal(value, torch.tensor(rows, dtype=torch.float32))


def test_embeddings_file_errors_are_one_line(tmp_path):
    np.save(tmp_path / "short.npy", np.zeros((9, 4), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros(10, np.float32))
    np.save(tmp_path / "nan.npy", np.full((10, 4), np.nan, np.float32))
    np.save(tmp_path / "text.npy", np.array([["a"] * 4] * 10))
    np.savez(tmp_path / "two.npz", a=np.zeros((10, 4)), b=np.zeros((10, 4)))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "broken.pt").write_bytes(b"\x80\x02garbage")
    (tmp_path / "e.txt").write_text("0 1 2")
    torch.save({"other": torch.zeros(10, 4)}, tmp_path / "nokey.pt")
    cases = {
        "missing.npz": "not found",
        "short.npy": r"shape \(9, 4\)",
        "flat.npy": r"shape \(10,\)",
        "nan.npy": "non-finite",
        "text.npy": "<U1",
        "two.npz": "arrays a, b",
        "broken.npz": "could not be read",
        "broken.pt": "could not be read",
        "e.txt": "unknown file type '.txt'",
        "nokey.pt": "holds no array",
    }
    for name, reason in cases.items():
        with pytest.raises(ZsktError, match=reason) as info:
            load_label_embeddings(str(tmp_path / name), 10)
        message = str(info.value)
        assert "\n" not in message and name in message
        assert "(10, D)" in message or "'embeddings'" in message  # the fix


def test_fallback_codes_are_fixed_by_the_seed():
    a, b, c = fallback_embeddings(10, 0), fallback_embeddings(10, 0), fallback_embeddings(10, 1)
    assert a.shape == (10, 512) and torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------------- the command


def _args(teacher, *extra):
    return [
        "nayer",
        "--teacher",
        str(teacher),
        "--dataset",
        "digits",
        "--image-size",
        "8",
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
        "--warmup-loops",
        "2",
        "--g-loops",
        "1",
        "--g-life",
        "2",
        "--bank-size",
        "24",
        "--noisy-dim",
        "16",
        "--generator-width",
        "8",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


class Interrupt(BaseException):
    pass


def test_command_end_to_end_and_resume(digits_teacher_file, tmp_path, monkeypatch):
    from zskt.cli import main
    from zskt.models import load_model
    from zskt.runlog import RunLog

    np.savez(
        tmp_path / "le.npz", embeddings=np.random.default_rng(0).normal(size=(10, 12)).astype(np.float32)
    )
    args = _args(digits_teacher_file, "--label-embeddings", str(tmp_path / "le.npz"))
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    # 2 warm-up loops in round 0, then 1 per round: 4 batches of 8, the oldest 8 dropped at the bound 24
    assert result["images_synthesized"] == 32 and result["images_kept"] == 24
    assert 0 <= result["test_accuracy"] <= 100 and result["method"] == "nayer"
    assert (out / "model.pt").is_file() and (out / "synthetic.png").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["label_embeddings"].endswith("le.npz")

    # A run stopped after its round-2 checkpoint and resumed ends with the uninterrupted run's student.
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
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    a, b = load_model(out / "model.pt"), load_model(cut / "model.pt")
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert json.loads((cut / "result.json").read_text())["test_accuracy"] == result["test_accuracy"]


def test_command_fallback_and_bad_file(digits_teacher_file, tmp_path, capsys):
    from zskt.cli import main

    assert main([*_args(digits_teacher_file, "-N", "1", "--warmup", "0"), "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "result.json").read_text())["images_synthesized"] == 8
    np.save(tmp_path / "wrong.npy", np.zeros((100, 512), np.float32))
    bad = _args(digits_teacher_file, "--label-embeddings", str(tmp_path / "wrong.npy"))
    assert main([*bad, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shape (100, 512)" in err[0] and "(10, D)" in err[0]
    assert not (tmp_path / "b").exists()  # refused before the run folder is made
