"""Your own data: `npz:PATH` (NumPy arrays) and `folder:PATH` (one sub-folder of images per class).

A scan reads only what describes the set (the arrays' headers and labels, the image files' headers), so
get_info and check_files can validate a set before a run folder is made; load_custom then reads the pixels
(images decoded once, with PIL). Any number of classes; mean/std come from the training split. Where the files
give no test split, a stratified one is fixed here: 20 % of each class, from a seed that does not depend on a
run's --seed, so a teacher and the students distilled from it see the same split.
See docs/own_models_and_data.md.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zskt.data.readers import channel_stats
from zskt.data.records import SPLITS, DatasetInfo, ImageData, ImageSplit
from zskt.errors import ZsktError

TEST_FRACTION = 0.2  # of each class, when the files give no test split
SPLIT_SEED = 0  # numpy's legacy RandomState: its stream is frozen across NumPy versions, so the split is too
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_GREY_MODES = frozenset({"1", "L", "LA"})  # read as one channel; every other 8-bit mode is read as RGB
_DEEP_MODES = frozenset(
    {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
)  # 16/32-bit: would be clipped to 8 bits

NPZ_HOWTO = (
    "np.savez(PATH, x=images, y=labels) with images uint8 (N, H, W) or (N, H, W, C) and labels integers "
    "0..K-1"
)


@dataclass(frozen=True)
class _Part:
    """Where one split's images come from: an array in an .npz file, or a list of image files."""

    path: Path | None = None  # npz file
    key: str = ""  # its images array
    files: tuple[Path, ...] = ()  # folder: image files
    index: np.ndarray | None = None  # rows (npz) or files (folder) of the split, when a seeded split made it
    labels: np.ndarray | None = None  # int64, after `index`


@dataclass(frozen=True)
class _Scan:
    info: DatasetInfo
    parts: dict[str, _Part]
    mode: str = ""  # folder: the PIL mode every image is converted to ("L" or "RGB")


_CACHE: dict[tuple, _Scan] = {}


def custom_info(name: str) -> DatasetInfo:
    return _scan(name).info


def load_custom(name: str, splits: tuple[str, ...] = SPLITS, image_size: int | None = None) -> ImageData:
    """The requested splits as uint8 tensors; mean/std from the training split, which is read for them even
    when only the test split is asked for (the normalisation a teacher was trained with)."""
    scan = _scan(name)
    info = scan.info
    if image_size is not None and image_size != info.image_size:
        raise ZsktError(
            f"{info.title} images are {info.image_size}x{info.image_size}; image_size={image_size} "
            "only applies to digits: leave it unset (resize the images themselves to change it)"
        )
    arrays: dict = {}  # an .npz array both splits are cut from is read once
    train = _read_part(scan, "train", arrays)
    mean, std = channel_stats(train.images)
    test = _read_part(scan, "test", arrays) if "test" in splits else None
    return ImageData(info, train if "train" in splits else None, test, mean, std)


def _scan(name: str) -> _Scan:
    kind, _, body = str(name).partition(":")
    kind = kind.lower()
    if not body.strip():
        raise ZsktError(
            f"{kind}: needs a path, e.g. {kind}:data/my_set{'.npz' if kind == 'npz' else ''} "
            "(docs/own_models_and_data.md)"
        )
    spelling = f"{kind}:{body}"
    if kind == "npz":
        paths = _npz_paths(body)
        key = (spelling, *(_stamp(p) for p in paths))
        if key not in _CACHE:
            _CACHE[key] = _scan_npz(spelling, *paths)
    else:
        root = Path(body).expanduser()
        key = (spelling, *_folder_stamps(root))
        if key not in _CACHE:
            _CACHE[key] = _scan_folder(spelling, root)
    return _CACHE[key]


