"""Your own data: npz:PATH and folder:PATH sets, read end to end from files written here, and their bad
inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zskt.data import get_info, load_dataset
from zskt.data.custom import stratified_split
from zskt.data.readers import channel_stats
from zskt.errors import ZsktError


def _arrays(n: int, classes: int, side: int = 8, channels: int | None = None, seed: int = 0):
    """uint8 images whose class is visible in their mean brightness, and labels 0..classes-1 (all present)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % classes).astype(np.int64)
    shape = (n, side, side) if channels is None else (n, side, side, channels)
    noise = rng.integers(0, 40, shape)
    level = (y * (200 // classes)).reshape((n,) + (1,) * (len(shape) - 1))
    return (level + noise).astype(np.uint8), y


# ---------------------------------------------------------------------------------------------------- npz


def test_npz_seeded_split_is_stratified_fixed_and_normalised_by_train(tmp_path):
    x, y = _arrays(103, classes=3)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    info = get_info(f"npz:{path}")
    assert (info.num_classes, info.in_channels, info.image_size, info.source) == (3, 1, 8, "npz")
    data = load_dataset(f"npz:{path}")
    counts = np.bincount(y)
    test_counts = torch.bincount(data.test.labels, minlength=3).numpy()
    assert np.array_equal(test_counts, np.floor(0.2 * counts + 0.5).astype(int))  # 20 % of each class
    assert len(data.train) + len(data.test) == 103 == info.n_train + info.n_test
    assert data.train.images.shape == (info.n_train, 1, 8, 8) and data.train.images.dtype == torch.uint8
    # Every image is where its label says: the split keeps (image, label) pairs together.
    train_index, test_index = stratified_split(y)
    assert torch.equal(data.test.images[:, 0], torch.from_numpy(x[test_index]))
    assert torch.equal(data.train.labels, torch.from_numpy(y[train_index]))
    assert (data.mean, data.std) == channel_stats(data.train.images)
    assert data.mean != channel_stats(torch.from_numpy(x[:, None]))[0]  # train split only, not all images
    again = load_dataset(f"npz:{path}")  # the split does not depend on anything but the file
    assert torch.equal(again.test.labels, data.test.labels)


def test_npz_test_keys_many_classes_rgb_and_train_only_statistics(tmp_path):
    x, y = _arrays(60, classes=12, channels=3)
    x[:] = 10  # train images all 10/255: a test split's pixels would move the mean if they were counted
    x_test, y_test = _arrays(24, classes=12, channels=3, seed=1)
    x_test[:] = 200
    path = tmp_path / "keras_style.npz"
    np.savez_compressed(path, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    data = load_dataset(f"npz:{path}")
    assert data.info.num_classes == 12 and data.info.in_channels == 3
    assert data.train.images.shape == (60, 3, 8, 8) and data.test.images.shape == (24, 3, 8, 8)
    assert data.mean == pytest.approx((10 / 255,) * 3) and data.std == pytest.approx((0.0,) * 3)
    assert torch.equal(data.test.labels, torch.from_numpy(y_test))
    # (N, H, W, C) -> (N, C, H, W): channel 2 of image 5 is x[5, :, :, 2].
    x_test[5, :, :, 2] = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    only_test = load_dataset(f"npz:{path}", splits=("test",))
    assert only_test.train is None and only_test.mean == pytest.approx((10 / 255,) * 3)
    assert torch.equal(only_test.test.images[5, 2], torch.arange(64, dtype=torch.uint8).reshape(8, 8))


def test_npz_train_and_test_files(tmp_path):
    x, y = _arrays(30, classes=5)
    x_test, y_test = _arrays(10, classes=5, seed=2)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x_test, y=y_test)
    name = f"npz:{tmp_path / 'train.npz'},{tmp_path / 'test.npz'}"
    data = load_dataset(name)
    assert (len(data.train), len(data.test), data.info.num_classes) == (30, 10, 5)
    assert torch.equal(data.test.images[:, 0], torch.from_numpy(x_test))
    assert data.info.name == name and data.info.title == "npz:train.npz"


def test_npz_image_size_must_match(tmp_path):
    x, y = _arrays(20, classes=2)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    assert len(load_dataset(f"npz:{tmp_path / 'a.npz'}", image_size=8).train) == 16
    with pytest.raises(ZsktError, match="images are 8x8; image_size=16 only applies to digits"):
        load_dataset(f"npz:{tmp_path / 'a.npz'}", image_size=16)


def _save(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


_X, _Y = _arrays(20, classes=4)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": _X, "labels": _Y}, r"has images, labels; zskt reads x \(images\) and y \(labels\)"),
        ({"x": _X.astype(np.float32), "y": _Y}, r"is float32; .*x\.astype\(np\.uint8\)"),
        ({"x": _X[:, :, :6], "y": _Y}, "holds 8x6 images; zskt needs square images"),
        ({"x": np.zeros((20, 3, 8, 8), np.uint8), "y": _Y}, r"channels first; .*x\.transpose\(0, 2, 3, 1\)"),
        (
            {"x": np.zeros((20, 64), np.uint8), "y": _Y},
            r"has shape \(20, 64\); zskt reads images as \(N, H, W\)",
        ),
        (
            {"x": _X, "y": _Y.astype(np.float32)},
            r"labels must be N integers 0\.\.K-1: save y\.astype\(np\.int64\)",
        ),
        ({"x": _X, "y": _Y[:15]}, "15 labels in y for 20 images"),
        ({"x": _X, "y": np.zeros(20, np.int64)}, "has one class; a classifier needs at least two"),
        ({"x": _X, "y": np.where(_Y == 1, 3, _Y)}, r"class 1 of 0\.\.3 has no training images.*np\.unique"),
        ({"x": _X, "y": _Y - 1}, "negative labels"),
        ({"x": _X, "y": _Y, "x_test": _X}, "has x_test without y_test; give both"),
        ({"x": _X, "y": _Y, "x_test": _X[:, :4, :4], "y_test": _Y}, "both splits need one image shape"),
        ({"x": _X, "y": _Y, "x_test": _X, "y_test": _Y + 1}, "test label 4 is not a training class"),
        ({"x": _X[:3], "y": np.array([0, 1, 2])}, "too few images to set a test split aside"),
    ],
    ids=[
        "keys",
        "dtype",
        "not-square",
        "channels-first",
        "flat",
        "float-labels",
        "length",
        "one-class",
        "missing-class",
        "negative",
        "half-test",
        "test-shape",
        "test-label",
        "too-few",
    ],
)
def test_npz_bad_input_is_one_line_naming_the_fix(tmp_path, arrays, message):
    name = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ZsktError, match=message) as caught:
        get_info(name)  # found by the scan, before any pixel is read
    assert "\n" not in str(caught.value)


