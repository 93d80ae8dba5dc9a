"""Every built-in data set as one record (one literal registry): what it is, its canonical files and reader,
where to download them with their md5, and the presets the methods take from it. `npz:PATH` and
`folder:PATH` sets get a record built from their files (zskt.data.custom). Adding a data set is a reader
and one entry here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from zskt.data.readers import read_cifar10, read_cifar100, read_digits_split, read_fashion_mnist, read_svhn
from zskt.data.records import DatasetInfo, ImageData, ImageSplit, RemoteFile, data_root
from zskt.errors import ZsktError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "ImageData",
    "ImageSplit",
    "RemoteFile",
    "data_root",
    "dataset_name",
    "get_info",
    "nearest_builtin",
    "preset",
]

log = logging.getLogger(__name__)

_CIFAR10_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
_FASHION = "FashionMNIST/raw/"
_FASHION_FILES = {
    split: {
        stem: (f"{_FASHION}{stem}.gz", f"{_FASHION}{stem}")
        for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    }
    for split, prefix in (("train", "train"), ("test", "t10k"))
}

# The presets each method takes from a data set (read with `preset`). The sources of their values:
# - train "epochs": the base recipes of SPEC §4/§5 — epochs on the full train split, lr ÷5 at 30/60/80 %.
#   digits is ours (SPEC §11): 30 epochs reach 99 % with a WRN-16-2 teacher in about a minute on 2 CPU cores.
# - train "scale_n_iters_few_shot": the authors' `scale_n_iters` for M images per class: 1 in the CIFAR-10
#   scripts; "m/100" (M / 100) in the SVHN scripts ("for SVHN and low M lower n_iters doesnt hurt perf"), and
#   in ours for Fashion-MNIST, which the Southampton study scaled the same way. (The paper's stated "same
#   iterations for every M" is scale 1, the train command's --same-iterations.)
# - zero-shot "iterations": N pseudo batches (SPEC §3): the paper matched N to the teachers' own training
#   iterations, 80k for CIFAR-10 (200 epochs x 391) and 50k for SVHN. Fashion-MNIST is not in the paper: its
#   170-epoch recipe is 170 x 469 ≈ 80k iterations, so it gets CIFAR-10's N. digits is ours: 200 pseudo
#   batches reach ≥ 97 % with a WRN-16-2 → WRN-16-1 pair in a few minutes on 2 CPU cores (docs/zero_shot.md).
# - zero-shot "beta": attention weight per layer, the authors' 250 (SPEC §3) wherever the paper's 32x32
#   geometry holds. digits is ours, by measurement (docs/zero_shot.md): with a `zskt train` WRN-16-2 teacher,
#   200 pseudo batches reach 85-87 % at β = 250 or 62.5 (the 16x16 maps' equal-scale value, SPEC §11) and
#   98 % at β = 0.
# - kd-at "beta": FSKT's AT_beta = 1000 (SPEC §4), rescaled by 3/len(acts), is 1000 on each of the three
#   layers at 32x32. The attention term is a mean over the H·W positions of unit-norm maps, so at equal β it
#   grows as 1/(H·W): the preset is 1000·(side/32)² for the record's image side, the paper's 1000 for
#   CIFAR-10/100, SVHN and Fashion-MNIST (32x32 after padding) and 250 for the 16x16 digits, where it was also
#   the best of β = 0 ... 1000 measured at M = 5 over 3 seeds (docs/kd_at.md). A run at another side (digits
#   --image-size 32) rescales it by (side / record side)².
_CIFAR_PRESETS = {
    "train": {"epochs": 200, "scale_n_iters_few_shot": 1.0},
    "zero-shot": {"iterations": 80_000, "beta": 250.0},
    "kd-at": {"beta": 1000.0},
}

DATASETS: dict[str, DatasetInfo] = {
    # SPEC §5: the authors' constants, also used when their teachers are evaluated. Only CIFAR is augmented
    # (RandomCrop(32, padding=4) + RandomHorizontalFlip); SVHN trains on Normalize alone.
    "cifar10": DatasetInfo(
        name="cifar10",
        title="CIFAR-10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        augment=True,
        n_train=50_000,
        n_test=10_000,
        files={
            "train": {role: (f"cifar-10-batches-py/{role}",) for role in _CIFAR10_TRAIN},
            "test": {"test_batch": ("cifar-10-batches-py/test_batch",)},
        },
        reader=read_cifar10,
        base_url="https://www.cs.toronto.edu/~kriz/",
        remote=(
            RemoteFile(
                "cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a",
                "cifar-10-python.tar.gz",
                (*_CIFAR10_TRAIN, "test_batch"),
                extract=True,
            ),
        ),
        presets=_CIFAR_PRESETS,
    ),
    # Not in the paper; the data-free benchmark's second table (SPEC §12). Same layout as torchvision's
    # CIFAR100: the pickles `train` and `test` with `data` and `fine_labels`. Normalisation constants and
    # augmentation are the zju-vipa DataFree code's for CIFAR-100 (Fast-Datafree and CMI registry.py,
    # NORMALIZE_DICT['cifar100']; RandomCrop(32, padding=4) + RandomHorizontalFlip as for CIFAR-10); presets
    # as CIFAR-10's.
    "cifar100": DatasetInfo(
        name="cifar100",
        title="CIFAR-100",
        num_classes=100,
        in_channels=3,
        image_size=32,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
        augment=True,
        n_train=50_000,
        n_test=10_000,
        files={"train": {"train": ("cifar-100-python/train",)}, "test": {"test": ("cifar-100-python/test",)}},
        reader=read_cifar100,
        base_url="https://www.cs.toronto.edu/~kriz/",
        remote=(
            RemoteFile(
                "cifar-100-python.tar.gz",
                "eb9058c3a382ffc7106e4002c42a8d85",
                "cifar-100-python.tar.gz",
                ("train", "test"),
                extract=True,
            ),
        ),
        presets=_CIFAR_PRESETS,
    ),
    # SVHN: torchvision's SVHN(root) keeps the .mat files directly in root; people who gave it root/svhn have
    # them one level down, so that folder is searched second. extra_32x32.mat (md5
    # a93ce644f1a588dc4d68dda5feec44a7, 1.3 GB) is not used by the paper, so not fetched.
    "svhn": DatasetInfo(
        name="svhn",
        title="SVHN",
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        augment=False,
        n_train=73_257,
        n_test=26_032,
        files={
            split: {split: (f"{split}_32x32.mat", f"svhn/{split}_32x32.mat")} for split in ("train", "test")
        },
        reader=read_svhn,
        base_url="http://ufldl.stanford.edu/housenumbers/",
        remote=(
            RemoteFile("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", "train_32x32.mat", ("train",)),
            RemoteFile("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", "test_32x32.mat", ("test",)),
        ),
        presets={
            "train": {"epochs": 100, "scale_n_iters_few_shot": "m/100"},
            "zero-shot": {"iterations": 50_000, "beta": 250.0},
            "kd-at": {"beta": 1000.0},
        },
    ),
    # Not in the paper (the Southampton reproduction added it). 28x28 is zero-padded to 32x32 at load so the
    # WRN geometry is the paper's; the constants are the commonly used ones (SPEC §10). Trained without
    # augmentation, like SVHN: there is no paper recipe to follow for it. torchvision keeps the published .gz
    # files and their unzipped copies side by side in FashionMNIST/raw; the .gz is read first because gzip's
    # CRC catches a damaged file, and the unzipped copy is accepted on its own.
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        title="Fashion-MNIST",
        num_classes=10,
        in_channels=1,
        image_size=32,
        mean=(0.2860,),
        std=(0.3530,),
        augment=False,
        n_train=60_000,
        n_test=10_000,
        files=_FASHION_FILES,
        reader=read_fashion_mnist,
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        remote=tuple(
            RemoteFile(f"{stem}.gz", md5, f"{_FASHION}{stem}.gz", (stem,))
            for stem, md5 in (
                ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
                ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
                ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
            )
        ),
        presets={
            "train": {"epochs": 170, "scale_n_iters_few_shot": "m/100"},
            "zero-shot": {"iterations": 80_000, "beta": 250.0},
            "kd-at": {"beta": 1000.0},
        },
    ),
    # scikit-learn's embedded 8x8 digits upsampled to 16x16 (see readers.read_digits for why): no files. There
    # are no published constants: these are the train split's pixel mean and population std at the default
    # 16x16, rounded to 4 places like the others; tests/test_data_readers.py recomputes them.
    "digits": DatasetInfo(
        name="digits",
        title="digits",
        num_classes=10,
        in_channels=1,
        image_size=16,
        mean=(0.3053,),
        std=(0.3185,),
        augment=False,
        n_train=1_400,
        n_test=397,
        reader=read_digits_split,
        presets={
            "train": {"epochs": 30, "scale_n_iters_few_shot": 1.0},
            "zero-shot": {"iterations": 200, "beta": 0.0},
            "kd-at": {"beta": 250.0},
        },
    ),
}

CUSTOM_PREFIXES = ("npz:", "folder:")


def dataset_name(name: str) -> str:
    """The canonical spelling of a data set's name, checked without touching any file (for configs and grids,
    which may be built where the files are not): a built-in key ("CIFAR-10" -> "cifar10"), or "npz:PATH" /
    "folder:PATH" as given. An unknown name is a ZsktError listing the known ones."""
    text = str(name)
    if text.lower().startswith(CUSTOM_PREFIXES):
        kind, _, body = text.partition(":")
        if not body.strip():
            raise ZsktError(
                f"{kind.lower()}: needs a path, e.g. {kind.lower()}:data/my_set (docs/own_models_and_data.md)"
            )
        return f"{kind.lower()}:{body}"
    return get_info(text).name


def get_info(name: str) -> DatasetInfo:
    """The record of a built-in set (forgiving about case and separators, so "CIFAR-10" and "fashion_mnist"
    work as typed), or of an `npz:PATH` / `folder:PATH` set, built from a scan of its files (no pixels read).
    An unknown name is a ZsktError listing the known ones."""
    text = str(name)
    if text.lower().startswith(CUSTOM_PREFIXES):
        from zskt.data.custom import custom_info

        return custom_info(text)
    wanted = "".join(ch for ch in text.lower() if ch.isalnum())
    for key, info in DATASETS.items():
        if key.replace("-", "") == wanted:
            return info
    raise ZsktError(
        f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}, or npz:PATH or folder:PATH "
        "for your own (docs/own_models_and_data.md)"
    )


def nearest_builtin(info: DatasetInfo) -> DatasetInfo:
    """The built-in set most like `info`: the same number of channels first, then the closest image side, then
    registry order (so 3x32x32 data gets CIFAR-10's presets, 1x28x28 Fashion-MNIST's, 1x16x16 digits')."""
    order = list(DATASETS.values())
    return min(
        order,
        key=lambda b: (
            b.in_channels != info.in_channels,
            abs(b.image_size - info.image_size),
            order.index(b),
        ),
    )


def preset(
    dataset: str | DatasetInfo,
    method: str,
    key: str,
    option: str | None = None,
    *,
    note: Callable[[str], None] | None = None,
) -> Any:
    """The data set's preset value of `key` for `method` (a zskt command name: "train", "zero-shot", "kd-at").

    An npz:/folder: set has no presets of its own: it takes those of the nearest built-in set
    (nearest_builtin) and says so through `note` (default: a logging warning). A preset that does not exist
    is a one-line ZsktError naming `option` (default --KEY) as the thing to pass, e.g. "digits has no dafl
    preset for iterations; pass --iterations N".
    """
    info = dataset if isinstance(dataset, DatasetInfo) else get_info(dataset)
    option = option or "--" + key.replace("_", "-")
    source = nearest_builtin(info) if info.source != "built-in" else info
    value = source.presets.get(method, {}).get(key)
    if value is None:
        via = f" (nor has {source.title}, the built-in set nearest to it)" if source is not info else ""
        raise ZsktError(f"{info.title} has no {method} preset for {key}{via}; pass {option} N")
    if source is not info:
        message = (
            f"{info.title} has no presets of its own: {method} {key} = {value} taken from {source.title}, "
            f"the built-in set nearest to its {info.in_channels}x{info.image_size}x{info.image_size} "
            f"images; pass {option} to choose"
        )
        (note or log.warning)(message)
    return value
