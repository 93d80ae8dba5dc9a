"""Zero-shot transfer (Algorithm 1): the adversarial step, the detached loop against the authors' loop, every
option reaching the loop, resume, a short digits run, and the `zskt zero-shot` command end to end.

Toy sizes throughout: the embedded digits at their native 8x8, one grey channel, WRN-16-1 networks, pseudo
batches of 16 or 32, so the whole file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch

from zskt.cli import main as cli_main
from zskt.data import ImageSplit, preset
from zskt.errors import ZsktError
from zskt.losses import kl_divergence
from zskt.methods.scaffold import Meter
from zskt.methods.zero_shot import ZeroShotConfig, ZeroShotState, generator_step, zero_shot, zero_shot_steps
from zskt.models import Generator, build_model, load_generator, load_model
from zskt.runlog import RunLog
from zskt.runtime import resolve_precision

from reference_zero_shot import reference_zero_shot_steps

SIZE = 8  # digits at their native 8x8: the WRN maps are 8, 4, 2 and the generator's seed map is 2x2
FP32 = resolve_precision("fp32", torch.device("cpu"))


def tiny_cfg(**kw) -> ZeroShotConfig:
    # β = 250 explicitly: the attention term is part of the loop under test (the digits preset is 0).
    values = {
        "iterations": 4,
        "batch_size": 16,
        "n_student_steps": 3,
        "device": "cpu",
        "eval_every": 2,
        "beta": 250.0,
    }
    return ZeroShotConfig(**{**values, **kw})


def networks(seed: int = 0, teacher: str = "wrn-16-1"):
    """(teacher, student, generator) freshly initialised from `seed`, in the modes zero_shot sets."""
    torch.manual_seed(seed)
    t = build_model(teacher, 10, 1).eval().requires_grad_(False)
    s = build_model("wrn-16-1", 10, 1).train()
    g = Generator(100, image_size=SIZE, out_channels=1).train()
    return t, s, g


def run_steps(cfg, t, s, g, n, *, reference=False, meter=None):
    state = ZeroShotState.build(s, g, cfg)
    if reference:
        reference_zero_shot_steps(t, state, n, cfg)
    else:
        record = (lambda **values: meter.add(0, **values)) if meter is not None else None
        zero_shot_steps(t, state, cfg, range(n), record=record)
    return state


def lrs(state: ZeroShotState) -> dict:
    return {
        "generator_lr": state.generator_optimiser.param_groups[0]["lr"],
        "student_lr": state.student_optimiser.param_groups[0]["lr"],
    }


def max_difference(a: torch.nn.Module, b: torch.nn.Module, *, buffers: bool = True) -> float:
    sa = a.state_dict() if buffers else dict(a.named_parameters())
    sb = b.state_dict() if buffers else dict(b.named_parameters())
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


@pytest.fixture(scope="module")
def digits(digits8):
    return digits8  # digits at 8x8 (tests/conftest.py)


@pytest.fixture(scope="module")
def teacher_file(digits_teacher_file):
    return digits_teacher_file  # the trained 8x8 WRN-16-1 teacher `digits_teacher`, saved (tests/conftest.py)


def small_test_split(digits, n=100) -> ImageSplit:
    return ImageSplit(digits.test.images[:n], digits.test.labels[:n])


# ------------------------------------------------------------------------------------- the adversarial step


def _train_mode_kl(t, s, g, z):
    # The quantity the generator maximises: KL(T ‖ S) on G(z), student in train mode (batch statistics).
    with torch.no_grad():
        x = g(z)
        return kl_divergence(s(x)[0], t(x)[0]).item()


def test_generator_step_increases_kl_on_its_batch():
    cfg = tiny_cfg()
    t, s, g = networks()
    opt = ZeroShotState.build(s, g, cfg).generator_optimiser
    z = g.sample_z(cfg.batch_size, generator=torch.Generator().manual_seed(0))
    before = _train_mode_kl(t, s, g, z)
    for _ in range(3):
        loss = generator_step(t, s, g, opt, z, cfg, FP32)
    after = _train_mode_kl(t, s, g, z)
    assert before > 1e-4 and loss.item() < -1e-4, "the adversarial term must not be (near) zero"
    assert after > before * 1.05, (before, after)


def test_generator_loss_depends_on_the_student():
    # A public benchmark passed the teacher where the student belonged: KL(T ‖ T) = 0 and the generator never
    # learns. Here the loss changes when only the student changes, and that buggy form would give exactly 0.
    cfg = tiny_cfg()
    t, s, g = networks()
    z = g.sample_z(cfg.batch_size, generator=torch.Generator().manual_seed(0))
    losses = []
    for student in (s, networks(seed=1)[1], copy.deepcopy(t)):
        generator = copy.deepcopy(g)
        opt = ZeroShotState.build(student, generator, cfg).generator_optimiser
        losses.append(generator_step(t, student, generator, opt, z, cfg, FP32).item())
    assert losses[0] < -1e-4 and losses[1] < -1e-4 and abs(losses[0] - losses[1]) > 1e-5
    assert abs(losses[2]) < 1e-7  # the bug's form (zero up to rounding): what the lines above rule out


def test_generator_gradient_flows_through_the_teacher_softmax():
    # The authors' L_G differentiates the KL target softmax(T(x)) with respect to x too; freezing the
    # teacher's parameters must not cut that path. Compare against hand-written gradients with and without it.
    cfg = tiny_cfg(grad_clip=0.0)
    t, s, g = networks()
    z = g.sample_z(cfg.batch_size, generator=torch.Generator().manual_seed(0))

    def hand_grads(detach_teacher):
        gen, stu = copy.deepcopy(g), copy.deepcopy(s)
        x = gen(z)
        target = t(x)[0]
        loss = -kl_divergence(stu(x)[0], target.detach() if detach_teacher else target)
        return torch.autograd.grad(loss, list(gen.parameters()))

    gen = copy.deepcopy(g)
    opt = ZeroShotState.build(copy.deepcopy(s), gen, cfg).generator_optimiser
    generator_step(t, copy.deepcopy(s), gen, opt, z, cfg, FP32)
    ours = [p.grad for p in gen.parameters()]
    full, cut = hand_grads(False), hand_grads(True)
    assert all(torch.allclose(a, b, atol=1e-7, rtol=1e-5) for a, b in zip(ours, full, strict=False))
    assert not all(torch.allclose(a, b, atol=1e-7, rtol=1e-5) for a, b in zip(ours, cut, strict=False))


def test_generator_step_leaves_student_and_teacher_gradients_alone_but_updates_student_bn():
    cfg = tiny_cfg()
    t, s, g = networks()
    running = s.bn1.running_mean.clone()
    opt = ZeroShotState.build(s, g, cfg).generator_optimiser
    generator_step(t, s, g, opt, g.sample_z(cfg.batch_size), cfg, FP32)
    assert all(p.grad is None for p in s.parameters()) and all(p.grad is None for p in t.parameters())
    assert all(p.grad is not None for p in g.parameters())
    assert not torch.equal(running, s.bn1.running_mean)  # train mode, as the authors' student forward


# ------------------------------------------------------------------------------------- detached == reference


@pytest.mark.parametrize("options", [{}, {"n_generator_steps": 2, "beta": 0.0, "kl_reduction": "batchmean"}])
def test_detached_loop_equals_the_authors_loop(options):
    """After 3 pseudo batches (same seed, CPU, float32) every student parameter and buffer and every generator
    parameter agree to 1e-6 absolute (they agree exactly here). The generator's BN running statistics are
    the one intended difference: the reference updates them on all n_G + n_S calls, ours on n_G + 1; the
    generator only ever runs in train mode, so they are never used (SPEC §9.10)."""
    cfg = tiny_cfg(**options)
    t, s, g = networks(teacher="wrn-16-2")
    t2, s2, g2 = copy.deepcopy(t), copy.deepcopy(s), copy.deepcopy(g)
    opt = run_steps(cfg, t, s, g, 3)
    opt2 = run_steps(cfg, t2, s2, g2, 3, reference=True)
    assert max_difference(s, s2) <= 1e-6
    assert max_difference(g, g2, buffers=False) <= 1e-6
    assert max_difference(t, t2) == 0.0
    assert lrs(opt) == lrs(opt2)
    assert max_difference(s, networks()[1], buffers=False) > 1e-3  # something was learned
    # The reference unfreezes the teacher to run like the authors' and restores it afterwards.
    assert all(not p.requires_grad and p.grad is None for p in t2.parameters())


def test_forward_counts_teacher_once_per_pseudo_batch_for_the_student_phase():
    cfg = tiny_cfg(n_student_steps=4)
    t, s, g = networks()
    calls = {"teacher": 0, "student": 0, "generator": 0}
    for name, module in (("teacher", t), ("student", s), ("generator", g)):
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    run_steps(cfg, t, s, g, 2)
    # per pseudo batch: n_G + 1 teacher and generator forwards, n_G + n_S student forwards
    assert calls == {"teacher": 2 * 2, "student": 2 * 5, "generator": 2 * 2}


# ------------------------------------------------------------------------------------- schedule and
# statistics


def test_cosine_schedule_matches_the_closed_form_and_steps_per_pseudo_batch():
    cfg = tiny_cfg(iterations=8)
    t, s, g = networks()
    state = run_steps(cfg, t, s, g, 3)
    rates = lrs(state)  # after 3 pseudo batches: the rate of pseudo batch 3
    assert rates["student_lr"] == pytest.approx(
        2e-3 * (1 + torch.cos(torch.tensor(torch.pi * 3 / 8)).item()) / 2
    )
    assert rates["generator_lr"] == pytest.approx(rates["student_lr"] / 2)
    # PyTorch's own CosineAnnealingLR(T_max=N) gives the same rates at every pseudo batch.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    for _ in range(3):
        opt.step()
        cosine.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(rates["student_lr"], rel=1e-12)
    # Adam took n_G steps and n_S steps per pseudo batch.
    assert state.generator_optimiser.state[g.layers[0].weight]["step"].item() == 3
    assert state.student_optimiser.state[s.fc.weight]["step"].item() == 3 * cfg.n_student_steps


def test_stats_are_means_of_the_logged_quantities():
    cfg = tiny_cfg()
    t, s, g = networks()
    meter = Meter(torch.device("cpu"))
    run_steps(cfg, t, s, g, 2, meter=meter)
    assert meter.counts == {
        "generator_loss": 2,
        "student_loss": 2 * cfg.n_student_steps,
        "teacher_max_prob": 2,
        "student_max_prob": 2,
    }
    row, diverged = meter.read()
    assert row["generator_loss"] < 0 < row["student_loss"] and diverged == {}
    assert 0.1 <= row["teacher_max_prob"] <= 1 and 0.1 <= row["student_max_prob"] <= 1
    assert meter.counts == {} and meter.read() == ({}, {})


def test_meter_names_the_first_non_finite_step():
    meter = Meter(torch.device("cpu"))
    for step, value in enumerate([1.0, 2.0, float("nan"), 3.0, float("inf")]):
        meter.add(step, loss=torch.tensor(value), fine=torch.tensor(1.0))
    row, diverged = meter.read()
    assert diverged == {"loss": 2} and row["fine"] == 1.0


# ------------------------------------------------------------------------------------- every option reaches
# the loop


def _student_after(cfg, n=2, teacher="wrn-16-1"):
    t, s, g = networks(teacher=teacher)
    run_steps(cfg, t, s, g, n)
    return s, g


@pytest.mark.parametrize(
    "change",
    [
        {"beta": 0.0},
        {"student_lr": 1e-3},
        {"n_student_steps": 2},
        {"temperature": 4.0},
        {"kl_reduction": "batchmean"},
        {"grad_clip": 0.01},
        {"n_generator_steps": 2},
        {"generator_lr": 1e-2},
        {"fresh_batch_per_student_step": True},
        {"seed": 1},
    ],
)
def test_each_option_changes_the_student(change):
    base, _ = _student_after(tiny_cfg())
    changed, _ = _student_after(tiny_cfg(**change))
    assert max_difference(base, changed, buffers=False) > 1e-7, change


def test_generator_lr_and_steps_change_the_generator():
    _, base = _student_after(tiny_cfg())
    for change in ({"generator_lr": 1e-2}, {"n_generator_steps": 2}, {"grad_clip": 1e-3}):
        _, changed = _student_after(tiny_cfg(**change))
        assert max_difference(base, changed, buffers=False) > 1e-7, change


def test_fresh_batch_draws_a_z_per_student_step(monkeypatch):
    draws = []
    original = Generator.sample_z
    monkeypatch.setattr(
        Generator, "sample_z", lambda self, *a, **k: draws.append(1) or original(self, *a, **k)
    )
    for fresh, per_batch in ((False, 1), (True, 1 + 3)):
        draws.clear()
        t, s, g = networks()
        calls = []
        t.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        run_steps(tiny_cfg(fresh_batch_per_student_step=fresh, n_student_steps=3), t, s, g, 2)
        assert len(draws) == 2 * per_batch
        assert len(calls) == 2 * (1 + (3 if fresh else 1))  # the teacher runs once per fresh pseudo batch


def test_batch_size_and_z_dim_reach_the_generator(digits, tmp_path):
    t, s, _ = networks()
    shapes = []
    s.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(inputs[0].shape)))
    cfg = tiny_cfg(iterations=1, batch_size=8, z_dim=20, final_bn_affine=False, eval_every=1)
    log = RunLog(tmp_path / "run", command="zero-shot", config={}, quiet=True)
    torch.manual_seed(0)
    zero_shot(cfg, log, t, s, small_test_split(digits, 20), digits.mean, digits.std)
    g = load_generator(tmp_path / "run" / "generator.pt")
    assert g.z_dim == 20 and g.image_size == SIZE and not g.final_bn_affine
    assert "layers.12.weight" not in g.state_dict() and "layers.12.running_mean" in g.state_dict()
    assert g.layers[2].num_batches_tracked.item() == 2  # one generator step + one pseudo batch
    assert shapes[: 1 + cfg.n_student_steps] == [(8, 1, SIZE, SIZE)] * (1 + cfg.n_student_steps)


def test_presets_and_validation():
    assert (
        ZeroShotConfig(dataset="cifar10").total_iterations
        == 80_000
        == preset("cifar10", "zero-shot", "iterations")
    )
    assert ZeroShotConfig(dataset="svhn").total_iterations == 50_000
    assert ZeroShotConfig(dataset="cifar10").eval_interval == 800  # the authors' log_freq = N/100
    assert ZeroShotConfig(iterations=50).eval_interval == 1
    assert ZeroShotConfig(dataset="digits").attention_beta == 0.0 == preset("digits", "zero-shot", "beta")
    assert ZeroShotConfig(dataset="digits", beta=250.0).attention_beta == 250.0
    cfg = ZeroShotConfig(dataset="cifar10")
    assert (cfg.batch_size, cfg.z_dim, cfg.n_generator_steps, cfg.n_student_steps) == (128, 100, 1, 10)
    assert (cfg.generator_lr, cfg.student_lr, cfg.attention_beta, cfg.temperature, cfg.grad_clip) == (
        1e-3,
        2e-3,
        250,
        1,
        5,
    )
    assert cfg.kl_reduction == "mean" and cfg.final_bn_affine and not cfg.fresh_batch_per_student_step
    for bad in (
        {"batch_size": 1},
        {"n_student_steps": 0},
        {"beta": -1.0},
        {"kl_reduction": "sum"},
        {"student": "resnet-19"},
        {"iterations": 0},
    ):
        with pytest.raises(ZsktError):
            replace(cfg, **bad)


def test_bf16_precision_runs():
    cfg = tiny_cfg(precision="bf16")
    t, s, g = networks()
    precision = resolve_precision("bf16", torch.device("cpu"))
    meter = Meter(torch.device("cpu"))
    zero_shot_steps(
        t,
        ZeroShotState.build(s, g, cfg),
        cfg,
        range(1),
        precision=precision,
        record=lambda **values: meter.add(0, **values),
    )
    row, diverged = meter.read()
    assert len(row) == 4 and diverged == {} and all(torch.isfinite(torch.tensor(v)) for v in row.values())


# ------------------------------------------------------------------------------------- runs, resume, files


def _run(tmp_path, name, cfg, digits, *, resume=False, stop_at=None):
    t, _, _ = networks()
    log = RunLog(
        tmp_path / name, command="zero-shot", config={"iterations": cfg.iterations}, quiet=True, resume=resume
    )
    if stop_at is not None:
        save = log.save_checkpoint

        def save_then_stop(state):
            save(state)
            if state["step"] >= stop_at:
                raise KeyboardInterrupt

        log.save_checkpoint = save_then_stop
    torch.manual_seed(cfg.seed)
    s = build_model("wrn-16-1", 10, 1)
    g = Generator(cfg.z_dim, image_size=SIZE, out_channels=1)
    return zero_shot(cfg, log, t, s, small_test_split(digits), digits.mean, digits.std, generator=g)


def test_resume_gives_the_uninterrupted_result(tmp_path, digits):
    cfg = tiny_cfg(iterations=6, eval_every=2)
    straight = _run(tmp_path, "straight", cfg, digits)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", cfg, digits, stop_at=2)
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    resumed = _run(tmp_path, "resumed", cfg, digits, resume=True)
    a = load_model(tmp_path / "straight" / "model.pt")
    b = load_model(tmp_path / "resumed" / "model.pt")
    assert max_difference(a, b) == 0.0
    ga, gb = (
        load_generator(tmp_path / "straight" / "generator.pt"),
        load_generator(tmp_path / "resumed" / "generator.pt"),
    )
    assert max_difference(ga, gb) == 0.0
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert resumed["best_test_accuracy"] == straight["best_test_accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]


def test_short_digits_run_beats_chance(tmp_path, digits, digits_teacher):
    # 60 pseudo batches of 32 at 8x8: about 55 % (chance: 10 %) in about 8 CPU-seconds.
    cfg = ZeroShotConfig(iterations=60, batch_size=32, eval_every=30, device="cpu")
    torch.manual_seed(0)
    student = build_model("wrn-16-1", 10, 1)
    log = RunLog(tmp_path / "run", command="zero-shot", config={}, quiet=True)
    result = zero_shot(cfg, log, copy.deepcopy(digits_teacher), student, digits.test, digits.mean, digits.std)
    assert result["teacher_test_accuracy"] > 90
    assert result["test_accuracy"] > 40, result  # chance is 10 %
    assert result["best_test_accuracy"] >= result["test_accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [30, 60]
    keys = {
        "generator_loss",
        "student_loss",
        "teacher_max_prob",
        "student_max_prob",
        "test_accuracy",
        "generator_lr",
        "student_lr",
        "seconds_per_iteration",
    }
    assert keys <= rows[-1].keys()
    assert all(row["generator_loss"] < -1e-5 for row in rows)  # the adversarial term is never zero


# ------------------------------------------------------------------------------------- the command


def _cli(tmp_path, teacher_file, *extra):
    return cli_main(
        [
            "zero-shot",
            "--teacher",
            str(teacher_file),
            "--dataset",
            "digits",
            "--image-size",
            str(SIZE),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--quiet",
            "-N",
            "3",
            "--batch-size",
            "16",
            "--n-student-steps",
            "2",
            "--eval-every",
            "2",
            *extra,
        ]
    )


def test_cli_end_to_end(tmp_path, teacher_file, capsys):
    assert _cli(tmp_path, teacher_file) == 0
    out = tmp_path / "run"
    result = json.loads((out / "result.json").read_text())
    for key in ("test_accuracy", "best_test_accuracy", "seconds_per_iteration", "teacher_test_accuracy"):
        assert isinstance(result[key], float), key
    assert result["iterations"] == 3 and result["student"] == "wrn-16-1" and result["dataset"] == "digits"
    assert result["precision"] == "fp32" and result["teacher"] == str(teacher_file)
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [2, 3]
    assert sorted(p.name for p in (out / "pseudo").iterdir()) == ["iter_000002.png", "iter_000003.png"]
    assert (out / "pseudo" / "iter_000003.png").read_bytes()[:4] == b"\x89PNG"
    assert load_model(out / "model.pt", "wrn-16-1", in_channels=1).num_classes == 10
    assert load_generator(out / "generator.pt").image_size == SIZE
    assert not (out / "checkpoint.pt").exists()
    assert json.loads((out / "config.json").read_text())["n_student_steps"] == 2
    assert "test_accuracy" in capsys.readouterr().out
    # A finished run is protected; --overwrite replaces it.
    assert _cli(tmp_path, teacher_file) == 2
    assert _cli(tmp_path, teacher_file, "--overwrite", "--no-final-bn-affine") == 0
    assert "layers.12.weight" not in load_generator(out / "generator.pt").state_dict()


def test_cli_errors(tmp_path, teacher_file, digits_teacher, capsys):
    assert _cli(tmp_path, tmp_path / "missing.pt") == 2
    assert "missing.pt" in capsys.readouterr().err
    # A project teacher records its data set.
    code = cli_main(
        ["zero-shot", "--teacher", str(teacher_file), "--dataset", "svhn", "--out", str(tmp_path / "x")]
    )
    assert code == 2 and "trained on digits" in capsys.readouterr().err
    # A bare state_dict has no record: the class count and channels are checked against the data set.
    bare = tmp_path / "bare.pt"
    torch.save(build_model("wrn-16-1", 10, 3).state_dict(), bare)
    assert _cli(tmp_path, bare) == 2
    assert "3-channel" in capsys.readouterr().err
    # A project teacher that records its image size is checked against the test images' size.
    assert _cli(tmp_path, teacher_file, "--image-size", "16") == 2
    assert "--image-size 8" in capsys.readouterr().err


def test_cli_requires_a_teacher(tmp_path, capsys):
    # Checked after parsing (a --config replay may supply it): a one-line error, exit status 2, no folder.
    assert cli_main(["zero-shot", "--out", str(tmp_path / "y")]) == 2
    assert "--teacher required" in capsys.readouterr().err and not (tmp_path / "y").exists()
