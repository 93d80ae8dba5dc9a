"""The supervised schedules of SPEC §4: the authors' epoch/milestone scaling with M, reproduced number for
number, by `make_schedule` and by the tool's own printout (`--print-schedule`, which needs no data files)."""

import re

import pytest

from zskt.cli import main
from zskt.methods.schedule import make_schedule, step_lr

# SPEC §4's table: M -> (epochs, milestones, batches/epoch, total iterations); -1 is the full train split.
CIFAR10 = {
    10: (100_000, (30000, 60000, 80000), 1, 100_000),
    25: (40_000, (12000, 24000, 32000), 2, 80_000),
    50: (20_000, (6000, 12000, 16000), 4, 80_000),
    75: (13_333, (4000, 8000, 10666), 6, 79_998),
    100: (10_000, (3000, 6000, 8000), 8, 80_000),
    200: (5_000, (1500, 3000, 4000), 16, 80_000),
    -1: (200, (60, 120, 160), 391, 78_200),
}
SVHN = {
    10: (7_325, (2197, 4395, 5860), 1, 7_325),
    25: (7_325, (2197, 4395, 5860), 2, 14_650),
    50: (7_325, (2197, 4395, 5860), 4, 29_300),
    75: (7_325, (2197, 4395, 5860), 6, 43_950),
    100: (7_325, (2197, 4395, 5860), 8, 58_600),
    -1: (100, (30, 60, 80), 573, 57_300),
}
TABLES = {"cifar10": (50_000, CIFAR10), "svhn": (73_257, SVHN)}


def as_tuple(schedule):
    return schedule.epochs, schedule.milestones, schedule.batches_per_epoch, schedule.iterations


@pytest.mark.parametrize("dataset", TABLES)
def test_make_schedule_reproduces_the_spec_table(dataset):
    n_train, table = TABLES[dataset]
    for m, row in table.items():
        assert as_tuple(make_schedule(dataset, n_train, m, 128)) == row, (dataset, m)


def parse_printout(text):
    """{M: (epochs, milestones, batches/epoch, iterations)} from the `--print-schedule` table."""
    rows = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\s*(all|\d+)\s+[\d.]+\s+(\d+)\s+([\d/]+)\s+(\d+)\s+(\d+)\s*", line)
        if match:
            m = -1 if match[1] == "all" else int(match[1])
            rows[m] = (int(match[2]), tuple(map(int, match[3].split("/"))), int(match[4]), int(match[5]))
    return rows


@pytest.mark.parametrize("command", ["kd-at", "train"])
@pytest.mark.parametrize("dataset", TABLES)
def test_printout_reproduces_the_spec_table_without_data(command, dataset, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ZSKT_DATA", str(tmp_path))  # an empty data root: the printout must not read files
    n_train, table = TABLES[dataset]
    listed = ",".join(map(str, table))
    assert main([command, "--dataset", dataset, "--print-schedule", listed]) == 0
    out = capsys.readouterr().out
    assert f"{n_train} train images" in out
    assert parse_printout(out) == table
    assert not any(tmp_path.iterdir())


def test_printout_of_one_m_uses_images_per_class(capsys):
    assert main(["kd-at", "--dataset", "cifar10", "-M", "75", "--print-schedule"]) == 0
    assert parse_printout(capsys.readouterr().out) == {75: CIFAR10[75]}


def test_svhn_same_iterations_option_is_the_papers_statement():
    # The paper says the same iterations for every M; the authors' SVHN scripts scale by M/100 instead.
    for m in (10, 25, 50, 75, 100):
        s = make_schedule("svhn", 73_257, m, 128, same_iterations=True)
        assert s.epochs == int(100 * 73_257 / (10 * m)), m
        assert s.milestones == tuple(int(b * 73_257 / (10 * m)) for b in (30, 60, 80))
    assert make_schedule("svhn", 73_257, 100, 128, same_iterations=True).iterations == SVHN[100][3]
    # An explicit scale_n_iters wins over both.
    assert make_schedule("svhn", 73_257, 10, 128, scale_n_iters=1.0).epochs == 73_257


def test_svhn_same_iterations_through_the_printout(capsys):
    assert main(["kd-at", "--dataset", "svhn", "--same-iterations", "--print-schedule", "10"]) == 0
    assert parse_printout(capsys.readouterr().out)[10] == (73_257, (21977, 43954, 58605), 1, 73_257)


def test_fashion_mnist_base_170_scaled_like_svhn():
    full = make_schedule("fashion-mnist", 60_000, -1, 128)
    assert as_tuple(full) == (170, (51, 102, 136), 469, 79_730)
    for m in (10, 50, 100):
        s = make_schedule("fashion-mnist", 60_000, m, 128)
        scale = (m / 100) * 60_000 / (10 * m)
        assert s.epochs == int(170 * scale) and s.milestones == tuple(int(b * scale) for b in (51, 102, 136))


def test_step_lr_follows_the_authors_stepping():
    # scheduler.step(epoch=epoch) after each epoch: the decay at milestone m first applies in epoch m + 1.
    milestones = (60, 120, 160)
    assert step_lr(0.1, 0, milestones) == 0.1
    assert step_lr(0.1, 60, milestones) == 0.1
    assert step_lr(0.1, 61, milestones) == pytest.approx(0.02)
    assert step_lr(0.1, 121, milestones) == pytest.approx(0.004)
    assert step_lr(0.1, 161, milestones) == pytest.approx(0.0008)
    assert step_lr(0.1, 199, milestones) == pytest.approx(0.0008)


def test_print_schedule_errors_are_one_line(capsys):
    assert main(["kd-at", "--print-schedule", "10,x"]) == 2
    assert "--print-schedule" in capsys.readouterr().err
    assert main(["kd-at", "--print-schedule", "0"]) == 2
    assert "images_per_class" in capsys.readouterr().err