def test_npz_file_missing_or_not_npz(tmp_path):
    with pytest.raises(ZsktError, match=r"npz file not found: .*nothing\.npz \(save one with np\.savez"):
        get_info(f"npz:{tmp_path / 'nothing.npz'}")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ZsktError, match="is not a readable .npz file"):
        load_dataset(f"npz:{tmp_path / 'text.npz'}")
    with pytest.raises(ZsktError, match="npz: needs a path"):
        get_info("npz:")


# ------------------------------------------------------------------------------------------------- folder


def _write_images(folder, images, mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels, mode=mode).save(folder / f"{i:03d}.png")


def test_folder_with_seeded_split(tmp_path):
    root = tmp_path / "shapes"
    x, y = _arrays(45, classes=3)
    for c, name in enumerate(("circle", "square", "triangle")):
        _write_images(root / name, x[y == c])
    (root / "circle" / "notes.txt").write_text("not an image: ignored")
    info = get_info(f"folder:{root}")
    assert (info.num_classes, info.in_channels, info.image_size) == (3, 1, 8)
    assert info.classes == ("circle", "square", "triangle") and (info.n_train, info.n_test) == (36, 9)
    data = load_dataset(f"folder:{root}")
    assert data.train.images.shape == (36, 1, 8, 8) and torch.bincount(data.test.labels).tolist() == [3, 3, 3]
    # Pixels decoded as written, each under its class's label.
    square = x[y == 1]
    decoded = torch.cat([data.train.images, data.test.images])[
        torch.cat([data.train.labels, data.test.labels]) == 1
    ]
    assert sorted(map(bytes, decoded[:, 0].numpy())) == sorted(map(bytes, square))
    assert (data.mean, data.std) == channel_stats(data.train.images)


def test_folder_train_test_layout_rgb_and_train_statistics(tmp_path):
    root = tmp_path / "set"
    for c in range(4):
        _write_images(root / "train" / f"class{c}", np.full((3, 6, 6, 3), 20 + c, np.uint8), mode="RGB")
        _write_images(root / "test" / f"class{c}", np.full((2, 6, 6, 3), 250, np.uint8), mode="RGB")
    data = load_dataset(f"folder:{root}")
    assert data.info.num_classes == 4 and data.info.in_channels == 3
    assert (len(data.train), len(data.test)) == (12, 8)
    assert data.mean == pytest.approx((21.5 / 255,) * 3)  # the test images (250) are not counted
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    only_test = load_dataset(f"folder:{root}", splits=("test",))
    assert only_test.train is None and only_test.mean == data.mean


def test_folder_mixed_grey_and_colour_reads_rgb(tmp_path):
    root = tmp_path / "mixed"
    _write_images(root / "a", np.full((3, 4, 4), 7, np.uint8))
    _write_images(root / "b", np.full((3, 4, 4, 3), 9, np.uint8), mode="RGB")
    data = load_dataset(f"folder:{root}")
    assert data.info.in_channels == 3 and data.train.images.shape[1] == 3
    grey = data.train.images[data.train.labels == 0]
    assert int(grey.min()) == int(grey.max()) == 7  # grey replicated to three channels


