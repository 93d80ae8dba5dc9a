"""Tiny data sets written in the exact canonical file formats (SPEC §10), for tests and smoke runs on machines
that cannot download the real ones: point --data-dir (or ZSKT_DATA) at the folder and the readers take it as
is.
Images are a per-class pattern plus noise, so a toy model can learn them."""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zskt.data.registry import get_info
from zskt.io import atomic_write_bytes


def write_cifar_batch(path: Path, data: np.ndarray, labels: Sequence[int]) -> None:
    """A CIFAR-10 batch: data (N, 3072) uint8 rows (R plane, G plane, B plane), labels N ints 0..9."""
    batch = {
        "batch_label": f"synthetic {Path(path).name}",
        "labels": [int(label) for label in labels],
        "data": np.asarray(data, dtype=np.uint8),
        "filenames": [f"synthetic_{i}.png" for i in range(len(labels))],
    }
    atomic_write_bytes(Path(path), pickle.dumps(batch, protocol=2))  # the published batches are protocol 2


def write_cifar100_file(path: Path, data: np.ndarray, fine_labels: Sequence[int]) -> None:
    """A CIFAR-100 split file (`train` or `test`): data (N, 3072) uint8, fine_labels N ints 0..99, and the
    coarse labels the published files also hold (here fine // 5, as a stand-in for the 20 super-classes)."""
    batch = {
        "filenames": [f"synthetic_{i}.png" for i in range(len(fine_labels))],
        "batch_label": f"synthetic {Path(path).name}",
        "fine_labels": [int(label) for label in fine_labels],
        "coarse_labels": [int(label) // 5 for label in fine_labels],
        "data": np.asarray(data, dtype=np.uint8),
    }
    atomic_write_bytes(Path(path), pickle.dumps(batch, protocol=2))


def write_svhn_mat(path: Path, images_hwcn: np.ndarray, labels: np.ndarray) -> None:
    """An SVHN .mat file: X (32, 32, 3, N) uint8, y (N, 1) with 10 for digit 0."""
    import scipy.io

    buffer = io.BytesIO()
    scipy.io.savemat(
        buffer, {"X": np.asarray(images_hwcn, dtype=np.uint8), "y": np.asarray(labels, dtype=np.uint8)}
    )
    atomic_write_bytes(Path(path), buffer.getvalue())


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of uint8 data (3-D images or 1-D labels), gzipped when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    content = header + array.tobytes()
    path = Path(path)
    atomic_write_bytes(path, gzip.compress(content) if path.suffix == ".gz" else content)


def fake_split(
    n: int, channels: int, size: int, seed: int, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, C, size, size), labels int64 (N,)); every class appears once n >= num_classes."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes)
    patterns = rng.integers(0, 256, (num_classes, channels, size, size))
    noise = rng.integers(0, 256, (n, channels, size, size))
    return (0.7 * patterns[labels] + 0.3 * noise).astype(np.uint8), labels.astype(np.int64)


def write_fake_dataset(name: str, root: Path, *, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """Write a small CIFAR-10, CIFAR-100, SVHN or Fashion-MNIST under `root` in torchvision's layout; returns
    `root`. CIFAR-100 has 100 classes: every one appears once n >= 100."""
    info = get_info(name)
    root = Path(root)
    if info.name == "cifar10":
        folder = root / "cifar-10-batches-py"
        images, labels = fake_split(n_train, 3, 32, seed)
        for number, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            write_cifar_batch(
                folder / f"data_batch_{number}", images[part].reshape(len(part), 3072), labels[part]
            )
        images, labels = fake_split(n_test, 3, 32, seed + 1)
        write_cifar_batch(folder / "test_batch", images.reshape(n_test, 3072), labels)
    elif info.name == "cifar100":
        folder = root / "cifar-100-python"
        for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
            images, labels = fake_split(n, 3, 32, split_seed, num_classes=100)
            write_cifar100_file(folder / split, images.reshape(n, 3072), labels)
    elif info.name == "svhn":
        for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
            images, labels = fake_split(n, 3, 32, split_seed)
            labels = np.where(labels == 0, 10, labels)[:, None]  # digit 0 is stored as 10
            write_svhn_mat(root / f"{split}_32x32.mat", images.transpose(2, 3, 1, 0), labels)
    elif info.name == "fashion-mnist":
        for prefix, n, split_seed in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
            images, labels = fake_split(n, 1, 28, split_seed)
            write_idx(root / f"FashionMNIST/raw/{prefix}-images-idx3-ubyte.gz", images[:, 0])
            write_idx(root / f"FashionMNIST/raw/{prefix}-labels-idx1-ubyte.gz", labels)
    else:
        raise ValueError(f"{info.title} has no files to fake")
    return root
