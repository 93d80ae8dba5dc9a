"""Batches from device-resident uint8 images: seeded per-epoch shuffling, normalisation and batched
pad-crop-flip augmentation on the device (no DataLoader workers), and the "M images per class" subsets of
SPEC §4."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zskt.data.records import ImageSplit
from zskt.errors import ZsktError

PAD = 4  # RandomCrop(32, padding=4) in the authors' CIFAR-10 transform (SPEC §4)


def normalize(
    images: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (x / 255 - mean) / std per channel, on the images' device (ToTensor +
    Normalize)."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    if mean.shape[1] != images.shape[1] or std.shape[1] != images.shape[1]:
        raise ValueError(
            f"{images.shape[1]}-channel images with {mean.shape[1]} means and {std.shape[1]} stds"
        )
    return (images.to(torch.float32) / 255.0 - mean) / std


def pad_crop_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = PAD
) -> torch.Tensor:
    """Per-sample random crop of the zero-padded images, then optional horizontal flip, as one gather.

    images (B, C, H, W) of any dtype; offsets (B, 2) int64 in [0, 2 * pad] as (row, col) of the crop window's
    corner in the padded image; flips (B,) bool. Padding is zero in the images' own units, so on uint8 pixels
    it is black, as torchvision pads the PIL image before Normalize.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))  # (B, C, H + 2 pad, W + 2 pad)
    rows = offsets[:, :1] + torch.arange(height, device=images.device)  # (B, H)
    steps = torch.arange(width, device=images.device)
    # A flipped crop reads its window's columns right to left; folding that into the index costs nothing.
    cols = offsets[:, 1:] + torch.where(flips[:, None], width - 1 - steps, steps)  # (B, W)
    sample = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
    channel = torch.arange(channels, device=images.device).view(1, channels, 1, 1)
    return padded[sample, channel, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) into one well-spread 64-bit seed, so (seed 0, epoch 1) and
    # (seed 1, epoch 0) get unrelated streams, and any epoch can be replayed from its number alone (resume
    # needs no RNG state).
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state))


class DeviceLoader:
    """Iterates (images float32 (B, C, H, W), labels int64 (B,)) on `device`, one pass per epoch.

    All random numbers of an epoch (permutation, crop offsets, flips) come from a CPU generator seeded by
    (seed, epoch) and are then moved, so CPU and CUDA runs see the same draws. `epoch` advances when a pass
    completes; state_dict() holds only it. drop_last=False keeps the last partial batch, as the authors'
    SubsetRandomSampler loaders do.
    """

    def __init__(
        self,
        split: ImageSplit,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        augment: bool = False,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        indices: torch.Tensor | None = None,
    ):
        if batch_size < 1:
            raise ZsktError(f"batch size must be at least 1, got {batch_size}")
        if seed < 0:
            raise ZsktError(f"seed must be a non-negative integer, got {seed}")
        images, labels = split.images, split.labels
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"{images.shape[1]}-channel images with {len(mean)} means and {len(std)} stds")
        if indices is not None:
            # Select before moving, so only the subset travels to (and occupies) the device.
            indices = torch.as_tensor(indices, dtype=torch.int64).to(images.device)
            images, labels = images[indices], labels[indices]
        self.device = torch.device(device)
        self.images = images.to(
            self.device
        )  # uint8 (N, C, H, W): 4x smaller than float, normalised per batch
        self.labels = labels.to(self.device, torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.batch_size = batch_size
        self.augment, self.shuffle, self.drop_last, self.seed = augment, shuffle, drop_last, seed
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_samples
        generator = _epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if self.augment:
            # Drawn per position in the epoch's order, after the permutation, all at once.
            offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator).to(self.device)
            flips = (torch.rand(n, generator=generator) < 0.5).to(self.device)
        order = order.to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = order[start : start + self.batch_size]
            images = self.images.index_select(0, batch)
            if self.augment:
                # Crop the raw pixels before normalising: zero padding is then black, as in torchvision.
                images = pad_crop_flip(
                    images, offsets[start : start + len(batch)], flips[start : start + len(batch)]
                )
            yield normalize(images, self.mean, self.std), self.labels.index_select(0, batch)
        self.epoch += 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])


def select_per_class(
    labels: torch.Tensor, images_per_class: int | None, seed: int, num_classes: int | None = None
) -> torch.Tensor:
    """Sorted int64 indices of exactly `images_per_class` images of each class (SPEC §4); -1 or None: all.

    As the authors' get_indices_for_n_images_per_class: visit the split in a random order drawn from `seed`
    and keep the first M images of each class, so each seed gets its own subset.
    """
    labels = torch.as_tensor(labels).to("cpu", torch.int64)
    if images_per_class is None or images_per_class == -1:
        return torch.arange(len(labels))
    if images_per_class < 1:
        raise ZsktError(
            f"images per class (M) must be a positive integer or -1 for all, got {images_per_class}"
        )
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    counts = torch.bincount(labels, minlength=num_classes)
    short = [(c, int(counts[c])) for c in range(num_classes) if counts[c] < images_per_class]
    if short:
        listed = ", ".join(f"class {c} has {n}" for c, n in short)
        raise ZsktError(
            f"cannot take {images_per_class} images per class: {listed}; use a smaller images_per_class (M)"
        )
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    visited = labels[order]
    # Rank of each visited image among earlier visits of its class: a stable sort groups the classes while
    # keeping visit order, and subtracting each class's start gives the rank. Rank < M = "first M of its
    # class".
    by_class = torch.sort(visited, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(labels)) - starts[visited[by_class]]
    chosen = order[by_class[rank < images_per_class]]
    return torch.sort(chosen).values
