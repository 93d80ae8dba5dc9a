"""Few-shot KD+AT (SPEC §4): the loss against hand-computed values, the M-per-class subsets a run records, the
no-teacher baseline as the same run with α = β = 0, fine-tuning from given weights, and the command end to end
(run folder, resume, errors) at toy size on the embedded digits."""

import json
import math

import pytest
import torch

from zskt.cli import main
from zskt.data import load_dataset
from zskt.errors import ZsktError
from zskt.evaluate import evaluate_accuracy
from zskt.losses import kd_at_loss
from zskt.methods.kd_at import KDATConfig
from zskt.methods.schedule import Schedule
from zskt.models import build_model, load_model, save_model
from zskt.runlog import RunLog

# Toy size: 8x8 digits, 2 images per class (20 images, one batch), 1 to 3 iterations.
SIZE = ["--dataset", "digits", "--image-size", "8", "-M", "2", "--quiet"]
TINY = ["--epochs", "1", "--scale-n-iters", "0.01"]  # int(1 · 0.01 · 1400 / 20) = 0 -> at least 1 epoch


# ---------------------------------------------------------------------------------------------- the loss


def softmax(row):
    exps = [math.exp(v - max(row)) for v in row]
    return [e / sum(exps) for e in exps]


def attention_by_hand(act):
    """act[c][i] (one sample, C channels, H·W positions): channel mean of squares, then unit L2 norm."""
    channels, positions = len(act), len(act[0])
    amap = [sum(act[c][i] ** 2 for c in range(channels)) / channels for i in range(positions)]
    norm = math.sqrt(sum(v * v for v in amap))
    return [v / norm for v in amap]


def test_kd_at_loss_matches_hand_computation():
    s_logits = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t_logits = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
    labels = [1, 2]
    # one layer, B = 2, student 2 channels and teacher 1 channel, 2x1 spatial map (H·W = 2)
    s_act = [[[1.0, 2.0], [3.0, 0.0]], [[0.5, 1.0], [1.0, 1.0]]]  # [b][c][position]
    t_act = [[[2.0, 1.0]], [[1.0, 3.0]]]
    alpha, temperature, beta = 0.9, 4.0, 1000.0
    batch, classes = 2, 3

    ce = sum(-math.log(softmax(s_logits[b])[labels[b]]) for b in range(batch)) / batch
    kl_sum = 0.0
    for b in range(batch):
        p_s = softmax([v / temperature for v in s_logits[b]])
        p_t = softmax([v / temperature for v in t_logits[b]])
        kl_sum += sum(p_t[c] * (math.log(p_t[c]) - math.log(p_s[c])) for c in range(classes))
    kl_element_mean = kl_sum / (batch * classes)  # the authors' reduction: ÷ B·C, not ÷ B
    at = sum(
        (a - b) ** 2
        for bb in range(batch)
        for a, b in zip(attention_by_hand(s_act[bb]), attention_by_hand(t_act[bb]), strict=False)
    ) / (batch * 2)
    # weights: CE 1 - α = 0.1, KL 2·α·T² = 28.8, attention β per layer
    expected = 0.1 * ce + 28.8 * kl_element_mean + 1000.0 * at

    def tensor(x):
        return torch.tensor(x, dtype=torch.float64)

    s_act_t = tensor(s_act).view(2, 2, 2, 1)  # (B, C, H, W)
    t_act_t = tensor(t_act).view(2, 1, 2, 1)
    labels_t = torch.tensor(labels)
    got = kd_at_loss(
        tensor(s_logits),
        [s_act_t],
        labels_t,
        tensor(t_logits),
        [t_act_t],
        alpha=alpha,
        temperature=temperature,
        beta=beta,
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert 28.8 * kl_element_mean > 0.01 and 1000 * at > 0.01 and 0.1 * ce > 0.01  # every term counts

    # Each weight on its own: three layers add up (β per layer, no ÷ 3); α = 0, β = 0 is plain CE.
    three = kd_at_loss(
        tensor(s_logits),
        [s_act_t] * 3,
        labels_t,
        tensor(t_logits),
        [t_act_t] * 3,
        alpha=alpha,
        temperature=temperature,
        beta=beta,
    )
    assert three.item() == pytest.approx(expected + 2 * 1000.0 * at, rel=1e-6)
    ce_only = kd_at_loss(
        tensor(s_logits), [s_act_t], labels_t, tensor(t_logits), [t_act_t], alpha=0.0, beta=0.0
    )
    assert ce_only.item() == pytest.approx(ce, rel=1e-6)  # the loss computes in float32
    kd_only = kd_at_loss(
        tensor(s_logits),
        [s_act_t],
        labels_t,
        tensor(t_logits),
        [t_act_t],
        alpha=1.0,
        beta=0.0,
        temperature=temperature,
    )
    assert kd_only.item() == pytest.approx(2 * 16 * kl_element_mean, rel=1e-6)
    batchmean = kd_at_loss(
        tensor(s_logits),
        [s_act_t],
        labels_t,
        tensor(t_logits),
        [t_act_t],
        alpha=1.0,
        beta=0.0,
        temperature=temperature,
        kl_reduction="batchmean",
        kd_factor=1.0,
    )
    assert batchmean.item() == pytest.approx(16 * kl_sum / batch, rel=1e-6)


def test_kd_at_loss_is_weighted_ce_when_student_equals_teacher():
    torch.manual_seed(0)
    logits, acts, labels = torch.randn(4, 10), [torch.randn(4, 3, 4, 4)], torch.tensor([0, 1, 2, 3])
    loss = kd_at_loss(logits, acts, labels, logits.clone(), [a * 2 for a in acts])  # maps are scale-free
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert loss.item() == pytest.approx(0.1 * ce.item(), abs=1e-6)


def test_config_defaults_are_the_fskt_scripts():
    cfg = KDATConfig(teacher="t.pt", dataset="cifar10", images_per_class=200)
    assert (cfg.alpha, cfg.temperature, cfg.attention_beta, cfg.kl_reduction, cfg.kd_factor) == (
        0.9,
        4.0,
        1000.0,
        "mean",
        2.0,
    )
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.batch_size, cfg.lr_decay) == (
        0.1,
        0.9,
        5e-4,
        False,
        128,
        0.2,
    )
    assert cfg.student == "wrn-16-1" and cfg.init is None and cfg.finetune_epochs is None
    # β preset: 1000 per layer at 32x32, rescaled by (side/32)² (the attention term is a mean over H·W).
    assert [KDATConfig(dataset=d).attention_beta for d in ("svhn", "fashion-mnist", "digits")] == [
        1000,
        1000,
        250,
    ]
    assert [KDATConfig(dataset="digits", image_size=s).attention_beta for s in (8, 32)] == [62.5, 1000]
    assert KDATConfig(dataset="cifar10", beta=0.0).attention_beta == 0.0


