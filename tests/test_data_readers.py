"""Readers of the canonical files, on tiny files written in the exact formats; the registry; the digits
split."""

from __future__ import annotations

import gzip
import logging
import os
import pickle

import numpy as np
import pytest
import torch

from zskt.data import DATASETS, ImageSplit, data_root, dataset_files_present, get_info, load_dataset
from zskt.data.readers import channel_stats, read_digits
from zskt.data.synthetic import (
    write_cifar100_file,
    write_cifar_batch,
    write_fake_dataset,
    write_idx,
    write_svhn_mat,
)
from zskt.errors import ZsktError

# --------------------------------------------------------------------------------------- registry, root


def test_registry_entries_are_consistent():
    assert set(DATASETS) == {"cifar10", "cifar100", "svhn", "fashion-mnist", "digits"}
    for key, info in DATASETS.items():
        assert info.name == key
        assert len(info.mean) == len(info.std) == info.in_channels
        assert info.num_classes == (100 if key == "cifar100" else 10)
        assert info.reader is not None and info.source == "built-in"
        assert {"train", "zero-shot", "kd-at"} <= set(info.presets)
    assert DATASETS["cifar10"].mean == (0.4914, 0.4822, 0.4465) and DATASETS["cifar10"].augment
    assert DATASETS["svhn"].std == (0.1980, 0.2010, 0.1970) and not DATASETS["svhn"].augment
    assert (DATASETS["digits"].n_train, DATASETS["digits"].n_test) == (1400, 397)
    assert not DATASETS["digits"].downloadable


def test_unknown_name_lists_known_ones():
    with pytest.raises(
        ZsktError,
        match="unknown data set 'mnist'.*cifar10, cifar100, svhn, fashion-mnist, digits, "
        "or npz:PATH or folder:PATH",
    ):
        load_dataset("mnist")
    assert get_info("Fashion_MNIST").name == "fashion-mnist" and get_info("CIFAR-10").name == "cifar10"


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZSKT_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data_root() == tmp_path / "home" / ".cache" / "zskt" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == tmp_path / "xdg" / "zskt" / "data"
    monkeypatch.setenv("ZSKT_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"


def test_image_split_to_and_len():
    split = ImageSplit(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.arange(3))
    moved = split.to("cpu")
    assert len(moved) == 3 and moved is not split and moved.images.dtype == torch.uint8


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "fashion-mnist"])
def test_fake_dataset_loads_with_registry_shapes(tmp_path, name, caplog):
    info = DATASETS[name]
    assert not dataset_files_present(name, tmp_path)
    n_train = 130 if name == "cifar100" else 30
    write_fake_dataset(name, tmp_path, n_train=n_train, n_test=12)
    assert dataset_files_present(name, tmp_path)
    with caplog.at_level(logging.WARNING, logger="zskt.data"):
        data = load_dataset(name, tmp_path)
    size = info.image_size
    assert data.train.images.shape == (n_train, info.in_channels, size, size)
    assert data.test.images.shape == (12, info.in_channels, size, size)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert set(data.train.labels.tolist()) == set(range(info.num_classes))
    assert (data.mean, data.std) == (info.mean, info.std)
    assert f"has {n_train} images, the published one has" in caplog.text  # small split: warned, not refused


def test_image_size_only_for_digits(tmp_path):
    write_fake_dataset("cifar10", tmp_path, n_train=5, n_test=2)
    assert len(load_dataset("cifar10", tmp_path, image_size=32).train) == 5
    with pytest.raises(ZsktError, match="image_size=16 only applies to digits"):
        load_dataset("cifar10", tmp_path, image_size=16)


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_fake_dataset("svhn", tmp_path, n_train=4, n_test=3)
    monkeypatch.setenv("ZSKT_DATA", str(tmp_path))
    assert dataset_files_present("svhn") and len(load_dataset("svhn").test) == 3


# --------------------------------------------------------------------------------------------- CIFAR-10


def _cifar_folder(tmp_path, n=4):
    folder = tmp_path / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, np.zeros((n, 3072), np.uint8), [i % 10 for i in range(n)])
    return folder


def test_cifar_pixel_layout_is_rgb_planes(tmp_path):
    folder = _cifar_folder(tmp_path)
    data = np.zeros((4, 3072), np.uint8)
    data[1, 1 * 1024 + 5 * 32 + 7] = 200  # G plane, row 5, column 7 of image 1
    data[2, 2 * 1024 + 31 * 32 + 0] = 99  # B plane, last row, first column of image 2
    write_cifar_batch(folder / "data_batch_2", data, [3, 1, 4, 1])
    train = load_dataset("cifar10", tmp_path).train
    assert train.images.shape == (20, 3, 32, 32)
    batch2 = train.images[4:8]  # batches are concatenated in order 1..5
    assert batch2[1, 1, 5, 7] == 200 and batch2[2, 2, 31, 0] == 99
    assert int(batch2.sum()) == 299
    assert train.labels[4:8].tolist() == [3, 1, 4, 1]


