"""What each data set is (one literal registry), the tensor containers the readers fill, and where files
live."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from zskt.errors import ZsktError


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # registry key, as typed on the command line
    title: str  # for messages and tables
    num_classes: int
    in_channels: int
    image_size: int  # side of the square images the readers return (after any padding or resizing)
    mean: tuple[float, ...]  # per-channel normalisation constants on the 0..1 scale
    std: tuple[float, ...]
    augment: bool  # pad-4 random crop + horizontal flip when training (SPEC §4)
    n_train: int  # canonical split sizes; the readers accept other sizes and log a warning
    n_test: int
    downloadable: bool


DATASETS: dict[str, DatasetInfo] = {
    # SPEC §5: the authors' constants, also used when their teachers are evaluated. Only CIFAR-10 is
    # augmented (RandomCrop(32, padding=4) + RandomHorizontalFlip); SVHN trains on Normalize alone.
    "cifar10": DatasetInfo(
        name="cifar10", title="CIFAR-10", num_classes=10, in_channels=3, image_size=32,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
        augment=True, n_train=50_000, n_test=10_000, downloadable=True,
    ),
    "svhn": DatasetInfo(
        name="svhn", title="SVHN", num_classes=10, in_channels=3, image_size=32,
        mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
        augment=False, n_train=73_257, n_test=26_032, downloadable=True,
    ),
    # Not in the paper (the Southampton reproduction added it). 28x28 is zero-padded to 32x32 at load so the
    # WRN geometry is the paper's; the constants are the commonly used ones (SPEC §10). Trained without
    # augmentation, like SVHN: there is no paper recipe to follow for it.
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist", title="Fashion-MNIST", num_classes=10, in_channels=1, image_size=32,
        mean=(0.2860,), std=(0.3530,),
        augment=False, n_train=60_000, n_test=10_000, downloadable=True,
    ),
    # scikit-learn's embedded 8x8 digits upsampled to 16x16 (see readers.read_digits for why). There are no
    # published constants: these are the train split's pixel mean and population std at the default
    # 16x16, rounded to 4 places like the others; tests/test_data_readers.py recomputes them.
    "digits": DatasetInfo(
        name="digits", title="digits", num_classes=10, in_channels=1, image_size=16,
        mean=(0.3053,), std=(0.3185,),
        augment=False, n_train=1_400, n_test=397, downloadable=False,
    ),
}


def get_info(name: str) -> DatasetInfo:
    """The registry entry for `name`; an unknown name is a ZsktError listing the known ones."""
    # Forgiving about case and separators, so "CIFAR-10" and "fashion_mnist" work as typed.
    wanted = "".join(ch for ch in str(name).lower() if ch.isalnum())
    for key, info in DATASETS.items():
        if key.replace("-", "") == wanted:
            return info
    raise ZsktError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")


@dataclass
class ImageSplit:
    images: torch.Tensor  # uint8 (N, C, H, W), raw pixel values: normalisation happens per batch
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: str | torch.device) -> ImageSplit:
        return ImageSplit(self.images.to(device), self.labels.to(device))


@dataclass
class ImageData:
    info: DatasetInfo
    train: ImageSplit
    test: ImageSplit
    # Normally info.mean/std; differs only for digits at a non-default image_size, where it is recomputed
    # from that train split. Use these, not info's, to normalise.
    mean: tuple[float, ...]
    std: tuple[float, ...]


def data_root(root: str | Path | None = None) -> Path:
    """Folder holding the data files: explicit argument > $ZSKT_DATA > $XDG_CACHE_HOME/zskt/data >
    ~/.cache/zskt/data."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    if os.environ.get("ZSKT_DATA"):
        return Path(os.environ["ZSKT_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "zskt" / "data"