def test_finetune_schedule_is_kd_at_unless_its_length_is_given():
    full = KDATConfig(dataset="cifar10", images_per_class=100).schedule(50_000)
    assert (full.epochs, full.milestones, full.batches_per_epoch) == (10_000, (3000, 6000, 8000), 8)
    assert KDATConfig(dataset="cifar10", images_per_class=100, init="zs.pt").schedule(50_000) == full
    ferles = KDATConfig(dataset="cifar10", images_per_class=100, init="zs.pt", finetune_epochs=200)
    assert ferles.schedule(50_000) == Schedule(epochs=200, milestones=(60, 120, 160), batches_per_epoch=8)
    # finetune_epochs only applies to fine-tuning
    assert KDATConfig(dataset="cifar10", images_per_class=100, finetune_epochs=200).schedule(50_000) == full


def test_finetune_length_through_the_printout(capsys):
    argv = [
        "kd-at",
        "--dataset",
        "cifar10",
        "-M",
        "100",
        "--init",
        "zs.pt",
        "--finetune-epochs",
        "200",
        "--print-schedule",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "200 epochs" in out and "60/120/160" in out and " 1600" in out


# ---------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A (random) digits WRN-16-2 teacher and WRN-16-1 student as `zskt train` would save them, plus
    misfits."""
    root = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    paths = {}
    for name, arch, channels, dataset, size in (
        ("teacher", "wrn-16-2", 1, "digits", 8),
        ("student", "wrn-16-1", 1, "digits", 8),
        ("rgb", "wrn-16-2", 3, "digits", 8),
        ("svhn", "wrn-16-2", 3, "svhn", 32),
        ("big", "wrn-16-2", 1, "digits", 16),
    ):
        paths[name] = root / f"{name}.pt"
        save_model(build_model(arch, 10, channels), paths[name], dataset=dataset, image_size=size)
    return paths


@pytest.fixture(scope="module")
def digits8():
    return load_dataset("digits", image_size=8)


def kd_at(out, files, *extra):
    return main(["kd-at", "--teacher", str(files["teacher"]), "--out", str(out), *SIZE, *extra])


def read(path):
    return json.loads(path.read_text())


TWO_EPOCHS = ["--epochs", "1", "--scale-n-iters", "0.03", "--eval-every", "1"]  # int(0.03 · 1400 / 20) = 2


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, files):
    """One finished toy run (seed 0, 2 epochs, checkpoint after the first), shared by the tests below."""
    out = tmp_path_factory.mktemp("runs") / "base"
    assert kd_at(out, files, *TWO_EPOCHS) == 0
    return out


def test_run_folder_contract(base_run, capsys):
    out = base_run
    result = read(out / "result.json")
    assert 0 <= result["test_accuracy"] <= 100 and result["command"] == "kd-at"
    assert (result["student"], result["images_per_class"], result["beta"], result["alpha"], result["lr"]) == (
        "wrn-16-1",
        2,
        62.5,
        0.9,
        0.1,
    )  # β preset at 8x8: 1000 · (8/32)²
    assert 0 <= result["teacher_test_accuracy"] <= 100 and "init_test_accuracy" not in result
    config = read(out / "config.json")
    # The resolved schedule is stored: int(1 · 0.03 · 1400 / 20) = 2 epochs; base milestones int(0.3 · 1) = 0.
    assert config["resolved"]["schedule"] == {
        "epochs": 2,
        "milestones": [0, 0, 0],
        "batches_per_epoch": 1,
        "iterations": 2,
    }
    assert config["resolved"]["beta"] == 62.5 and config["beta"] is None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["test_accuracy"] == result["test_accuracy"]
    student = load_model(out / "model.pt", "wrn-16-1", num_classes=10, in_channels=1)
    assert student.arch()["name"] == "wrn-16-1"
    assert not (out / "checkpoint.pt").exists()
    # The schedule the run used is the one the tool prints.
    assert main(["kd-at", *SIZE, *TWO_EPOCHS, "--print-schedule"]) == 0
    assert "2 0/0/0 1 2" in " ".join(capsys.readouterr().out.split())


def test_resume_continues_to_the_same_result(tmp_path, base_run, files, monkeypatch):
    save = RunLog.save_checkpoint

    def save_then_stop(self, state):
        save(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunLog, "save_checkpoint", save_then_stop)
    out = tmp_path / "cut"
    assert kd_at(out, files, *TWO_EPOCHS) == 130
    assert (out / "checkpoint.pt").exists() and not (out / "result.json").exists()
    monkeypatch.setattr(RunLog, "save_checkpoint", save)
    assert kd_at(out, files, *TWO_EPOCHS) == 2  # an unfinished run is not clobbered without --resume
    assert kd_at(out, files, *TWO_EPOCHS, "--resume", "--seed", "5") == 2  # nor resumed with another config
    assert kd_at(out, files, *TWO_EPOCHS, "--resume") == 0
    whole, cut = read(base_run / "result.json"), read(out / "result.json")
    assert cut["test_accuracy"] == whole["test_accuracy"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    a, b = load_model(base_run / "model.pt").state_dict(), load_model(out / "model.pt").state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert read(out / "config.json")["resolved"] == read(base_run / "config.json")["resolved"]
    # A resumed run chooses its images again from its seed: the same subset as the uninterrupted run.
    assert read(out / "subset.json") == read(base_run / "subset.json")


def test_subsets_have_m_per_class_differ_across_seeds_and_match_no_teacher(
    tmp_path, base_run, files, digits8
):
    seed0 = read(base_run / "subset.json")
    assert kd_at(tmp_path / "seed1", files, *TINY, "--seed", "1") == 0
    seed1 = read(tmp_path / "seed1" / "subset.json")
    labels = digits8.train.labels
    for subset in (seed0, seed1):
        assert subset["images_per_class"] == 2
        counts = torch.bincount(labels[torch.tensor(subset["indices"])], minlength=10)
        assert counts.tolist() == [2] * 10 and len(set(subset["indices"])) == 20
    assert (seed0["seed"], seed1["seed"]) == (0, 1) and seed0["indices"] != seed1["indices"]


def test_no_teacher_baseline_is_kd_at_with_alpha_and_beta_zero(tmp_path, base_run, files):
    # `zskt train -M` and `zskt kd-at --alpha 0 --beta 0` share subset, initialisation, order and schedule:
    # the same weights come out, so KD+AT and no-teacher differ by the loss alone.
    assert kd_at(tmp_path / "kd", files, *TWO_EPOCHS, "--alpha", "0", "--beta", "0") == 0
    assert main(["train", "--model", "wrn-16-1", "--out", str(tmp_path / "nt"), *SIZE, *TWO_EPOCHS]) == 0
    a = load_model(tmp_path / "kd" / "model.pt").state_dict()
    b = load_model(tmp_path / "nt" / "model.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("subset.json",):
        assert read(tmp_path / "nt" / name) == read(tmp_path / "kd" / name) == read(base_run / name)
    assert (
        read(tmp_path / "nt" / "config.json")["resolved"]["schedule"]
        == read(base_run / "config.json")["resolved"]["schedule"]
    )


def test_full_data_has_no_subset(tmp_path, files):
    out = tmp_path / "full"
    assert kd_at(out, files, "-M", "-1", "--epochs", "1", "--batch-size", "1400") == 0
    assert not (out / "subset.json").exists()
    assert read(out / "config.json")["resolved"]["schedule"] == {
        "epochs": 1,
        "milestones": [0, 0, 0],
        "batches_per_epoch": 1,
        "iterations": 1,
    }


def test_finetuning_starts_from_the_given_weights(tmp_path, base_run, files, digits8):
    init = load_model(files["student"])
    before = evaluate_accuracy(init, digits8.test, digits8.mean, digits8.std)
    # A vanishing learning rate and no weight decay: the fine-tuned weights are the --init weights.
    assert (
        kd_at(
            tmp_path / "ft",
            files,
            *TINY,
            "--init",
            str(files["student"]),
            "--lr",
            "1e-30",
            "--weight-decay",
            "0",
        )
        == 0
    )
    result = read(tmp_path / "ft" / "result.json")
    assert result["init_test_accuracy"] == pytest.approx(before)
    assert result["init"] == str(files["student"]) and result["lr"] == 1e-30
    tuned = load_model(tmp_path / "ft" / "model.pt")
    for (name, p), q in zip(init.named_parameters(), tuned.parameters(), strict=False):
        assert torch.allclose(p, q, atol=1e-12), name
    # Without --init the student starts from a fresh network of its seed, not from the file.
    fresh = load_model(base_run / "model.pt")
    assert not torch.allclose(next(init.parameters()), next(fresh.parameters()))


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--out", "X"], "--teacher"),
        (["--teacher", "T"], "--out"),
        (["--teacher", "T", "--out", "X", "--dataset", "digits"], "--images-per-class"),
        (["--teacher", "/nonexistent.pt", "--out", "X", "-M", "2"], "--teacher /nonexistent.pt not found"),
        (["--teacher", "T", "--out", "X", "-M", "2", "--student", "resnet-50"], "unknown student"),
        (["--teacher", "T", "--out", "X", "-M", "2", "--alpha", "1.5"], "alpha must be in [0, 1]"),
        (["--teacher", "T", "--out", "X", "-M", "0"], "images_per_class"),
    ],
)
def test_cli_errors_are_one_line(argv, words, capsys, tmp_path, files):
    argv = [str(files["teacher"]) if a == "T" else str(tmp_path / "x") if a == "X" else a for a in argv]
    assert main(["kd-at", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()  # nothing is written before the options are valid


@pytest.mark.parametrize("command", ["kd-at", "train"])
def test_help_lists_the_options(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--print-schedule" in out and "--images-per-class" in out
    if command == "kd-at":
        assert all(
            option in out for option in ("--teacher", "--student", "--init", "--finetune-epochs", "--beta")
        )


@pytest.mark.parametrize(
    "which,extra,words",
    [
        ("rgb", [], "3-channel"),
        ("svhn", [], "trained on svhn, not digits"),
        ("big", [], "16x16 images, these are 8x8; pass --image-size 16"),
        ("teacher", ["--init", "TEACHER"], "--init"),  # a WRN-16-2 file as the WRN-16-1 student
    ],
)
def test_network_file_errors(which, extra, words, tmp_path, files, capsys):
    extra = [str(files["teacher"]) if a == "TEACHER" else a for a in extra]
    argv = ["kd-at", "--teacher", str(files[which]), "--out", str(tmp_path / "r"), *SIZE, *TINY, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "r" / "result.json").exists()


def test_wrong_init_architecture_names_both(tmp_path, files, digits8):
    from zskt.methods.kd_at import kd_at as run

    cfg = KDATConfig(
        teacher=str(files["teacher"]),
        dataset="digits",
        image_size=8,
        images_per_class=2,
        init=str(files["teacher"]),
    )
    log = RunLog(tmp_path / "r", command="kd-at", config={}, quiet=True)
    with pytest.raises(ZsktError, match=r"--init: .*wrn-16-2.*expected wrn-16-1"):
        run(cfg, log, data=digits8)