def test_cifar_reads_python2_era_pickles(tmp_path):
    # The published batches were pickled by Python 2 with NumPy 1: the array's globals live in numpy.core.
    folder = _cifar_folder(tmp_path)
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    blob = pickle.dumps({"data": data, "labels": [7, 2]}, protocol=2)
    (folder / "test_batch").write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    test = load_dataset("cifar10", tmp_path).test
    assert test.labels.tolist() == [7, 2]
    assert torch.equal(test.images.reshape(2, 3072), torch.from_numpy(data))
    # A batch pickled by Python 3 with bytes keys reads too.
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [7, 2]}))
    assert load_dataset("cifar10", tmp_path).test.labels.tolist() == [7, 2]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = _cifar_folder(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": _Payload(marker), "labels": []}))
    with pytest.raises(ZsktError, match="refusing to load global"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda good: good[: len(good) // 2], "cannot unpickle"),
        (lambda good: b"this is not a pickle", "cannot unpickle"),
        (lambda good: pickle.dumps([1, 2, 3]), "holds a list"),
        (lambda good: pickle.dumps({"data": np.zeros((4, 3072), np.uint8)}), "no 'data' or no 'labels'"),
        (
            lambda good: pickle.dumps({"data": np.zeros((4, 3000), np.uint8), "labels": [0] * 4}),
            r"\(4, 3000\)",
        ),
        (lambda good: pickle.dumps({"data": np.zeros((4, 3072), np.float32), "labels": [0] * 4}), "float32"),
        (
            lambda good: pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3}),
            "3 labels for 4",
        ),
        (
            lambda good: pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}),
            "0..10",
        ),
        (
            lambda good: pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}),
            "dtype <U1",
        ),
    ],
    ids=[
        "truncated",
        "garbage",
        "not-a-dict",
        "missing-key",
        "wrong-shape",
        "wrong-dtype",
        "label-count",
        "label-range",
        "label-type",
    ],
)
def test_cifar_damaged_batch_is_a_clear_error(tmp_path, content, message):
    folder = _cifar_folder(tmp_path)
    path = folder / "data_batch_3"
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(ZsktError, match=message) as caught:
        load_dataset("cifar10", tmp_path)
    text = str(caught.value)
    assert str(path) in text and "delete it and download again" in text and "zskt download cifar10" in text
    assert "\n" not in text


def test_cifar_missing_file_says_how_to_get_it(tmp_path):
    folder = _cifar_folder(tmp_path)
    (folder / "data_batch_4").unlink()
    assert not dataset_files_present("cifar10", tmp_path)
    with pytest.raises(ZsktError) as caught:
        load_dataset("cifar10", tmp_path)
    text = str(caught.value)
    assert text == (
        f"CIFAR-10 file not found: {folder / 'data_batch_4'} "
        f"(run `zskt download cifar10 --data-dir {tmp_path}` "
        "or pass --download)"
    )


# -------------------------------------------------------------------------------------------------- SVHN


def _svhn_files(folder, n=5):
    for split in ("train", "test"):
        write_svhn_mat(folder / f"{split}_32x32.mat", np.zeros((32, 32, 3, n), np.uint8), np.full((n, 1), 10))


def test_svhn_layout_and_label_ten_is_zero(tmp_path):
    _svhn_files(tmp_path)
    images = np.zeros((32, 32, 3, 3), np.uint8)
    images[3, 5, 2, 1] = 77  # row 3, column 5, blue, image 1
    images[0, 31, 0, 2] = 5  # row 0, last column, red, image 2
    write_svhn_mat(tmp_path / "train_32x32.mat", images, np.array([[10], [1], [9]]))
    train = load_dataset("svhn", tmp_path).train
    assert train.images.shape == (3, 3, 32, 32)
    assert train.images[1, 2, 3, 5] == 77 and train.images[2, 0, 0, 31] == 5 and int(train.images.sum()) == 82
    assert train.labels.tolist() == [0, 1, 9]


