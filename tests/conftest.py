"""Shared test set-up: tests/ on sys.path (test files import the reference loops kept here, e.g.
`reference_zero_shot`), and toy networks and data built once per session, at toy sizes (digits at 8x8,
WRN-16-x):

- `digits8`: the embedded digits at their native 8x8 (one grey channel).
- `random_wrn(seed, arch="wrn-16-1", num_classes=10, in_channels=1)`: a randomly initialised Wide ResNet in
  eval mode whose batch norms have non-trivial running statistics and scales, as a trained network's have
  (with PyTorch's initial statistics a BN layer is the identity and folding it tests nothing).
- `digits_teacher`: a WRN-16-1 trained on `digits8` (6 epochs of SGD, about 97 % test accuracy, a few
  seconds); `digits_teacher_file`: it, saved as `zskt train` saves a model (dataset digits, image size 8).
- `toy_network_files`: random networks saved as model files: "teacher" (WRN-16-2) and "student" (WRN-16-1)
  for digits at 8x8, plus misfits for the error paths: "rgb" (3 channels), "svhn" (an SVHN network at 32x32)
  and "big" (digits at 16x16).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zskt.data import load_dataset, normalize
from zskt.models import build_model, save_model
from zskt.runtime import FORCE_BF16_ENV

sys.path.insert(0, str(Path(__file__).parent))

# bf16 runs at toy sizes on any CPU, also where it is only emulated (slow, but toy-sized): the refusal zskt
# makes there has its own tests (test_runtime.py), which unset this. Subprocesses (torchrun tests) inherit it.
os.environ.setdefault(FORCE_BF16_ENV, "1")

TOY_SIZE = 8  # digits at their native 8x8: the WRN maps are 8, 4, 2 and the generator's seed map is 2x2


@pytest.fixture(scope="session")
def digits8():
    return load_dataset("digits", image_size=TOY_SIZE)


def _random_wrn(seed: int, arch: str = "wrn-16-1", num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, in_channels)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="session")
def random_wrn():
    """A factory: random_wrn(seed, arch="wrn-16-1", num_classes=10, in_channels=1) -> eval-mode network."""
    return _random_wrn


@pytest.fixture(scope="session")
def digits_teacher(digits8):
    """A WRN-16-1 digits teacher at 8x8: 6 epochs of SGD, about 97 % test accuracy, a few seconds to train."""
    data = digits8
    torch.manual_seed(0)
    model = build_model("wrn-16-1", 10, 1)
    images, labels = normalize(data.train.images, data.mean, data.std), data.train.labels
    epochs, batch = 6, 64
    steps = epochs * -(-len(labels) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(labels), generator=order)
        for start in range(0, len(labels), batch):
            index = perm[start : start + batch]
            logits, _ = model(images[index])
            loss = F.cross_entropy(logits, labels[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_teacher_file(tmp_path_factory, digits_teacher):
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    save_model(digits_teacher, path, dataset="digits", image_size=TOY_SIZE)
    return path


@pytest.fixture(scope="session")
def toy_network_files(tmp_path_factory):
    """{name: path} of random networks saved as `zskt train` would save them (see the module docstring)."""
    root = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    paths = {}
    for name, arch, channels, dataset, size in (
        ("teacher", "wrn-16-2", 1, "digits", TOY_SIZE),
        ("student", "wrn-16-1", 1, "digits", TOY_SIZE),
        ("rgb", "wrn-16-2", 3, "digits", TOY_SIZE),
        ("svhn", "wrn-16-2", 3, "svhn", 32),
        ("big", "wrn-16-2", 1, "digits", 16),
    ):
        paths[name] = root / f"{name}.pt"
        save_model(build_model(arch, 10, channels), paths[name], dataset=dataset, image_size=size)
    return paths
