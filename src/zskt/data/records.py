"""The shapes every data set shares: its record (what it is, where its files are, how it is read and fetched,
which presets the methods take from it), the tensor containers the readers fill, and where files live."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SPLITS = ("train", "test")


@dataclass(frozen=True)
class RemoteFile:
    """One published file of a data set, fetched from the record's base_url."""

    filename: str  # appended to the data set's base URL
    md5: str  # the published checksum (SPEC §10)
    dest: str  # where it is saved, relative to the data root (torchvision's place for it)
    roles: tuple[
        str, ...
    ]  # the record's files (DatasetInfo.files roles) it provides; fetched if any is missing
    extract: bool = False  # a .tar.gz whose folders are unpacked into the data root


@dataclass(frozen=True)
class DatasetInfo:
    """Everything zskt knows about one data set. A built-in set is one literal record in registry.DATASETS; an
    `npz:` or `folder:` set gets one built by scanning its files (zskt.data.custom)."""

    name: str  # registry key, as typed on the command line (for npz:/folder: sets, the whole spelling)
    title: str  # for messages and tables
    num_classes: int
    in_channels: int
    image_size: int  # side of the square images the readers return (after any padding or resizing)
    # Per-channel normalisation constants on the 0..1 scale; None for npz:/folder: sets, whose constants are
    # computed from their training split at load (ImageData.mean/std, which every caller normalises with).
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    augment: bool  # pad-4 random crop + horizontal flip when training (SPEC §4)
    n_train: int  # canonical split sizes; the readers accept other sizes and log a warning
    n_test: int
    # split -> role -> paths relative to the data root, in search order; the downloader saves to the first.
    files: Mapping[str, Mapping[str, tuple[str, ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # read(info, root, split, image_size) -> ImageSplit of uint8 (N, C, H, W) on the CPU.
    reader: Callable[..., ImageSplit] | None = field(default=None, compare=False, repr=False)
    base_url: str = ""
    remote: tuple[RemoteFile, ...] = field(default=(), compare=False, repr=False)
    # method (a zskt command: "train", "zero-shot", "kd-at", ...) -> option -> value; read through
    # registry.preset, which turns a missing one into a one-line error naming the option to pass.
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False, repr=False)
    source: str = "built-in"  # "built-in", "npz" or "folder"
    classes: tuple[str, ...] | None = None  # class names where the files give them (folder: sub-folder names)

    @property
    def downloadable(self) -> bool:
        return bool(self.remote)

    def roles(self, splits: tuple[str, ...] | list[str] = SPLITS) -> list[str]:
        """The file roles the given splits are read from, in the record's order."""
        return [role for split in splits for role in self.files.get(split, {})]

    def candidates(self, role: str) -> tuple[str, ...]:
        for split_files in self.files.values():
            if role in split_files:
                return split_files[role]
        raise KeyError(f"{self.name} has no file role {role!r}")


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
    train: ImageSplit | None  # None when load_dataset was asked for the test split only
    test: ImageSplit | None  # None when load_dataset was asked for the train split only
    # The constants to normalise with: info.mean/std for the built-in sets (recomputed from the train split
    # for digits at a non-default image_size), the train split's own for npz:/folder: sets.
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