def test_svhn_subfolder_is_searched_second(tmp_path):
    _svhn_files(tmp_path / "svhn", n=2)
    assert dataset_files_present("svhn", tmp_path)
    assert len(load_dataset("svhn", tmp_path).train) == 2
    _svhn_files(tmp_path, n=4)  # files directly in the root win
    assert len(load_dataset("svhn", tmp_path).train) == 4


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b"MATLAB 5.0 nonsense" * 10), "loadmat failed"),
        (lambda p: p.write_bytes(p.read_bytes()[:300]), "loadmat failed"),
        (
            lambda p: write_svhn_mat(p, np.zeros((32, 32, 1, 5), np.uint8), np.ones((5, 1))),
            r"\(32, 32, 1, 5\)",
        ),
        (lambda p: write_svhn_mat(p, np.zeros((32, 32, 3, 5), np.uint8), np.ones((4, 1))), "4 labels for 5"),
        (
            lambda p: write_svhn_mat(p, np.zeros((32, 32, 3, 2), np.uint8), np.array([[0], [3]])),
            "expected 1..10",
        ),
        (
            lambda p: write_svhn_mat(p, np.zeros((32, 32, 3, 2), np.uint8), np.array([[11], [3]])),
            "expected 1..10",
        ),
    ],
    ids=["garbage", "truncated", "grey", "label-count", "label-zero", "label-eleven"],
)
def test_svhn_damaged_file_is_a_clear_error(tmp_path, write, message):
    _svhn_files(tmp_path)
    path = tmp_path / "test_32x32.mat"
    write(path)
    with pytest.raises(ZsktError, match=message) as caught:
        load_dataset("svhn", tmp_path)
    assert str(path) in str(caught.value) and "delete it and download again" in str(caught.value)


def test_svhn_missing_file_names_both_places(tmp_path):
    with pytest.raises(ZsktError) as caught:
        load_dataset("svhn", tmp_path)
    text = str(caught.value)
    assert text.startswith(f"SVHN file not found: {tmp_path / 'train_32x32.mat'}")
    assert str(tmp_path / "svhn" / "train_32x32.mat") in text and "zskt download svhn" in text


# ----------------------------------------------------------------------------------------- Fashion-MNIST


def _fashion_files(tmp_path, n=6, gz=True):
    raw = tmp_path / "FashionMNIST" / "raw"
    suffix = ".gz" if gz else ""
    images = np.zeros((n, 28, 28), np.uint8)
    images[1, 0, 0] = 250  # top-left pixel of image 1
    images[2, 27, 3] = 9
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
    return raw


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_fashion_mnist_is_zero_padded_to_32(tmp_path, gz):
    _fashion_files(tmp_path, gz=gz)
    data = load_dataset("fashion-mnist", tmp_path)
    for split in (data.train, data.test):
        assert split.images.shape == (6, 1, 32, 32) and split.images.dtype == torch.uint8
        assert split.images[1, 0, 2, 2] == 250 and split.images[2, 0, 29, 5] == 9
        assert int(split.images.sum()) == 259  # the 2-pixel border is zero
        assert split.labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_fashion_mnist_unzipped_copy_alone_or_beside_gz(tmp_path):
    raw = _fashion_files(tmp_path, gz=False)
    assert dataset_files_present("fashion-mnist", tmp_path)
    _fashion_files(tmp_path, gz=True)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"junk")  # the .gz is read first
    assert len(load_dataset("fashion-mnist", tmp_path).train) == 6


def _header(magic, *shape):
    return b"".join(v.to_bytes(4, "big") for v in (magic, *shape))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("train-images-idx3-ubyte.gz", lambda b: b[:-10], "EOFError"),
        ("train-images-idx3-ubyte.gz", lambda b: b"not gzip at all", "BadGzipFile"),
        (
            "train-labels-idx1-ubyte.gz",
            lambda b: gzip.compress(_header(2051, 6) + bytes(6)),
            "magic number 2051",
        ),
        (
            "train-images-idx3-ubyte.gz",
            lambda b: gzip.compress(_header(2051, 6, 28)),
            "shorter than the 16-byte",
        ),
        (
            "train-images-idx3-ubyte.gz",
            lambda b: gzip.compress(_header(2051, 7, 28, 28) + bytes(6 * 784)),
            "needs",
        ),
        (
            "train-images-idx3-ubyte.gz",
            lambda b: gzip.compress(_header(2051, 6, 27, 27) + bytes(6 * 729)),
            "27x27",
        ),
        ("t10k-labels-idx1-ubyte.gz", lambda b: gzip.compress(_header(2049, 5) + bytes(5)), "5 labels for 6"),
        (
            "t10k-labels-idx1-ubyte.gz",
            lambda b: gzip.compress(_header(2049, 6) + bytes([0, 1, 2, 3, 4, 12])),
            "0..12",
        ),
    ],
    ids=[
        "truncated-gz",
        "bad-gz",
        "bad-magic",
        "short-header",
        "short-data",
        "wrong-size",
        "label-count",
        "label-range",
    ],
)
def test_fashion_mnist_damaged_file_is_a_clear_error(tmp_path, name, content, message):
    raw = _fashion_files(tmp_path)
    path = raw / name
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(ZsktError, match=message) as caught:
        load_dataset("fashion-mnist", tmp_path)
    assert str(path) in str(caught.value) and "zskt download fashion-mnist" in str(caught.value)