def _stamp(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError:
        return (str(path), None)
    return (str(path.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)


def _folder_stamps(root: Path) -> list[tuple]:
    # A folder's mtime changes when entries are added or removed: the root, its split folders and their class
    # folders cover every way the set's file list can change.
    stamps, queue = [], [root]
    for depth in range(3):
        nxt = []
        for folder in queue:
            stamps.append(_stamp(folder))
            if depth < 2 and folder.is_dir():
                nxt += sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        queue = nxt
    return stamps


# ------------------------------------------------------------------------------------------- seeded split


def stratified_split(
    labels: np.ndarray, fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices: round(fraction · n) images of each class with n >= 2 go to test (at least
    one, never all), the first ones of a seeded permutation."""
    order = np.random.RandomState(seed).permutation(len(labels))
    test = []
    for c in np.unique(labels):
        members = order[labels[order] == c]
        k = int(np.floor(fraction * len(members) + 0.5))
        k = min(max(k, 1), len(members) - 1) if len(members) >= 2 else 0
        test.append(members[:k])
    test_index = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), test_index), test_index


def _split_or_keep(
    title: str, train_labels: np.ndarray, where: str, fix: str
) -> tuple[np.ndarray, np.ndarray]:
    train_index, test_index = stratified_split(train_labels)
    if len(test_index) == 0:
        raise ZsktError(
            f"{title}: too few images to set a test split aside ({len(train_labels)} in {where}, no "
            f"class with 2 or more); {fix}"
        )
    return train_index, test_index


def _check_labels(title: str, train: np.ndarray, test: np.ndarray | None, fix: str) -> int:
    """Number of classes K; the labels must be 0..K-1 with every class in the training split, K >= 2."""
    if len(train) == 0:
        raise ZsktError(f"{title} has no training images; {fix}")
    if train.min() < 0 or (test is not None and len(test) and test.min() < 0):
        raise ZsktError(
            f"{title} has negative labels; labels must be 0..K-1 "
            "(remap with np.unique(y, return_inverse=True)[1])"
        )
    k = int(train.max()) + 1
    if k < 2:
        raise ZsktError(f"{title} has one class; a classifier needs at least two")
    missing = np.setdiff1d(np.arange(k), train)
    if len(missing):
        raise ZsktError(
            f"{title}: class {int(missing[0])} of 0..{k - 1} has no training images; labels must be "
            "0..K-1 with every class present (remap with np.unique(y, return_inverse=True)[1])"
        )
    if test is not None and len(test) and test.max() >= k:
        raise ZsktError(
            f"{title}: test label {int(test.max())} is not a training class (0..{k - 1}); the test "
            "split must use the training split's classes"
        )
    return k


def _info(
    spelling: str,
    title: str,
    source: str,
    num_classes: int,
    channels: int,
    size: int,
    n_train: int,
    n_test: int,
    classes: tuple[str, ...] | None = None,
) -> DatasetInfo:
    # No augmentation: flips and crops are wrong for some data (text, digits); no recipe says otherwise.
    return DatasetInfo(
        name=spelling,
        title=title,
        num_classes=num_classes,
        in_channels=channels,
        image_size=size,
        mean=None,
        std=None,
        augment=False,
        n_train=n_train,
        n_test=n_test,
        source=source,
        classes=classes,
    )


def _read_part(scan: _Scan, split: str, arrays: dict) -> ImageSplit:
    part = scan.parts[split]
    if part.path is not None:
        if (part.path, part.key) not in arrays:
            arrays[part.path, part.key] = _npz_images(scan.info, part)
        images = arrays[part.path, part.key]
        if part.index is not None:
            images = images[part.index]
    else:  # decode only this split's files
        files = part.files if part.index is None else tuple(part.files[i] for i in part.index)
        images = _decode(scan.info, files, scan.mode)
    # (N, H, W, C) -> (N, C, H, W), contiguous, as the readers of the canonical files return them.
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return ImageSplit(pixels, torch.from_numpy(part.labels.astype(np.int64)))


# ---------------------------------------------------------------------------------------------------- npz


def _npz_paths(body: str) -> list[Path]:
    """npz:PATH, or npz:TRAIN,TEST (a path that exists as written wins over the comma form)."""
    if "," in body and not Path(body).expanduser().is_file():
        train, test = (part.strip() for part in body.split(",", 1))
        return [Path(train).expanduser(), Path(test).expanduser()]
    return [Path(body).expanduser()]


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an .npz file, from the .npy headers alone (no data read)."""
    if not path.is_file():
        raise ZsktError(f"npz file not found: {path} (save one with {NPZ_HOWTO})")
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                headers[member[:-4]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ZsktError(
            f"{path} is not a readable .npz file ({type(error).__name__}: {error}); save it with {NPZ_HOWTO}"
        ) from error
    return headers


def _npz_keys(path: Path, headers: dict, test_keys: bool) -> tuple[str, str, str | None, str | None]:
    x = next((k for k in ("x", "x_train") if k in headers), None)
    y = next((k for k in ("y", "y_train") if k in headers), None)
    if x is None or y is None:
        found = ", ".join(headers) or "no arrays"
        raise ZsktError(
            f"{path} has {found}; zskt reads x (images) and y (labels), or x_train/y_train "
            f"(+ x_test/y_test): save it with {NPZ_HOWTO}"
        )
    if not test_keys:
        return x, y, None, None
    has_x, has_y = "x_test" in headers, "y_test" in headers
    if has_x != has_y:
        raise ZsktError(
            f"{path} has {'x_test' if has_x else 'y_test'} without {'y_test' if has_x else 'x_test'}; "
            "give both (a test split) or neither (a seeded 20 % split is made)"
        )
    return (x, y, "x_test", "y_test") if has_x else (x, y, None, None)


def _check_images(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int, int]:
    """(N, side, channels) of an images array, or a one-line error naming the fix."""
    where = f"{path} array {key}"
    if dtype != np.uint8:
        raise ZsktError(
            f"{where} is {dtype}; zskt reads 0..255 uint8 images: save x.astype(np.uint8) (float "
            "images in 0..1: (x * 255).round().astype(np.uint8))"
        )
    if len(shape) == 3:
        n, h, w, c = *shape, 1
    elif len(shape) == 4:
        n, h, w, c = shape
        if h != w and w == c and shape[1] in (1, 3):
            raise ZsktError(
                f"{where} has shape {shape}, channels first; zskt reads (N, H, W, C): save "
                "x.transpose(0, 2, 3, 1)"
            )
    else:
        raise ZsktError(f"{where} has shape {shape}; zskt reads images as (N, H, W) or (N, H, W, C)")
    if h != w:
        raise ZsktError(
            f"{where} holds {h}x{w} images; zskt needs square images: crop or pad them to one side"
        )
    if c < 1 or h < 1:
        raise ZsktError(f"{where} has shape {shape}: no pixels")
    return n, h, c


def _npz_labels(path: Path, key: str, count: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            labels = arrays[key]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise ZsktError(
            f"{path} array {key} cannot be read ({type(error).__name__}: {error}); save it with {NPZ_HOWTO}"
        ) from error
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ZsktError(
            f"{path} array {key} has shape {labels.shape} and dtype {labels.dtype}; labels must be N "
            "integers 0..K-1: save y.astype(np.int64)"
        )
    if len(labels) != count:
        raise ZsktError(
            f"{path}: {len(labels)} labels in {key} for {count} images; x and y must have one label "
            "per image, in the same order"
        )
    return labels.astype(np.int64)


def _scan_npz(spelling: str, train_path: Path, test_path: Path | None = None) -> _Scan:
    title = f"npz:{train_path.name}"
    headers = _npz_headers(train_path)
    x, y, x_test, y_test = _npz_keys(train_path, headers, test_keys=test_path is None)
    n, size, channels = _check_images(train_path, x, *headers[x])
    labels = _npz_labels(train_path, y, n)
    test_labels, test_part = None, None
    if test_path is not None:
        test_headers = _npz_headers(test_path)
        x_test, y_test, _, _ = _npz_keys(test_path, test_headers, test_keys=False)
        test_source = test_path
    elif x_test is not None:
        test_headers, test_source = headers, train_path
    if x_test is not None:
        n_test, size_test, channels_test = _check_images(test_source, x_test, *test_headers[x_test])
        if (size_test, channels_test) != (size, channels):
            raise ZsktError(
                f"{test_source} array {x_test} holds {channels_test}x{size_test}x{size_test} images, the "
                f"training ones are {channels}x{size}x{size}; both splits need one image shape"
            )
        test_labels = _npz_labels(test_source, y_test, n_test)
        test_part = _Part(path=test_source, key=x_test, labels=test_labels)
    fix = f"save it with {NPZ_HOWTO}"
    num_classes = _check_labels(title, labels, test_labels, fix)
    if test_part is None:
        train_index, test_index = _split_or_keep(
            title, labels, str(train_path), "add x_test/y_test or use npz:TRAIN.npz,TEST.npz"
        )
        parts = {
            "train": _Part(path=train_path, key=x, index=train_index, labels=labels[train_index]),
            "test": _Part(path=train_path, key=x, index=test_index, labels=labels[test_index]),
        }
    else:
        parts = {"train": _Part(path=train_path, key=x, labels=labels), "test": test_part}
    info = _info(
        spelling,
        title,
        "npz",
        num_classes,
        channels,
        size,
        len(parts["train"].labels),
        len(parts["test"].labels),
    )
    return _Scan(info, parts)


def _npz_images(info: DatasetInfo, part: _Part) -> np.ndarray:
    try:
        with np.load(part.path, allow_pickle=False) as arrays:
            images = arrays[part.key]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise ZsktError(
            f"{part.path} array {part.key} cannot be read ({type(error).__name__}: {error}); save it "
            f"again with {NPZ_HOWTO}"
        ) from error
    return images[..., None] if images.ndim == 3 else images  # (N, H, W, C)


# ------------------------------------------------------------------------------------------------- folder


def _class_folders(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _scan_folder(spelling: str, root: Path) -> _Scan:
    title = f"folder:{root.name or root}"
    layout = (
        f"put each class's images in its own sub-folder, {root}/CLASS/*.png (or train/CLASS and test/CLASS)"
    )
    if not root.is_dir():
        raise ZsktError(f"{'not a folder' if root.exists() else 'folder not found'}: {root}; {layout}")
    train_dir, test_dir = root, None
    if (root / "train").is_dir():
        train_dir = root / "train"
        test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    folders = _class_folders(train_dir)
    if not folders:
        loose = _images_in(train_dir)
        found = f"{len(loose)} images but no class sub-folders" if loose else "no class sub-folders"
        raise ZsktError(f"{train_dir} has {found}; {layout}")
    if len(folders) == 1:
        raise ZsktError(
            f"{train_dir} has one class sub-folder ({folders[0].name}); a classifier needs at least two"
        )
    classes = tuple(p.name for p in folders)
    files, labels = [], []
    for label, folder in enumerate(folders):
        found = _images_in(folder)
        if not found:
            raise ZsktError(
                f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add "
                "some or remove the folder"
            )
        files += found
        labels += [label] * len(found)
    test_files, test_labels = [], []
    if test_dir is not None:
        for folder in _class_folders(test_dir):
            if folder.name not in classes:
                raise ZsktError(
                    f"test class folder {folder} has no training folder {train_dir / folder.name}; the "
                    "test split must use the training split's classes"
                )
            found = _images_in(folder)
            test_files += found
            test_labels += [classes.index(folder.name)] * len(found)
        if not test_files:
            raise ZsktError(
                f"{test_dir} holds no images; put the test images in {test_dir}/CLASS/ or remove it "
                "(a seeded 20 % split is then made)"
            )
    mode, size = _image_headers(title, files + test_files)
    labels = np.asarray(labels, np.int64)
    if test_dir is None:
        train_index, test_index = _split_or_keep(
            title, labels, str(train_dir), f"add images or give a test split in {root}/test/CLASS/"
        )
        parts = {
            "train": _Part(files=tuple(files), index=train_index, labels=labels[train_index]),
            "test": _Part(files=tuple(files), index=test_index, labels=labels[test_index]),
        }
    else:
        parts = {
            "train": _Part(files=tuple(files), labels=labels),
            "test": _Part(files=tuple(test_files), labels=np.asarray(test_labels, np.int64)),
        }
    channels = 1 if mode == "L" else 3
    info = _info(
        spelling,
        title,
        "folder",
        len(classes),
        channels,
        size,
        len(parts["train"].labels),
        len(parts["test"].labels),
        classes,
    )
    return _Scan(info, parts, mode)


def _open_error(path: Path, error: Exception) -> ZsktError:
    return ZsktError(
        f"image {path} cannot be read ({type(error).__name__}: {error}); re-save it or remove it"
    )


def _image_headers(title: str, files: list[Path]) -> tuple[str, int]:
    """The PIL mode to read every image in ("L" when all are grey, else "RGB") and the common side, from the
    files' headers (PIL opens lazily: no pixels are decoded here)."""
    from PIL import Image

    grey, first = True, None
    for path in files:
        try:
            with Image.open(path) as image:
                size, mode = image.size, image.mode
        except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
            raise _open_error(path, error) from error
        if mode in _DEEP_MODES:
            raise ZsktError(
                f"image {path} is {mode} (16- or 32-bit); zskt reads 8-bit images: save it as 8-bit "
                "grey (L) or RGB"
            )
        if size[0] != size[1]:
            raise ZsktError(
                f"image {path} is {size[0]}x{size[1]}; zskt needs square images of one size: crop or "
                "resize them all to one side"
            )
        if first is None:
            first = (path, size)
        elif size != first[1]:
            raise ZsktError(
                f"{title}: image {path} is {size[0]}x{size[1]} but {first[0]} is "
                f"{first[1][0]}x{first[1][1]}; resize them all to one side"
            )
        grey = grey and mode in _GREY_MODES
    return ("L" if grey else "RGB"), first[1][0]


def _decode(info: DatasetInfo, files: tuple[Path, ...], mode: str) -> np.ndarray:
    from PIL import Image

    side, channels = info.image_size, info.in_channels
    images = np.empty((len(files), side, side, channels), np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert(mode))
        except Exception as error:
            raise _open_error(path, error) from error
        if pixels.shape[:2] != (side, side):
            raise ZsktError(
                f"image {path} changed since it was scanned (now {pixels.shape[1]}x{pixels.shape[0]}, "
                f"was {side}x{side}); run again"
            )
        images[i] = pixels.reshape(side, side, channels)
    return images
