"""`zskt demo --quick` end to end: the whole pipeline at toy lengths on digits, its report, and a rerun that
has nothing left to do."""

import json
import re

from zskt.cli import main


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"11 of 11 runs to do .*; expected about \d+:\d\d", printed)  # said up front
    report = out / "report.md"
    assert f"report (tables beside the paper's numbers, plots): {report.resolve()}" in printed
    text = report.read_text()
    for needed in ("zero-shot", "KD+AT", "no teacher", "fine-tuned", "Mean transition error", "paper"):
        assert needed in text, needed
    # The report's numbers are the runs' own.
    zs = json.loads((out / "digits/zero-shot/wrn-16-2_wrn-16-1/seed0/result.json").read_text())
    assert f"| **ours** | {zs['test_accuracy']:.2f} (n=1) |" in text
    mte = json.loads((out / "digits/belief/kd-at/wrn-16-2_wrn-16-1/M5/seed0/result.json").read_text())["mte"]
    assert f"{mte:.3f} (n=1)" in text
    assert (out / "accuracy_vs_m_digits_wrn-16-2_wrn-16-1.png").is_file()
    assert (out / "transition_curves_digits_wrn-16-2_wrn-16-1.png").is_file()
    assert json.loads((out / "experiment.json").read_text())["scale"] == 1
    # Rerunning skips everything.
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert "0 of 11 runs to do" in capsys.readouterr().out


def test_demo_plan_fits_its_budget():
    from zskt.experiments import EXPERIMENTS
    from zskt.experiments.demo import estimate_seconds

    # The unit costs were measured on this project's 2-core CPU: the plan must stay well inside 10 minutes
    # (room for a slower machine) and the quick pipeline inside one.
    assert sum(estimate_seconds(r) for r in EXPERIMENTS["demo"].runs()) < 6 * 60
    assert sum(estimate_seconds(r) for r in EXPERIMENTS["demo-quick"].runs()) < 60


def test_thread_count_is_fixed_by_default_and_load_adaptive_only_on_request(monkeypatch):
    import torch

    from zskt.experiments import EXPERIMENTS, demo

    run = EXPERIMENTS["demo"].runs()[0]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(demo, "other_processes_cpu", lambda: 1.0)  # a busy machine
        fixed = demo.ThreadPolicy()
        assert fixed(run) == "" and torch.get_num_threads() == 2  # the load does not change the arithmetic
        assert demo.ThreadPolicy(fixed=1)(run) == "" and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        adaptive = demo.ThreadPolicy(adaptive=True)  # --threads auto
        assert "1 thread" in adaptive(run) and torch.get_num_threads() == 1
        monkeypatch.setattr(demo, "other_processes_cpu", lambda: 0.0)
        assert adaptive(run) == "" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_demo_is_sized_to_the_machine_it_runs_on(tmp_path):
    import dataclasses

    from zskt.experiments import EXPERIMENTS
    from zskt.experiments.demo import BUDGET_SECONDS, UnitCosts, fit_scale, probe_costs

    demo = EXPERIMENTS["demo"]
    reference = UnitCosts.reference()
    assert fit_scale(demo, tmp_path / "a", reference)[0] == 1.0
    # A machine five times slower than the reference: the demo shrinks until it fits in 90 % of 10 minutes.
    slower = {k: 5 * v for k, v in reference.train_per_image.items()}
    slow = dataclasses.replace(
        reference,
        train_per_image=slower,
        zero_shot_per_batch=5 * reference.zero_shot_per_batch,
        belief_per_pair_step=5 * reference.belief_per_pair_step,
    )
    scale, expected = fit_scale(demo, tmp_path / "b", slow)
    assert 0 < scale < 1 and expected <= 0.9 * BUDGET_SECONDS
    # A folder that holds runs keeps their scale (experiment.json refuses a mix).
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "experiment.json").write_text('{"scale": 0.5}')
    assert fit_scale(demo, tmp_path / "c", reference)[0] == 0.5
    # The probe measures positive costs for the demo's networks here, in seconds.
    costs = probe_costs("cpu")
    assert set(costs.train_per_image) == {"wrn-16-2", "wrn-16-1"}
    assert costs.train_per_image["wrn-16-2"] > 0 and costs.zero_shot_per_batch > 0
    assert "probed on cpu" in costs.source
