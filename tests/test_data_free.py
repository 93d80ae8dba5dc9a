"""DAFL, DFAD and DFQ: one round of zskt's loop against the DataFree reference code's semantics written out
here (CMI `datafree/synthesis/generative.py` and `datafree_kd.py` at acbbea6), equal parameters in float64;
the generator; the configs' reference settings."""

import copy
import dataclasses
import json
import math

import pytest
import torch
from reference_generative import reference_kldiv, reference_round
from torch import nn

from zskt.cli import main as cli_main
from zskt.errors import ZsktError
from zskt.methods.dafl import DAFLConfig
from zskt.methods.dfad import DFADConfig
from zskt.methods.dfq import DFQConfig
from zskt.methods.generative import EpochCosine, GenerativeState, Teacher, generative_round, train_generative
from zskt.models import build_model, load_model, save_model
from zskt.models.dfkd_generator import DataFreeGenerator
from zskt.runtime import Precision

MEAN, STD = (0.4, 0.5, 0.3), (0.2, 0.25, 0.3)


# ------------------------------------------------------------------------------ the comparison


def networks(seed=0):
    torch.manual_seed(seed)
    teacher = build_model("wrn-16-1", 10, 3).double()
    for m in teacher.modules():  # a trained-looking teacher: BN statistics away from (0, 1)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    teacher.eval().requires_grad_(False)
    student = build_model("wrn-16-1", 10, 3).double().train()
    generator = (
        DataFreeGenerator(8, image_size=8, out_channels=3, ngf=4, fuse_upsample=False).double().train()
    )
    return teacher, student, generator


@pytest.mark.parametrize(
    "config",
    [
        DAFLConfig(dataset="cifar10"),
        DFADConfig(dataset="cifar10"),
        DFQConfig(dataset="cifar10"),
        DFQConfig(dataset="cifar10", act=0.1, student_steps=2, sample_mode="train"),
        DAFLConfig(dataset="cifar10", adv=0.5, discrepancy="l1", generator_steps=2, student_steps=2),
    ],
    ids=["dafl", "dfad", "dfq", "dfq-all-terms-train-sampling", "dafl-adv-l1"],
)
def test_one_round_equals_the_reference_in_float64(config):
    cfg = dataclasses.replace(config, batch_size=6, z_dim=8, ngf=4)
    teacher, student, generator = networks()
    ref_student, ref_generator = copy.deepcopy(student), copy.deepcopy(generator)
    ref_teacher = copy.deepcopy(teacher).requires_grad_(True)  # the reference's teacher keeps requires_grad

    # zskt: normalisation inside the generator, fused upsample-convs, folded answering teacher, our
    # optimisers.
    generator.mean.copy_(torch.tensor(MEAN, dtype=torch.float64).view(1, -1, 1, 1))
    generator.std.copy_(torch.tensor(STD, dtype=torch.float64).view(1, -1, 1, 1))
    generator.fuse_upsample = True
    state = GenerativeState.build(student, generator, cfg)
    state.z_source.manual_seed(7)
    torch.set_default_dtype(torch.float64)  # z draws in float64 on both sides
    try:
        generative_round(Teacher.build(teacher, cfg), state, cfg, Precision("fp32", "cpu", False))
        opt_g = torch.optim.Adam(ref_generator.parameters(), lr=cfg.generator_lr, betas=(0.5, 0.999))
        opt_s = torch.optim.SGD(
            ref_student.parameters(), cfg.student_lr, weight_decay=cfg.weight_decay, momentum=0.9
        )
        criterion = torch.nn.L1Loss() if cfg.discrepancy == "l1" else reference_kldiv
        weights = {k: getattr(cfg, k) for k in ("adv", "bn", "oh", "act", "balance")}
        reference_round(
            ref_teacher,
            ref_student,
            ref_generator,
            opt_g,
            opt_s,
            criterion,
            weights,
            torch.Generator().manual_seed(7),
            cfg.generator_steps,
            cfg.student_steps,
            cfg.batch_size,
            torch.tensor(MEAN, dtype=torch.float64).view(1, -1, 1, 1),
            torch.tensor(STD, dtype=torch.float64).view(1, -1, 1, 1),
            sample_eval=cfg.sample_mode == "eval",
        )
    finally:
        torch.set_default_dtype(torch.float32)
    for ours, ref in ((student, ref_student), (generator, ref_generator)):
        theirs = ref.state_dict()
        for key, value in ours.state_dict().items():
            if key in ("mean", "std"):
                continue
            assert torch.allclose(value, theirs[key], rtol=1e-9, atol=1e-11), (
                key,
                (value - theirs[key]).abs().max(),
            )
    # The round did change the networks (a comparison of untouched weights would prove nothing).
    assert not torch.equal(student.fc.weight, networks()[1].fc.weight)
    assert not torch.equal(generator.l1[0].weight, networks()[2].l1[0].weight)


