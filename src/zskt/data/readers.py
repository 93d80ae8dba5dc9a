"""Readers for the canonical data files (SPEC §10, torchvision's folder layout reused as is) and the embedded
digits.

Each reader returns one split as an ImageSplit of uint8 (N, C, H, W) on the CPU, finding its files through the
record's `files` table. A missing or malformed file becomes a ZsktError that names the file and the fix,
never an exception from deep inside pickle or scipy.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import shlex
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zskt.data.records import SPLITS, DatasetInfo, ImageSplit
from zskt.errors import ZsktError


def download_hint(info: DatasetInfo, root: Path) -> str:
    """How to get the files, naming the data root, so that following the hint fills the folder read."""
    return f"run `zskt download {info.name} --data-dir {shlex.quote(str(root))}` or pass --download"


def find_file(info: DatasetInfo, role: str, root: Path) -> Path | None:
    """First existing candidate for one of a data set's files, or None."""
    for relative in info.candidates(role):
        if (root / relative).is_file():
            return root / relative
    return None


def files_present(info: DatasetInfo, root: Path, splits: tuple[str, ...] = SPLITS) -> bool:
    return all(find_file(info, role, root) is not None for role in info.roles(splits))


def require(info: DatasetInfo, role: str, root: Path) -> Path:
    """The file for `role`, or a one-line ZsktError naming where it was looked for and how to get it."""
    found = find_file(info, role, root)
    if found is not None:
        return found
    first, *others = (root / relative for relative in info.candidates(role))
    also = f" (also looked for {', '.join(map(str, others))})" if others else ""
    raise ZsktError(f"{info.title} file not found: {first}{also} ({download_hint(info, root)})")


def path_root(info: DatasetInfo, path: Path) -> Path:
    """The data root that `path` (one of the record's files) was found under."""
    for split_files in info.files.values():
        for candidates in split_files.values():
            for relative in candidates:
                parts = Path(relative).parts
                if Path(path).parts[-len(parts) :] == parts:
                    return (
                        Path(*Path(path).parts[: -len(parts)])
                        if len(Path(path).parts) > len(parts)
                        else Path()
                    )
    return Path(path).parent


def _corrupt(info: DatasetInfo, path: Path, problem: str) -> ZsktError:
    return ZsktError(
        f"{info.title} file {path} is damaged or not in the expected format ({problem}); "
        f"delete it and download again ({download_hint(info, path_root(info, path))})"
    )


def _labels(info: DatasetInfo, path: Path, raw, count: int, first: int = 0) -> torch.Tensor:
    """Check labels against the image count and the class range [first, first + num_classes); int64 (N,)."""
    try:
        labels = np.asarray(raw)
    except Exception as error:  # ragged or exotic objects
        raise _corrupt(info, path, f"labels are not an array: {error}") from error
    if labels.ndim == 2 and labels.shape[1] == 1:  # MATLAB column vector
        labels = labels[:, 0]
    if (
        labels.ndim != 1
        or labels.dtype.kind not in "iuf"
        or (labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)))
    ):
        raise _corrupt(
            info, path, f"labels have shape {labels.shape} and dtype {labels.dtype}, expected N integers"
        )
    if len(labels) != count:
        raise _corrupt(info, path, f"{len(labels)} labels for {count} images")
    labels = labels.astype(np.int64)
    last = first + info.num_classes - 1
    if count and (labels.min() < first or labels.max() > last):
        raise _corrupt(info, path, f"labels span {labels.min()}..{labels.max()}, expected {first}..{last}")
    return torch.from_numpy(labels)


# ---------------------------------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    # Unpickling calls whatever globals the file names, so a tampered download could run code. A CIFAR batch
    # needs only numpy's array reconstruction (numpy.core before NumPy 2, numpy._core after; _codecs.encode
    # when Python 3 pickles bytes at protocol 2), so nothing else is allowed.
    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_pickle(info: DatasetInfo, path: Path, label_key: str) -> ImageSplit:
    """A CIFAR-10 batch or a CIFAR-100 split file: a dict with `data` (N, 3072) uint8 and N integer labels."""
    try:
        with open(path, "rb") as f:
            # The files were pickled by Python 2: latin1 turns their str keys into str and keeps bytes intact.
            batch = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as error:  # a damaged pickle can raise almost anything (EOFError, ValueError, ...)
        raise _corrupt(info, path, f"cannot unpickle: {type(error).__name__}: {error}") from error
    if not isinstance(batch, dict):
        raise _corrupt(info, path, f"holds a {type(batch).__name__}, expected a dict")
    data = batch.get("data", batch.get(b"data"))
    labels = batch.get(label_key, batch.get(label_key.encode()))
    if data is None or labels is None:
        raise _corrupt(info, path, f"no 'data' or no {label_key!r} entry")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape, dtype = getattr(data, "shape", None), getattr(data, "dtype", type(data).__name__)
        raise _corrupt(info, path, f"data has shape {shape} and dtype {dtype}, expected (N, 3072) uint8")
    # Each row is the R plane, then G, then B, each 32x32 row-major: exactly (3, 32, 32) in C order.
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return ImageSplit(images, _labels(info, path, labels, len(data)))


def read_cifar10(info: DatasetInfo, root: Path, split: str, image_size: int | None = None) -> ImageSplit:
    """data_batch_1..5 concatenated in order (train) or test_batch (test)."""
    batches = [_read_cifar_pickle(info, require(info, role, root), "labels") for role in info.files[split]]
    return ImageSplit(torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches]))


