"""The command line: help that stands alone (no SPEC file, no doubled defaults, no literal %%), and
`--config RUN/config.json` replaying a run's configuration with options given over it; provenance."""

import argparse
import dataclasses
import hashlib
import json
import re

import pytest

from zskt.cli import build_parser, load_commands, run_folder_command
from zskt.config import field, help_with_default


def subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(load_commands())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def stands_alone(command: str) -> list[str]:
    """What is wrong with a command's help: a cited SPEC file, a literal %%, an option whose help states its
    default and then gets "(default: ...)" appended again."""
    p = subparser(command)
    text = p.format_help()
    problems = []
    if "SPEC" in text:
        problems.append("cites SPEC, a file users do not have")
    if "%%" in text:
        problems.append("shows a literal %%")
    for action in p._actions:
        if action.help and re.search(r"default.*\(default: [^)]*\)$", action.help, re.IGNORECASE):
            problems.append(f"doubled default in {action.option_strings[0]}")
    return problems


@pytest.mark.parametrize("command", list(load_commands()))
def test_help_stands_alone(command):
    assert stands_alone(command) == []


def test_top_level_help_lists_plot():
    assert "plot" in build_parser(load_commands()).format_help()


def test_a_default_is_shown_once():
    assert help_with_default("side of the images (default 16)", None) == "side of the images (default 16)"
    assert help_with_default("N; default: the data set's preset", None) == "N; default: the data set's preset"
    assert help_with_default("M (required): images per class", -1) == "M (required): images per class"
    assert help_with_default("batch size", 128) == "batch size (default: 128)"
    assert help_with_default("betas", (0.5, 0.9)) == "betas (default: 0.5,0.9)"
    assert help_with_default("an optional file", None) == "an optional file (default: none)"


# ------------------------------------------------------------------------------------------ replay


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    teacher: str = field("", "a teacher file")
    student: str = field("wrn-16-1", "student network")
    lr: float = field(0.1, "learning rate, 30/60/80% decay")
    widths: tuple[int, ...] = field((1, 2), "widths")
    seed: int = field(0, "seed")
    device: str = field("auto", "cpu, cuda or auto")
    precision: str = field("auto", "fp32, bf16 or auto")


def toy_run(cfg, log):
    log.metrics({"step": 1, "toy_loss": cfg.lr})
    return log.finish({"test_accuracy": 50.0 + cfg.seed})


def toy_main(argv):
    commands = {"toy": run_folder_command("toy", "a toy run", ToyConfig, toy_run, required=("teacher",))}
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    from zskt.errors import ZsktError

    try:
        return args._command.main(args)
    except ZsktError as e:
        return str(e)


def test_config_replays_a_run_with_overrides_and_records_provenance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.pt").write_bytes(b"teacher weights")
    argv = ["toy", "--out", "a", "--teacher", "t.pt", "--lr", "0.5", "--widths", "3,4", "--seed", "1"]
    assert toy_main(argv) == 0
    first = json.loads((tmp_path / "a" / "config.json").read_text())
    assert first["device"] == "auto"
    assert first["resolved"]["runtime"] == {"device": "cpu", "precision": "fp32"}
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["inputs"]["teacher"] == {
        "path": str(tmp_path / "t.pt"),
        "bytes": 15,
        "sha256": hashlib.sha256(b"teacher weights").hexdigest(),
    }
    assert result["started"] <= result["finished"] and result["device"] == "cpu"
    # Replayed from another folder: the relative teacher path is found through the recorded absolute one;
    # the seed given on the command line overrides the replayed one.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    replay = str(tmp_path / "a" / "config.json")
    assert toy_main(["toy", "--out", "b", "--config", replay, "--seed", "2"]) == 0
    second = json.loads((tmp_path / "elsewhere" / "b" / "config.json").read_text())
    assert second["lr"] == 0.5 and second["widths"] == [3, 4] and second["seed"] == 2
    assert second["teacher"] == str(tmp_path / "t.pt")
    # A run folder works as well as its config.json.
    assert toy_main(["toy", "--out", "c", "--config", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "elsewhere" / "c" / "config.json").read_text())["seed"] == 1


def test_config_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--teacher required" in toy_main(["toy", "--out", "a"])
    assert "file not found" in toy_main(["toy", "--out", "a", "--config", "nope.json"])
    (tmp_path / "other.json").write_text(json.dumps({"command": "zero-shot", "teacher": "x"}))
    assert "zskt zero-shot --config" in toy_main(["toy", "--out", "a", "--config", "other.json"])
    (tmp_path / "odd.json").write_text(json.dumps({"command": "toy", "teacher": "x", "gamma": 1}))
    assert "unknown ToyConfig field(s): gamma" in toy_main(["toy", "--out", "a", "--config", "odd.json"])


def test_percent_in_a_field_help_is_shown_once():
    parser = build_parser({"toy": run_folder_command("toy", "a toy run", ToyConfig, toy_run)})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["toy"].format_help()
    assert "30/60/80% decay" in " ".join(text.split()) and "%%" not in text
