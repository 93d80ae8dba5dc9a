"""Specification of checkpoint files: the project's round trip, the authors' and the Ferles reproduction's
files as published (SPEC.md §7), and a one-line ZsktError for every way a file can be wrong.

The authors' files are written here by `AuthorsWideResNet` (test_models.py), an independent restatement of
their network, with torch.save exactly as their code calls it; PyTorch 1.0 wrote the legacy (non-zip) format.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from test_models import AuthorsWideResNet, randomise_bn
from torch import nn

from zskt.errors import ZsktError
from zskt.models import (
    Generator,
    WideResNet,
    build_model,
    load_generator,
    load_model,
    read_checkpoint,
    save_generator,
    save_model,
)

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Z = torch.randn(8, 100, generator=torch.Generator().manual_seed(1))


def authors_model(depth: int, widen: int, seed: int = 0) -> AuthorsWideResNet:
    torch.manual_seed(seed)
    model = AuthorsWideResNet(depth, 10, widen)
    randomise_bn(model, seed)
    return model.eval()


def logits_of(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(X)
    return out[0]


@contextlib.contextmanager
def raises_one_line(*words: str):
    """pytest.raises(ZsktError) that also checks the message is one line containing every word."""
    with pytest.raises(ZsktError) as info:
        yield info
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# ------------------------------------------------------------------------------ the project's files


@pytest.mark.parametrize("name", ["wrn-16-1", "wrn-16-2"])
def test_project_round_trip(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    randomise_bn(model)
    path = tmp_path / "model.pt"
    save_model(model, path, step=12, test_acc=0.5)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # the atomic write left no temporary file

    loaded = load_model(path)
    assert not loaded.training
    assert loaded.arch() == model.arch()
    model.eval()
    torch.testing.assert_close(loaded(X)[0], model(X)[0], rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    record = read_checkpoint(path)
    assert (record["format"], record["version"]) == ("zskt-model", 1)
    assert record["meta"] == {"step": 12, "test_acc": 0.5}
    assert load_model(path, name.upper(), num_classes=7, in_channels=3).arch() == model.arch()


def test_project_round_trip_grey_images_and_wrappers(tmp_path):
    model = build_model("wrn-16-1", in_channels=1)
    save_model(nn.DataParallel(model), tmp_path / "m.pt")  # the wrapper is unwrapped
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.in_channels == 1
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x)[0], model.eval()(x)[0], rtol=0, atol=0)


def test_generator_round_trip(tmp_path):
    generator = Generator(z_dim=10, image_size=16, out_channels=1, final_bn_affine=False)
    save_generator(generator, tmp_path / "g.pt", step=3)
    loaded = load_generator(tmp_path / "g.pt")
    assert loaded.arch() == generator.arch() and loaded.training
    z = torch.randn(6, 10)
    torch.testing.assert_close(loaded(z), generator(z), rtol=0, atol=0)


# ------------------------------------------------------------------------------ the authors' files


@pytest.mark.parametrize("legacy", [True, False], ids=["pytorch-1.0-format", "zip-format"])
def test_authors_teacher_file(tmp_path, legacy):
    reference = authors_model(16, 2)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "last.pth.tar"
    checkpoint = {
        "args": argparse.Namespace(dataset="CIFAR10", model="WRN-16-2", seed=0),
        "epoch": 200,
        "state_dict": reference.state_dict(),
        "optimizer": optimizer.state_dict(),
        "indices": np.arange(50),  # FSKT's KD+AT files hold a NumPy index array, which needs full unpickling
        "test_acc": 0.9413,
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)

    expected = logits_of(reference)
    for arch in (None, "WRN-16-2", "wrn-16-2"):
        model = load_model(path, arch)
        assert isinstance(model, WideResNet) and not model.training
        assert (model.depth, model.widen_factor, model.num_classes) == (16, 2, 10)
        torch.testing.assert_close(model(X)[0], expected, rtol=1e-5, atol=1e-5)


def test_authors_zero_shot_file(tmp_path):
    student = authors_model(16, 1, seed=3)
    loader = AuthorsLearnableLoader(z_dim=100)
    optimizer_student = torch.optim.Adam(student.parameters(), lr=2e-3)
    optimizer_generator = torch.optim.Adam(loader.parameters(), lr=1e-3)
    path = tmp_path / "last.pth.tar"
    torch.save(
        {
            "args": argparse.Namespace(dataset="CIFAR10", student_architecture="WRN-16-1", AT_beta=250),
            "n_pseudo_batches": 80000,
            "generator_state_dict": loader.state_dict(),
            "student_state_dict": student.state_dict(),
            "optimizer_generator": optimizer_generator.state_dict(),
            "optimizer_student": optimizer_student.state_dict(),
            "scheduler_generator": torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer_generator, 10
            ).state_dict(),
            "scheduler_student": torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer_student, 10
            ).state_dict(),
            "test_acc": 0.8377,
        },
        path,
        _use_new_zipfile_serialization=False,
    )
    assert all(key.startswith("generator.layers.") for key in loader.state_dict())

    model = load_model(path, "WRN-16-1")
    torch.testing.assert_close(model(X)[0], logits_of(student), rtol=1e-5, atol=1e-5)

    generator = load_generator(path)
    assert generator.arch() == {
        "family": "generator",
        "z_dim": 100,
        "image_size": 32,
        "out_channels": 3,
        "final_bn_affine": True,
    }
    assert generator.training  # the authors always run it with batch statistics
    authors_images = loader.generator.train()(Z)
    # the fused upsample-conv (the default forward) to float rounding; the literal layers bit for bit
    torch.testing.assert_close(generator(Z), authors_images, rtol=1e-4, atol=1e-4)
    generator.fuse_upsample = False
    torch.testing.assert_close(generator(Z), authors_images, rtol=0, atol=0)


class AuthorsView(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, tensor):
        return tensor.view(self.size)


class AuthorsGenerator(nn.Module):
    """SPEC.md §2's table, restated with the authors' View module."""

    def __init__(self, z_dim):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(z_dim, 128 * 8 * 8),
            AuthorsView((-1, 128, 8, 8)),
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 128, 3, 1, 1),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, 1, 1),
            nn.BatchNorm2d(64),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 3, 3, 1, 1),
            nn.BatchNorm2d(3, affine=True),
        )

    def forward(self, z):
        return self.layers(z)


class AuthorsLearnableLoader(nn.Module):
    """Holds the generator as `generator`, which prefixes its state_dict keys with "generator."."""

    def __init__(self, z_dim):
        super().__init__()
        torch.manual_seed(5)
        self.generator = AuthorsGenerator(z_dim)
        randomise_bn(self.generator, seed=5)


# ------------------------------------------------------------------------------ other layouts of the same
# weights


def to_ferles(state: dict) -> OrderedDict:
    """The authors' keys under the Ferles reproduction's module names (SPEC.md §7), in their order."""
    out = OrderedDict()
    for key, value in state.items():
        key = key.replace(".layer.", ".nblockLayer.").replace(".convShortcut.", ".conv_inp.")
        key = key.replace(".bn1.", ".batch_norm1.").replace(".bn2.", ".batch_norm2.")
        out["batch_norm." + key[len("bn1.") :] if key.startswith("bn1.") else key] = value
    return out


@pytest.mark.parametrize("depth,widen", [(16, 1), (16, 2), (40, 1)])
def test_ferles_state_dict(tmp_path, depth, widen):
    reference = authors_model(depth, widen)
    ferles = to_ferles(reference.state_dict())
    assert "block1.nblockLayer.0.batch_norm1.weight" in ferles and "batch_norm.running_var" in ferles
    assert ("block1.nblockLayer.0.conv_inp.weight" in ferles) is (widen > 1)
    path = tmp_path / f"wrn-{depth}-{widen}-seed-0-dict.pth"
    torch.save(ferles, path)
    model = load_model(path, f"wrn-{depth}-{widen}")
    torch.testing.assert_close(model(X)[0], logits_of(reference), rtol=1e-5, atol=1e-5)


def test_bare_and_data_parallel_state_dicts(tmp_path):
    reference = authors_model(16, 1)
    expected = logits_of(reference)
    torch.save(reference.state_dict(), tmp_path / "bare.pt")
    torch.save(nn.DataParallel(reference).state_dict(), tmp_path / "dp.pt")
    assert next(iter(torch.load(tmp_path / "dp.pt"))).startswith("module.")
    torch.save({"state_dict": nn.DataParallel(reference).state_dict()}, tmp_path / "dp_dict.pt")
    for name in ("bare.pt", "dp.pt", "dp_dict.pt"):
        torch.testing.assert_close(load_model(tmp_path / name)(X)[0], expected, rtol=1e-5, atol=1e-5)


def test_state_dict_without_num_batches_tracked_loads(tmp_path):
    # Files from PyTorch < 0.4.1 lack the counter; BatchNorm supplies it.
    reference = authors_model(16, 1)
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    torch.testing.assert_close(
        load_model(tmp_path / "old.pt")(X)[0], logits_of(reference), rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------------------------ errors


def test_wrong_architecture(tmp_path):
    torch.save({"state_dict": authors_model(40, 2).state_dict()}, tmp_path / "teacher.pth.tar")
    with raises_one_line("holds wrn-40-2 (depth 40, widen 2)", "expected wrn-16-1"):
        load_model(tmp_path / "teacher.pth.tar", "wrn-16-1")
    with raises_one_line("holds wrn-40-2", "expected wrn-40-1"):
        load_model(tmp_path / "teacher.pth.tar", "WRN-40-1")


def test_mismatched_arch_argument_on_project_file(tmp_path):
    save_model(build_model("wrn-16-2"), tmp_path / "model.pt")
    with raises_one_line("holds wrn-16-2", "expected wrn-40-2"):
        load_model(tmp_path / "model.pt", "wrn-40-2")
    with raises_one_line("resnet-18", "not of the form wrn-DEPTH-WIDEN"):
        load_model(tmp_path / "model.pt", "resnet-18")


def test_wrong_class_or_channel_count(tmp_path):
    save_model(build_model("wrn-16-1", num_classes=100), tmp_path / "model.pt")
    with raises_one_line("100-class", "expected 10 classes"):
        load_model(tmp_path / "model.pt", num_classes=10)
    with raises_one_line("3-channel", "expected 1 channels"):
        load_model(tmp_path / "model.pt", in_channels=1)


def test_missing_and_unexpected_keys(tmp_path):
    state = authors_model(16, 1).state_dict()
    del state["block2.layer.1.conv2.weight"]
    state["block2.layer.1.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with raises_one_line(
        "missing keys block2.layer.1.conv2.weight", "unexpected keys block2.layer.1.extra.weight"
    ):
        load_model(tmp_path / "bad.pt")


def test_shape_mismatch(tmp_path):
    state = authors_model(16, 1).state_dict()
    state["block1.layer.1.conv1.weight"] = torch.zeros(16, 16, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    with raises_one_line("block1.layer.1.conv1.weight has shape (16, 16, 1, 1)", "expected (16, 16, 3, 3)"):
        load_model(tmp_path / "bad.pt")


def test_not_a_wide_resnet(tmp_path):
    torch.save({"state_dict": nn.Linear(3, 2).state_dict()}, tmp_path / "linear.pt")
    with raises_one_line("does not hold a Wide ResNet", "conv1.weight"):
        load_model(tmp_path / "linear.pt")
    torch.save({"epoch": 3, "args": argparse.Namespace()}, tmp_path / "noweights.pt")
    with raises_one_line("holds no network weights", "epoch, args"):
        load_model(tmp_path / "noweights.pt")


def test_generator_and_model_files_are_not_interchangeable(tmp_path):
    save_model(build_model("wrn-16-1"), tmp_path / "model.pt")
    save_generator(Generator(), tmp_path / "generator.pt")
    with raises_one_line("holds a Wide ResNet, expected a generator"):
        load_generator(tmp_path / "model.pt")
    with raises_one_line("holds a generator, expected a Wide ResNet"):
        load_model(tmp_path / "generator.pt")
    torch.save({"state_dict": authors_model(16, 1).state_dict()}, tmp_path / "teacher.pth.tar")
    with raises_one_line("holds no generator weights", "generator_state_dict"):
        load_generator(tmp_path / "teacher.pth.tar")


def test_missing_file(tmp_path):
    with raises_one_line("nope.pt", "not found"):
        load_model(tmp_path / "nope.pt")
    with raises_one_line("not found"):
        load_generator(tmp_path / "nope.pt")


def test_text_file(tmp_path):
    (tmp_path / "notes.txt").write_text("teacher trained for 200 epochs\nacc 94.7\n")
    with raises_one_line("is not a PyTorch checkpoint", "expected a file written by torch.save"):
        load_model(tmp_path / "notes.txt")


def test_random_bytes(tmp_path):
    data = bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    )
    for head in (b"", b"\x80\x02", b"PK\x03\x04"):  # also behind a pickle or a zip header
        (tmp_path / "noise.pt").write_bytes(head + data)
        with raises_one_line("noise.pt is", "expected a", "file written by torch.save"):
            load_model(tmp_path / "noise.pt")


def test_other_pickles_and_zips_are_not_checkpoints(tmp_path):
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"state_dict": {}}, protocol=2))
    with raises_one_line("is not a PyTorch checkpoint (a Python pickle)"):
        load_model(tmp_path / "plain.pkl")
    with zipfile.ZipFile(tmp_path / "archive.zip", "w") as archive:
        archive.writestr("readme.txt", "not weights")
    with raises_one_line("is not a PyTorch checkpoint (a zip archive without data.pkl)"):
        load_model(tmp_path / "archive.zip")


def test_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with raises_one_line("is empty"):
        load_model(tmp_path / "empty.pt")


@pytest.mark.parametrize("legacy", [True, False], ids=["pytorch-1.0-format", "zip-format"])
def test_truncated_file(tmp_path, legacy):
    path = tmp_path / "last.pth.tar"
    torch.save(
        {"state_dict": authors_model(16, 1).state_dict()}, path, _use_new_zipfile_serialization=not legacy
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with raises_one_line("is truncated or corrupt", "expected a complete file written by torch.save"):
        load_model(path)
    with raises_one_line("is truncated or corrupt"):
        load_generator(path)