def read_cifar100(info: DatasetInfo, root: Path, split: str, image_size: int | None = None) -> ImageSplit:
    """cifar-100-python/train or /test, with the 100 fine labels (the coarse 20 super-classes are not used:
    the data-free benchmark's CIFAR-100 numbers are on the fine labels, as torchvision's CIFAR100 gives
    them)."""
    return _read_cifar_pickle(info, require(info, split, root), "fine_labels")


# -------------------------------------------------------------------------------------------------- SVHN


def _read_svhn_mat(info: DatasetInfo, path: Path) -> ImageSplit:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as error:  # scipy raises ValueError, TypeError, OSError, NotImplementedError (v7.3), ...
        raise _corrupt(info, path, f"scipy.io.loadmat failed: {type(error).__name__}: {error}") from error
    images, labels = mat.get("X"), mat.get("y")
    if images is None or labels is None:
        raise _corrupt(info, path, "no 'X' or no 'y' variable")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise _corrupt(
            info, path, f"X has shape {images.shape} and dtype {images.dtype}, expected (32, 32, 3, N) uint8"
        )
    count = images.shape[3]
    # SVHN stores digit 0 as label 10 (SPEC §10): 1..10 -> 1..9, 0.
    labels = _labels(info, path, labels, count, first=1) % 10
    # (height, width, channel, index) -> (index, channel, height, width)
    return ImageSplit(torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1))), labels)


def read_svhn(info: DatasetInfo, root: Path, split: str, image_size: int | None = None) -> ImageSplit:
    return _read_svhn_mat(info, require(info, split, root))


# ----------------------------------------------------------------------------------------- Fashion-MNIST

_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # magic numbers: 0x0803 (uint8, 3 dims), 0x0801 (uint8, 1 dim)


def _read_idx(info: DatasetInfo, path: Path, magic: int) -> np.ndarray:
    """An uncompressed or gzipped IDX file: big-endian int32 magic, one int32 per dimension, then uint8
    data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError; truncation gives EOFError
        raise _corrupt(info, path, f"cannot read: {type(error).__name__}: {error}") from error
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise _corrupt(info, path, f"{len(raw)} bytes, shorter than the {header}-byte IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise _corrupt(info, path, f"IDX magic number {found}, expected {magic}")
    shape = tuple(int.from_bytes(raw[4 * (1 + i) : 4 * (2 + i)], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise _corrupt(
            info, path, f"{len(raw) - header} data bytes, the header's shape {shape} needs {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_fashion_mnist(
    info: DatasetInfo, root: Path, split: str, image_size: int | None = None
) -> ImageSplit:
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = require(info, f"{prefix}-images-idx3-ubyte", root)
    labels_path = require(info, f"{prefix}-labels-idx1-ubyte", root)
    images = _read_idx(info, images_path, _IDX_IMAGES)
    if images.shape[1:] != (28, 28):
        raise _corrupt(info, images_path, f"images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    labels = _labels(info, labels_path, _read_idx(info, labels_path, _IDX_LABELS), len(images))
    # Zero-pad 28x28 -> 32x32 (2 pixels each side) so the WRN sees the paper's 32x32 geometry (SPEC §10).
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return ImageSplit(torch.from_numpy(padded[:, None].copy()), labels)


# ------------------------------------------------------------------------------------------------ digits

# scikit-learn's 1,797 8x8 digits, for runs that finish in minutes on a CPU. Upsampled to 16x16 by default
# for speed: a WRN there ends on a 4x4 map, costs a quarter of 32x32 (also allowed), and is the size SPEC §11
# measured the prototype at (teacher 99 %+ in about a minute on 2 cores). The data set has no official split,
# so one is fixed here: stratified, 397 test images, random_state 0.
DIGITS_TEST_SIZE = 397


def read_digits(image_size: int = 16) -> tuple[ImageSplit, ImageSplit]:
    """(train, test) of the embedded digits at `image_size` (a multiple of 4, at least 8)."""
    train, test = _digits(image_size)
    return ImageSplit(train.images.clone(), train.labels.clone()), ImageSplit(
        test.images.clone(), test.labels.clone()
    )


def read_digits_split(info: DatasetInfo, root: Path, split: str, image_size: int | None = None) -> ImageSplit:
    train, test = read_digits(info.image_size if image_size is None else image_size)
    return train if split == "train" else test


@functools.lru_cache(maxsize=2)  # load_dataset reads the two splits one at a time; decode once
def _digits(image_size: int) -> tuple[ImageSplit, ImageSplit]:
    if not isinstance(image_size, int) or image_size < 8 or image_size % 4:
        raise ZsktError(
            f"digits image size {image_size!r} is not allowed; use a multiple of 4 that is at least 8 "
            "(the WRN halves the map twice; below 8 would need antialiased downsampling), e.g. 16 or 32"
        )
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float()[:, None] * (
        255.0 / 16.0
    )  # (1797, 1, 8, 8), 0..16 -> 0..255
    if image_size != 8:
        # Bilinear with align_corners=False, as an image resize does; upsampling needs no antialiasing.
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = pixels.round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=digits.target, random_state=0
    )
    # Sorted, so the splits keep scikit-learn's order like the other data sets keep their files' order.
    train_index, test_index = torch.from_numpy(np.sort(train_index)), torch.from_numpy(np.sort(test_index))
    return ImageSplit(images[train_index], labels[train_index]), ImageSplit(
        images[test_index], labels[test_index]
    )


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 (N, C, H, W) images on the 0..1 scale."""
    x = images.to(torch.float64).div(255).transpose(0, 1).reshape(images.shape[1], -1)  # (C, N*H*W)
    return tuple(x.mean(1).tolist()), tuple(x.std(1, correction=0).tolist())