def test_fashion_mnist_missing_file(tmp_path):
    raw = _fashion_files(tmp_path)
    (raw / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(
        ZsktError, match=r"Fashion-MNIST file not found: .*FashionMNIST/raw/t10k-images-idx3-ubyte\.gz"
    ):
        load_dataset("fashion-mnist", tmp_path)


# ------------------------------------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_split_sizes_types_and_stratification(digits):
    from sklearn.datasets import load_digits

    assert (len(digits.train), len(digits.test)) == (1400, 397)
    assert digits.train.images.shape == (1400, 1, 16, 16) and digits.train.images.dtype == torch.uint8
    assert digits.train.labels.dtype == torch.int64
    totals = np.bincount(load_digits().target, minlength=10)
    test_counts = torch.bincount(digits.test.labels, minlength=10).numpy()
    train_counts = torch.bincount(digits.train.labels, minlength=10).numpy()
    assert np.array_equal(train_counts + test_counts, totals)
    assert np.all(np.abs(test_counts - 397 * totals / totals.sum()) <= 1)
    assert int(digits.train.images.max()) == 255 and int(digits.train.images.min()) == 0


def test_digits_are_deterministic(digits):
    again = load_dataset("digits")
    assert torch.equal(again.train.images, digits.train.images) and torch.equal(
        again.test.labels, digits.test.labels
    )


def test_digits_registry_constants_are_the_train_statistics(digits):
    mean, std = channel_stats(digits.train.images)
    assert round(mean[0], 4) == DATASETS["digits"].mean[0] and round(std[0], 4) == DATASETS["digits"].std[0]
    assert (digits.mean, digits.std) == (DATASETS["digits"].mean, DATASETS["digits"].std)


def test_digits_image_size(digits):
    from sklearn.datasets import load_digits

    big = load_dataset("digits", image_size=32)
    assert big.train.images.shape == (1400, 1, 32, 32) and torch.equal(big.test.labels, digits.test.labels)
    assert big.mean == channel_stats(big.train.images)[0] and big.mean != DATASETS["digits"].mean
    native, _ = read_digits(8)  # no resizing: just 0..16 -> 0..255
    first = int(digits.train.labels[0])
    assert first == load_digits().target[0]  # sorted split keeps scikit-learn's order
    expected = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    assert np.array_equal(native.images[0, 0].numpy(), expected)
    for bad in (10, 4, 0, 18):
        with pytest.raises(ZsktError, match="multiple of 4"):
            load_dataset("digits", image_size=bad)


# -------------------------------------------------------------------------------------------- CIFAR-100


def test_cifar100_reads_fine_labels_of_all_100_classes(tmp_path):
    folder = tmp_path / "cifar-100-python"
    data = np.zeros((200, 3072), np.uint8)
    data[7, 2 * 1024 + 3 * 32 + 4] = 123  # B plane, row 3, column 4 of image 7
    fine = np.arange(200) % 100
    write_cifar100_file(folder / "train", data, fine)
    write_cifar100_file(folder / "test", np.full((5, 3072), 9, np.uint8), [99, 0, 1, 2, 3])
    assert dataset_files_present("cifar100", tmp_path)
    data_set = load_dataset("cifar100", tmp_path)
    assert data_set.info.num_classes == 100 and data_set.info.title == "CIFAR-100"
    assert data_set.train.images.shape == (200, 3, 32, 32) and data_set.test.images.shape == (5, 3, 32, 32)
    assert sorted(set(data_set.train.labels.tolist())) == list(range(100))  # fine labels, not the 20 coarse
    assert data_set.train.images[7, 2, 3, 4] == 123 and int(data_set.train.images.sum()) == 123
    assert data_set.test.labels.tolist() == [99, 0, 1, 2, 3]
    assert (data_set.mean, data_set.std) == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert data_set.info.augment


def test_cifar100_damaged_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_cifar100_file(folder / "train", np.zeros((3, 3072), np.uint8), [0, 1, 2])
    # A CIFAR-10 style batch ("labels", no "fine_labels") in CIFAR-100's place.
    write_cifar_batch(folder / "test", np.zeros((3, 3072), np.uint8), [0, 1, 2])
    with pytest.raises(ZsktError, match="no 'data' or no 'fine_labels' entry") as caught:
        load_dataset("cifar100", tmp_path)
    assert str(folder / "test") in str(
        caught.value
    ) and f"zskt download cifar100 --data-dir {tmp_path}" in str(caught.value)
    write_cifar100_file(folder / "test", np.zeros((2, 3072), np.uint8), [0, 100])
    with pytest.raises(ZsktError, match=r"labels span 0\.\.100, expected 0\.\.99"):
        load_dataset("cifar100", tmp_path)
