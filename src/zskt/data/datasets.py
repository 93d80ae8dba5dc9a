"""load_dataset: a data set's splits as uint8 tensors, downloading missing files on request; check_files:
whether the files a command will read are there, checked before anything is created or read in full."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from zskt.data.download import download_dataset
from zskt.data.readers import channel_stats, files_present, find_file, read_digits, require
from zskt.data.records import SPLITS, DatasetInfo, ImageData, data_root
from zskt.data.registry import CUSTOM_PREFIXES, get_info
from zskt.errors import ZsktError

log = logging.getLogger(__name__)


def _splits(splits: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys([splits] if isinstance(splits, str) else splits))
    unknown = [s for s in chosen if s not in SPLITS]
    if not chosen or unknown:
        raise ZsktError(f"unknown split {unknown[0] if unknown else '(none)'!r}; splits are train and test")
    return chosen


def dataset_files_present(name: str, root: str | Path | None = None, splits: Iterable[str] = SPLITS) -> bool:
    """Whether every file the reader needs for `splits` is under the data root (always true for the embedded
    digits; for npz:/folder: sets, whether their files scan without error)."""
    if str(name).lower().startswith(CUSTOM_PREFIXES):
        try:
            get_info(name)
        except ZsktError:
            return False
        return True
    info = get_info(name)
    return files_present(info, data_root(root), _splits(splits))


def check_files(
    dataset: str,
    data_dir: str | Path | None = None,
    splits: Iterable[str] = ("test",),
    download: bool = False,
) -> DatasetInfo:
    """Check, without reading the pixels, that the files of `splits` are there (or, with `download`, can be
    fetched into a writable data root); returns the data set's record. Call it before creating a run folder,
    with the splits the command reads: zero-shot reads only the test split, train and kd-at both.

    A missing file is a one-line ZsktError whose download hint names the data root read, so following it fills
    that folder. npz:/folder: sets are scanned: keys, dtypes, shapes, labels and image headers are checked
    (their normalisation needs the training split, so both splits' files are always required for them).
    """
    info = get_info(dataset)  # an npz:/folder: set is validated by the scan itself
    if info.source != "built-in":
        return info
    root = data_root(data_dir)
    missing = [role for role in info.roles(_splits(splits)) if find_file(info, role, root) is None]
    if not missing:
        return info
    if download and info.downloadable:
        _check_writable(root)
        return info
    require(info, missing[0], root)  # raises, naming the file and how to get it
    return info


def _check_writable(root: Path) -> None:
    """The data root, or the nearest folder above it that exists, must be a writable folder."""
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        raise ZsktError(
            f"cannot download into the data root {root}: {existing} {what}; point --data-dir or "
            "ZSKT_DATA at a writable folder"
        )


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    download: bool = False,
    image_size: int | None = None,
    splits: Iterable[str] = SPLITS,
) -> ImageData:
    """Read a data set's `splits` (default both) into CPU uint8 tensors; a split not asked for is None in the
    result, and its files are neither required nor downloaded.

    Built-in sets are read from their canonical files (SPEC §10); download=True fetches only the missing files
    of the splits asked for. image_size only applies to digits (default 16, a multiple of 4); the mean and std
    returned are then recomputed from that train split. npz:/folder: sets: see zskt.data.custom (mean and std
    from their training split).
    """
    info = get_info(name)
    splits = _splits(splits)
    if info.source != "built-in":
        from zskt.data.custom import load_custom

        return load_custom(info.name, splits, image_size)
    if info.name == "digits":
        size = info.image_size if image_size is None else image_size
        train, test = read_digits(size)
        # The registry holds the default size's constants (rounded); other sizes get their own.
        mean, std = (info.mean, info.std) if size == info.image_size else channel_stats(train.images)
        return ImageData(
            info, train if "train" in splits else None, test if "test" in splits else None, mean, std
        )
    if image_size is not None and image_size != info.image_size:
        raise ZsktError(
            f"{info.title} images are {info.image_size}x{info.image_size}; image_size={image_size} only "
            "applies to digits: leave it unset"
        )
    root = data_root(root)
    if download and not files_present(info, root, splits):
        download_dataset(info.name, root, splits=splits)
    read = {}
    for split in splits:
        read[split] = info.reader(info, root, split, None)
        found, canonical = len(read[split]), info.n_train if split == "train" else info.n_test
        if found != canonical:
            log.warning(
                "%s %s split has %d images, the published one has %d", info.title, split, found, canonical
            )
    return ImageData(info, read.get("train"), read.get("test"), info.mean, info.std)
