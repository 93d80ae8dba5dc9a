"""load_dataset: a registered data set's train and test splits as uint8 tensors, downloading missing files on
request."""

from __future__ import annotations

import logging
from pathlib import Path

from zskt.data.download import download_dataset
from zskt.data.readers import READERS, channel_stats, files_present, read_digits
from zskt.data.registry import ImageData, data_root, get_info
from zskt.errors import ZsktError

log = logging.getLogger(__name__)


def dataset_files_present(name: str, root: str | Path | None = None) -> bool:
    """Whether every file the reader needs is under the data root (always true for the embedded digits)."""
    return files_present(get_info(name).name, data_root(root))


def load_dataset(
    name: str, root: str | Path | None = None, *, download: bool = False, image_size: int | None = None
) -> ImageData:
    """Read a registered data set from its canonical files (SPEC §10) into CPU uint8 tensors.

    image_size only applies to digits (default 16, a multiple of 4); the mean and std returned are then
    recomputed from that train split. download=True fetches only the files that are missing.
    """
    info = get_info(name)
    if info.name == "digits":
        size = info.image_size if image_size is None else image_size
        train, test = read_digits(size)
        # The registry holds the default size's constants (rounded); other sizes get their own.
        mean, std = (info.mean, info.std) if size == info.image_size else channel_stats(train.images)
        return ImageData(info, train, test, mean, std)
    if image_size is not None and image_size != info.image_size:
        raise ZsktError(
            f"{info.title} images are {info.image_size}x{info.image_size}; image_size={image_size} only "
            "applies to digits: leave it unset"
        )
    root = data_root(root)
    if download and not files_present(info.name, root):
        download_dataset(info.name, root)
    train, test = READERS[info.name](root)
    for split, found, canonical in (("train", len(train), info.n_train), ("test", len(test), info.n_test)):
        if found != canonical:
            log.warning("%s %s split has %d images, the published one has %d", info.title, split, found, canonical)
    return ImageData(info, train, test, info.mean, info.std)