def test_generator_is_the_reference_large_generator_with_their_keys():
    g = DataFreeGenerator(256, image_size=32, out_channels=3, ngf=64)
    keys = {k for k in g.state_dict() if k not in ("mean", "std")}
    assert "l1.0.weight" in keys and "conv_blocks.2.weight" in keys and "conv_blocks.9.bias" in keys
    assert "conv_blocks.2.bias" not in keys  # their convs before BN have no bias
    # Linear 256 -> 256*8*8, BN 256, conv 256->128, BN 128, conv 128->64, BN 64, conv 64->3 + bias.
    expected = (
        (256 * 16384 + 16384) + 2 * 256 + 256 * 128 * 9 + 2 * 128 + 128 * 64 * 9 + 2 * 64 + 64 * 3 * 9 + 3
    )
    assert sum(p.numel() for p in g.parameters()) == expected
    z = torch.randn(4, 256, dtype=torch.float64)
    g = g.double()
    fused = g(z)
    g.fuse_upsample = False
    assert torch.allclose(fused, g(z), atol=1e-10)
    # normalised sigmoid output: (sigmoid - mean) / std with the defaults (0, 1) lies in (0, 1)
    assert fused.min() > 0 and fused.max() < 1


def test_reference_settings():
    dafl, dfad, dfq = (
        DAFLConfig(dataset="cifar10"),
        DFADConfig(dataset="cifar10"),
        DFQConfig(dataset="cifar10"),
    )
    assert (dafl.oh, dafl.act, dafl.balance, dafl.adv, dafl.bn) == (1.0, 0.1, 20.0, 0.0, 0.0)
    assert (dfad.adv, dfad.discrepancy, dfad.oh, dfad.bn, dfad.balance) == (1.0, "l1", 0.0, 0.0, 0.0)
    assert (dfq.adv, dfq.bn, dfq.oh, dfq.balance, dfq.student_steps) == (1.0, 1.0, 1.0, 20.0, 10)
    for cfg in (dafl, dfad, dfq):
        assert (cfg.batch, cfg.generator_width, cfg.student_lr, cfg.weight_decay, cfg.generator_lr) == (
            256,
            64,
            0.1,
            1e-4,
            1e-3,
        )
        # 200 epochs of 400 student steps
        assert cfg.total_iterations * cfg.student_steps == 200 * 400
        assert cfg.eval_interval == cfg.rounds_per_epoch


def test_epoch_cosine_steps_once_per_epoch():
    f = EpochCosine(rounds_per_epoch=4, total_rounds=8)  # 2 epochs
    assert [f(r) for r in range(8)] == [1.0] * 4 + [0.5 * (1 + math.cos(math.pi / 2))] * 4


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ZsktError, match="epoch_steps"):
        DFQConfig(dataset="cifar10", epoch_steps=5)
    with pytest.raises(ZsktError, match="discrepancy"):
        DFADConfig(discrepancy="l2")
    cfg = DAFLConfig(dataset="cifar10", oh=0, act=0, balance=0)
    teacher, student, generator = networks()
    state = GenerativeState.build(student, generator.float(), cfg)
    with pytest.raises(ZsktError, match="every generator loss weight is 0"):
        generative_round(Teacher.build(teacher.float(), cfg), state, cfg, Precision("fp32", "cpu", False))


# ------------------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A random-init WRN-16-1 digits teacher at 8x8 (the commands' plumbing, not accuracy, is under test)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    save_model(build_model("wrn-16-1", 10, 1), path, dataset="digits", image_size=8)
    return path


