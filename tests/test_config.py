"""Configs: typed options, validation, round trips (STYLE §3)."""

import argparse

import pytest

from zskt.config import add_config_arguments, config_from_args, from_dict, make_config, parse_value, to_dict
from zskt.errors import ZsktError
from zskt.methods.train import TrainConfig


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p, TrainConfig)
    return config_from_args(TrainConfig, p.parse_args(argv))


def test_defaults_are_the_papers_recipe():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.batch_size, cfg.lr_decay) == (
        0.1,
        0.9,
        5e-4,
        False,
        128,
        0.2,
    )


def test_options_override_typed_fields():
    cfg = parse(
        ["--dataset", "cifar10", "--epochs", "3", "--lr", "0.05", "--nesterov", "--model", "wrn-40-2"]
    )
    assert cfg.epochs == 3 and cfg.lr == 0.05 and cfg.nesterov is True and cfg.model == "wrn-40-2"
    assert parse([]).epochs is None


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--epochs", "-3"], "epochs must be positive"),
        (["--epochs", "three"], "bad value 'three' for --epochs"),
        (["--model", "resnet-50"], "unknown model"),
        (["--dataset", "imagenet"], "unknown data set"),
        (["--precision", "fp8"], "unknown precision"),
        (["--images-per-class", "0"], "images_per_class"),
    ],
)
def test_bad_values_are_one_line_errors(argv, words):
    with pytest.raises(ZsktError) as e:
        parse(argv)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unknown_keys_and_round_trip():
    with pytest.raises(ZsktError, match="unknown TrainConfig field"):
        make_config(TrainConfig, epoch=3)
    cfg = TrainConfig(dataset="svhn", epochs=7)
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_parse_value_kinds():
    assert parse_value(tuple[float, ...], "0.3, 0.6", "x") == (0.3, 0.6)
    assert parse_value(int | None, "none", "x") is None
    assert parse_value(bool, "yes", "x") is True
    with pytest.raises(ZsktError):
        parse_value(bool, "maybe", "x")