def test_folder_bad_inputs_are_one_line(tmp_path):
    def error(root):
        with pytest.raises(ZsktError) as caught:
            get_info(f"folder:{root}")
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert error(tmp_path / "absent").startswith("folder not found")
    (tmp_path / "empty").mkdir()
    assert "no class sub-folders; put each class's images in its own sub-folder" in error(tmp_path / "empty")
    _write_images(tmp_path / "loose", np.zeros((2, 4, 4), np.uint8))
    assert "2 images but no class sub-folders" in error(tmp_path / "loose")
    _write_images(tmp_path / "one" / "cats", np.zeros((2, 4, 4), np.uint8))
    assert "one class sub-folder (cats); a classifier needs at least two" in error(tmp_path / "one")
    _write_images(tmp_path / "hollow" / "a", np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "hollow" / "b").mkdir()
    assert "holds no images" in error(tmp_path / "hollow")
    _write_images(tmp_path / "wide" / "a", np.zeros((2, 4, 6), np.uint8))
    _write_images(tmp_path / "wide" / "b", np.zeros((2, 4, 6), np.uint8))
    assert "is 6x4; zskt needs square images" in error(tmp_path / "wide")
    _write_images(tmp_path / "sizes" / "a", np.zeros((2, 4, 4), np.uint8))
    _write_images(tmp_path / "sizes" / "b", np.zeros((2, 5, 5), np.uint8))
    assert "is 5x5 but" in error(tmp_path / "sizes") and "resize them all to one side" in error(
        tmp_path / "sizes"
    )
    _write_images(tmp_path / "broken" / "a", np.zeros((2, 4, 4), np.uint8))
    _write_images(tmp_path / "broken" / "b", np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "broken" / "b" / "001.png").write_bytes(b"not a png")
    assert "001.png cannot be read" in error(tmp_path / "broken") and "re-save it or remove it" in error(
        tmp_path / "broken"
    )
    for split, name in (("train", "a"), ("train", "b"), ("test", "c")):
        _write_images(tmp_path / "strange" / split / name, np.zeros((2, 4, 4), np.uint8))
    assert "test class folder" in error(tmp_path / "strange") and "training split's classes" in error(
        tmp_path / "strange"
    )


def test_the_docs_digits_export_reads_back(tmp_path):
    # docs/own_models_and_data.md's example, as written there.
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.kron(digits.images, np.ones((2, 2))) * 255 / 16
    np.savez(tmp_path / "digits16.npz", x=x.round().astype(np.uint8), y=digits.target)
    data = load_dataset(f"npz:{tmp_path / 'digits16.npz'}")
    assert (data.info.num_classes, data.info.in_channels, data.info.image_size) == (10, 1, 16)
    assert len(data.train) + len(data.test) == 1797 and abs(len(data.test) - 0.2 * 1797) < 10
    assert int(data.train.images.max()) == 255


def test_own_data_end_to_end_teacher_then_every_data_free_family(tmp_path):
    # An npz set through the commands: a teacher trained on it, then zero-shot, the generator family and the
    # inversion family distil from it at toy size (the test split of the file scores each student).
    import json

    from zskt.cli import main

    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = (rng.integers(0, 60, (60, 8, 8)) + 60 * y[:, None, None]).astype(np.uint8)  # classes by brightness
    np.savez(tmp_path / "own.npz", x=x, y=y)
    data = f"npz:{tmp_path / 'own.npz'}"
    common = ["--dataset", data, "--device", "cpu", "--quiet"]
    teacher = tmp_path / "teacher"
    assert (
        main(
            [
                "train",
                "--model",
                "wrn-10-1",
                "--epochs",
                "2",
                "--batch-size",
                "16",
                "--out",
                str(teacher),
                *common,
            ]
        )
        == 0
    )
    runs = {
        "zero-shot": ["-N", "2", "--batch-size", "8", "--n-student-steps", "2", "--beta", "0"],
        "dfad": ["--iterations", "2", "--batch-size", "8", "--epochs", "1", "--epoch-steps", "2"]
        + ["--student-steps", "2"],
        "fast": [
            "-N",
            "2",
            "--batch-size",
            "8",
            "--synthesis-batch-size",
            "8",
            "--kd-steps",
            "2",
            "--g-steps",
            "1",
            "--warmup",
            "0",
        ],
    }
    for method, args in runs.items():
        out = tmp_path / method
        code = main(
            [
                method,
                "--teacher",
                str(teacher / "model.pt"),
                "--student",
                "wrn-10-1",
                *args,
                "--out",
                str(out),
                *common,
            ]
        )
        assert code == 0, method
        result = json.loads((out / "result.json").read_text())
        assert result["dataset"] == data and 0 <= result["test_accuracy"] <= 100, method