@pytest.mark.parametrize("method", ["dafl", "dfad", "dfq"])
def test_command_end_to_end(method, tmp_path, teacher_file, capsys):
    out = tmp_path / method
    args = [
        method,
        "--teacher",
        str(teacher_file),
        "--dataset",
        "digits",
        "--image-size",
        "8",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        "--iterations",
        "3",
        "--eval-every",
        "2",
        "--batch-size",
        "8",
        "--ngf",
        "4",
        "--z-dim",
        "8",
        "--student-steps",
        "2",
        "--epoch-steps",
        "4",
    ]
    assert cli_main(args) == 0
    result = json.loads((out / "result.json").read_text())
    for key in ("test_accuracy", "best_test_accuracy", "seconds_per_iteration", "teacher_test_accuracy"):
        assert isinstance(result[key], float), key
    assert (result["method"], result["iterations"], result["dataset"], result["batch_size"]) == (
        method,
        3,
        "digits",
        8,
    )
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 3]
    assert {"generator_loss", "student_loss", "test_accuracy", "student_lr"} <= rows[-1].keys()
    assert sorted(p.name for p in (out / "pseudo").iterdir()) == ["round_000002.png", "round_000003.png"]
    assert load_model(out / "model.pt", "wrn-16-1", in_channels=1).num_classes == 10
    config = json.loads((out / "config.json").read_text())
    assert config["student_steps"] == 2 and config["batch_size"] == 8
    assert f"{method}: test_accuracy" in capsys.readouterr().out
    assert cli_main(args) == 2  # a finished run is protected


def test_command_errors(tmp_path, teacher_file, capsys):
    assert cli_main(["dfq", "--teacher", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert (
        cli_main(["dafl", "--teacher", str(teacher_file), "--dataset", "svhn", "--out", str(tmp_path / "y")])
        == 2
    )
    assert "trained on digits" in capsys.readouterr().err
    assert (
        cli_main(
            ["dfad", "--teacher", str(teacher_file), "--discrepancy", "l2", "--out", str(tmp_path / "z")]
        )
        == 2
    )


def _run(tmp_path, name, cfg, *, resume=False, stop_at=None):
    from zskt.data import load_dataset
    from zskt.runlog import RunLog

    digits = load_dataset("digits", image_size=8, splits=("test",))
    log = RunLog(
        tmp_path / name, command="dfq", config={"iterations": cfg.iterations}, quiet=True, resume=resume
    )
    if stop_at is not None:
        save = log.save_checkpoint

        def save_then_stop(state):
            save(state)
            if state["step"] >= stop_at:
                raise KeyboardInterrupt

        log.save_checkpoint = save_then_stop
    torch.manual_seed(0)
    teacher = build_model("wrn-16-1", 10, 1).eval()
    student = build_model("wrn-16-1", 10, 1)
    return train_generative(cfg, log, teacher, student, digits.test, digits.mean, digits.std, name="dfq")


def test_resume_gives_the_uninterrupted_result(tmp_path):
    # DFQ: every piece of state is in play (generator BN buffers, SGD momentum, the epoch schedule, the z
    # stream).
    cfg = DFQConfig(
        iterations=6,
        eval_every=2,
        batch_size=8,
        ngf=4,
        z_dim=8,
        student_steps=2,
        epoch_steps=4,
        device="cpu",
        act=0.1,
    )
    straight = _run(tmp_path, "straight", cfg)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", cfg, stop_at=2)
    resumed = _run(tmp_path, "resumed", cfg, resume=True)
    a, b = load_model(tmp_path / "straight" / "model.pt"), load_model(tmp_path / "resumed" / "model.pt")
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert (
        rows[0]["student_lr"] == 0.1 and rows[-1]["student_lr"] < 0.1
    )  # one epoch (2 rounds) at the full rate


def test_command_with_resnets(tmp_path):
    # A ResNet teacher (BN hooks on its layers, activation term from its `linear` input) into a ResNet
    # student.
    torch.manual_seed(0)
    teacher = tmp_path / "resnet.pt"
    save_model(build_model("resnet-18", 10, 1), teacher, dataset="digits", image_size=8)
    out = tmp_path / "run"
    args = [
        "dfq",
        "--teacher",
        str(teacher),
        "--student",
        "resnet-18",
        "--dataset",
        "digits",
        "--image-size",
        "8",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        "--iterations",
        "1",
        "--batch-size",
        "4",
        "--ngf",
        "4",
        "--z-dim",
        "8",
        "--student-steps",
        "1",
        "--epoch-steps",
        "1",
        "--act",
        "0.1",
    ]
    assert cli_main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["student"] == "resnet-18" and isinstance(result["test_accuracy"], float)
