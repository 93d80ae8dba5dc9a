"""Presets per data set and method (and their errors and fall-backs), and check_files before a run starts."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from zskt.data import DATASETS, check_files, get_info, load_dataset, nearest_builtin, preset
from zskt.data.synthetic import write_cifar_batch, write_fake_dataset
from zskt.errors import ZsktError

# The values the methods used before they were moved into the records (methods/schedule.py BASE_EPOCHS and
# default_scale_n_iters, methods/zero_shot.py ITERATIONS and BETAS, methods/kd_at.py's 1000·(side/32)²).
EXPECTED = {
    "cifar10": (200, 1.0, 80_000, 250.0, 1000.0),
    "cifar100": (200, 1.0, 80_000, 250.0, 1000.0),
    "svhn": (100, "m/100", 50_000, 250.0, 1000.0),
    "fashion-mnist": (170, "m/100", 80_000, 250.0, 1000.0),
    "digits": (30, 1.0, 200, 0.0, 250.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_are_the_methods_values(name):
    got = (
        preset(name, "train", "epochs"),
        preset(name, "train", "scale_n_iters_few_shot"),
        preset(name, "zero-shot", "iterations"),
        preset(name, "zero-shot", "beta"),
        preset(name, "kd-at", "beta"),
    )
    assert got == EXPECTED[name]
    info = DATASETS[name]
    assert preset(name, "kd-at", "beta") == 1000.0 * (info.image_size / 32) ** 2


def test_missing_preset_is_one_line_naming_the_option():
    with pytest.raises(ZsktError) as caught:
        preset("digits", "dafl", "iterations", "--iterations")
    assert str(caught.value) == "digits has no dafl preset for iterations; pass --iterations N"
    with pytest.raises(ZsktError, match="CIFAR-100 has no zero-shot preset for lr_g; pass --lr-g N"):
        preset("CIFAR-100", "zero-shot", "lr_g")  # the option defaults to --KEY


def _npz(tmp_path, name, shape, classes=3):
    x = np.zeros((10 * classes, *shape), np.uint8)
    y = np.arange(10 * classes) % classes
    np.savez(tmp_path / name, x=x, y=y)
    return f"npz:{tmp_path / name}"


@pytest.mark.parametrize(
    "shape, nearest",
    [
        ((16, 16), "digits"),
        ((28, 28), "fashion-mnist"),
        ((32, 32, 3), "cifar10"),
        ((64, 64, 3), "cifar10"),
        ((8, 8), "digits"),
        ((32, 32, 4), "cifar10"),
    ],
)
def test_own_data_takes_the_nearest_builtin_presets_with_a_note(tmp_path, shape, nearest):
    name = _npz(tmp_path, "own.npz", shape)
    assert nearest_builtin(get_info(name)).name == nearest
    notes = []
    assert (
        preset(name, "zero-shot", "iterations", "--iterations", note=notes.append)
        == DATASETS[nearest].presets["zero-shot"]["iterations"]
    )
    assert len(notes) == 1 and DATASETS[nearest].title in notes[0] and "--iterations" in notes[0]
    assert "npz:own.npz has no presets of its own" in notes[0]


def test_fallback_note_goes_to_the_log_by_default_and_missing_presets_still_fail(tmp_path, caplog):
    name = _npz(tmp_path, "own.npz", (16, 16))
    with caplog.at_level(logging.WARNING, logger="zskt.data"):
        assert preset(name, "train", "epochs", "--epochs") == 30
    assert "taken from digits" in caplog.text
    with pytest.raises(ZsktError) as caught:
        preset(name, "dafl", "iterations", "--iterations")
    assert str(caught.value) == (
        "npz:own.npz has no dafl preset for iterations (nor has digits, the built-in set "
        "nearest to it); pass --iterations N"
    )


# ------------------------------------------------------------------------------------------- check_files


def test_zero_shot_needs_only_the_test_split(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batch(folder / "test_batch", np.zeros((4, 3072), np.uint8), [0, 1, 2, 3])
    assert check_files("cifar10", tmp_path) is DATASETS["cifar10"]  # default: splits=("test",)
    data = load_dataset("cifar10", tmp_path, splits=("test",))
    assert data.train is None and len(data.test) == 4 and data.mean == DATASETS["cifar10"].mean
    with pytest.raises(ZsktError) as caught:
        check_files("cifar10", tmp_path, splits=("train", "test"))
    assert str(caught.value) == (
        f"CIFAR-10 file not found: {folder / 'data_batch_1'} (run `zskt download cifar10 "
        f"--data-dir {tmp_path}` or pass --download)"
    )
    with pytest.raises(ZsktError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)


def test_missing_test_file_hint_names_the_data_dir_passed(tmp_path):
    data_dir = tmp_path / "my data"
    with pytest.raises(ZsktError) as caught:
        check_files("svhn", data_dir, splits=("test",))
    text = str(caught.value)
    assert f"zskt download svhn --data-dir '{data_dir}'" in text and "test_32x32.mat" in text
    assert "train_32x32.mat" not in text and "\n" not in text


def test_check_files_with_download(tmp_path):
    assert check_files("svhn", tmp_path / "new" / "root", download=True).name == "svhn"  # can be made: fine
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "file").write_text("")
    with pytest.raises(
        ZsktError,
        match="cannot download into the data root .*file is not a folder; point "
        "--data-dir or ZSKT_DATA at a writable folder",
    ):
        check_files("svhn", tmp_path / "file" / "root", download=True)
    assert check_files("digits", tmp_path / "nothing here").name == "digits"  # embedded: no files


def test_check_files_scans_own_data(tmp_path):
    name = _npz(tmp_path, "own.npz", (8, 8), classes=5)
    info = check_files(name, splits=("test",))
    assert (info.num_classes, info.image_size, info.in_channels, info.source) == (5, 8, 1, "npz")
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 8, 8), np.float64), y=np.arange(4))
    with pytest.raises(ZsktError, match="float64"):
        check_files(f"npz:{tmp_path / 'bad.npz'}")


def test_unknown_split(tmp_path):
    write_fake_dataset("svhn", tmp_path, n_train=3, n_test=2)
    with pytest.raises(ZsktError, match="unknown split 'val'; splits are train and test"):
        load_dataset("svhn", tmp_path, splits=("val",))
    assert load_dataset("svhn", tmp_path, splits="train").test is None


def test_a_record_is_all_a_new_data_set_needs(tmp_path, monkeypatch):
    # One entry, reusing the SVHN reader on a differently named folder, is enough for get_info, check_files,
    # load_dataset and preset.
    svhn = DATASETS["svhn"]
    record = dataclasses.replace(
        svhn,
        name="svhn-copy",
        title="SVHN copy",
        remote=(),
        files={split: {split: (f"copy/{split}_32x32.mat",)} for split in ("train", "test")},
        presets={"zero-shot": {"iterations": 7}},
    )
    monkeypatch.setitem(DATASETS, "svhn-copy", record)
    write_fake_dataset("svhn", tmp_path / "copy", n_train=4, n_test=2)
    assert check_files("svhn-copy", tmp_path, splits=("train", "test")) is record
    assert len(load_dataset("svhn-copy", tmp_path).train) == 4
    assert preset("svhn-copy", "zero-shot", "iterations") == 7
    with pytest.raises(ZsktError, match="SVHN copy has no train preset for epochs; pass --epochs N"):
        preset("svhn-copy", "train", "epochs", "--epochs")


def test_dataset_name_touches_no_file(tmp_path):
    from zskt.data import dataset_name

    assert dataset_name("CIFAR-100") == "cifar100" and dataset_name("Fashion_MNIST") == "fashion-mnist"
    assert dataset_name(f"NPZ:{tmp_path / 'absent.npz'}") == f"npz:{tmp_path / 'absent.npz'}"
    assert dataset_name("folder:somewhere/else") == "folder:somewhere/else"
    with pytest.raises(ZsktError, match="unknown data set 'imagenet'"):
        dataset_name("imagenet")
    with pytest.raises(ZsktError, match="folder: needs a path"):
        dataset_name("folder:")
