"""The bank of synthesised images that DeepInversion, CMI and Fast train their students on.

The reference code (zju-vipa CMI and Fast-Datafree, `datafree/utils` `ImagePool`) writes every synthesised
image as its own PNG, never drops any, and rebuilds a DataLoader over the whole folder after each synthesised
batch. Here:

- **Compact**: images are kept as uint8 after denormalisation (the same quantisation the PNGs had), in memory
  on the run's device and on disk as one `.npy` shard per synthesised batch under `<run>/bank/`, (N, C, H, W).
- **Bounded**: at most `capacity` images are kept; when a batch would exceed it, the **oldest** images are
  dropped (first in, first out; a ring buffer in memory). A shard file is deleted once none of its images is
  kept, so the disk holds at most `capacity` images plus one partly dropped shard. FIFO rather than reservoir:
  the newest images come from the most trained generator/student pair, and the default capacity (the preset's
  whole run) keeps everything, which is the reference's behaviour.
- **Counted**: `synthesized` (all images ever added) and `kept`; both go to metrics rows and result.json.
- **Resumable**: `state_dict()` lists the shards kept and the sampler's position; `load_state_dict` rebuilds
  the ring from the shard files and deletes shards written after the checkpoint, so a resumed run sees the
  same images in the same order. Files of dropped shards are deleted when the next checkpoint's state is
  taken.
- **Sampling** as the reference's `DataLoader(shuffle=True, drop_last=False)` re-created after each added
  batch: a fresh permutation of the kept images, taken `batch_size` at a time (the last batch of a pass may be
  smaller), a new permutation when a pass ends, and a new pass after every `add`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from zskt.errors import ZsktError
from zskt.io import atomic_write_bytes

SHARD_DIGITS = 9


class ImageBank:
    def __init__(
        self, capacity: int, root: str | Path | None = None, device: str | torch.device = "cpu", seed: int = 0
    ):
        if capacity < 1:
            raise ZsktError(f"the image bank needs a capacity of at least 1 image, got {capacity}")
        self.capacity = int(capacity)
        self.root = Path(root) if root is not None else None
        self.device = torch.device(device)
        self.buffer: torch.Tensor | None = (
            None  # (capacity, C, H, W) uint8 ring; image g sits at g % capacity
        )
        self.synthesized = 0
        self.shards: list[
            dict
        ] = []  # {"file", "first", "count"}, oldest first: the files holding kept images
        self._dropped: list[str] = []  # files of shards no longer kept, deleted at the next state_dict()
        self.rng = torch.Generator().manual_seed(seed)
        self._order: torch.Tensor | None = None  # the current pass's permutation of slots
        self._position = 0

    @property
    def kept(self) -> int:
        return min(self.synthesized, self.capacity)

    def counts(self) -> dict:
        return {"images_synthesized": self.synthesized, "images_kept": self.kept}

    # -- adding --------------------------------------------------------------------------------------------
    def add(self, images: torch.Tensor) -> None:
        """Add a batch of uint8 (N, C, H, W) images (use `to_uint8` on [0, 1] images)."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("the image bank stores uint8 (N, C, H, W) batches")
        if self.synthesized == 0:
            self._clear_folder()
        images = images.detach()
        if self.buffer is None:
            self.buffer = torch.zeros(
                (self.capacity, *images.shape[1:]), dtype=torch.uint8, device=self.device
            )
        elif images.shape[1:] != self.buffer.shape[1:]:
            raise ValueError(
                f"image shape {tuple(images.shape[1:])} differs from the bank's "
                f"{tuple(self.buffer.shape[1:])}"
            )
        first = self.synthesized
        if self.root is not None:
            name = f"{first:0{SHARD_DIGITS}d}.npy"
            buf = io.BytesIO()
            np.save(buf, images.cpu().numpy())
            atomic_write_bytes(self.root / name, buf.getvalue())
            self.shards.append({"file": name, "first": first, "count": len(images)})
        self._place(images, first)
        self.synthesized += len(images)
        oldest_kept = self.synthesized - self.kept
        while self.shards and self.shards[0]["first"] + self.shards[0]["count"] <= oldest_kept:
            self._dropped.append(self.shards.pop(0)["file"])
        self._order, self._position = None, 0  # a new pass over the new contents (the reference's new loader)

    def _place(self, images: torch.Tensor, first: int) -> None:
        n = len(images)
        if n > self.capacity:  # only the newest `capacity` of the batch survive
            images, first, n = images[n - self.capacity :], first + n - self.capacity, self.capacity
        slots = (torch.arange(first, first + n) % self.capacity).to(self.device)
        self.buffer[slots] = images.to(self.device)

    # -- sampling ------------------------------------------------------------------------------------------
    def sample(self, batch_size: int) -> torch.Tensor:
        """The next uint8 batch of the current shuffled pass (smaller at the end of a pass)."""
        if self.kept == 0:
            raise RuntimeError("the image bank is empty")
        if self._order is None or self._position >= len(self._order):
            self._order = torch.randperm(self.kept, generator=self.rng)
            self._position = 0
        index = self._order[self._position : self._position + batch_size]
        self._position += len(index)
        return self.buffer[index.to(self.device)]

    def all_images(self) -> torch.Tensor:
        """The kept images, oldest first (for pictures and tests)."""
        if self.kept == 0 or self.buffer is None:
            return torch.zeros((0,), dtype=torch.uint8)
        slots = torch.arange(self.synthesized - self.kept, self.synthesized) % self.capacity
        return self.buffer[slots.to(self.device)]

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        self._delete_dropped()
        if self.root is not None:
            atomic_write_bytes(
                self.root / "index.json",
                json.dumps(
                    {"capacity": self.capacity, **self.counts(), "shards": self.shards}, indent=1
                ).encode(),
            )
        return {
            "capacity": self.capacity,
            "synthesized": self.synthesized,
            "shards": [dict(s) for s in self.shards],
            "rng": self.rng.get_state(),
            "order": self._order,
            "position": self._position,
            "shape": None if self.buffer is None else list(self.buffer.shape[1:]),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ZsktError(
                f"the checkpoint's image bank holds up to {state['capacity']} images, this run "
                f"{self.capacity}; resume with the same --bank-size"
            )
        self.synthesized = state["synthesized"]
        self.shards = [dict(s) for s in state["shards"]]
        self._dropped = []
        self.rng.set_state(state["rng"].cpu())
        self._order = state["order"].cpu() if state["order"] is not None else None
        self._position = state["position"]
        self.buffer = None
        if state["shape"] is not None:
            self.buffer = torch.zeros((self.capacity, *state["shape"]), dtype=torch.uint8, device=self.device)
        if self.root is None:
            if self.synthesized:
                raise ZsktError("cannot resume an in-memory image bank; the run folder holds no bank")
            return
        listed = {s["file"] for s in self.shards}
        for path in self.root.glob("*.npy"):
            if path.name not in listed:
                path.unlink()  # written after the checkpoint: the resumed run writes it again
        oldest_kept = self.synthesized - self.kept
        for shard in self.shards:
            path = self.root / shard["file"]
            if not path.is_file():
                raise ZsktError(
                    f"image bank shard {path} is missing; the run cannot be resumed, start it again "
                    "with --overwrite"
                )
            images = torch.from_numpy(np.load(path))
            skip = max(0, oldest_kept - shard["first"])
            self._place(images[skip:], shard["first"] + skip)

    def _delete_dropped(self) -> None:
        if self.root is not None:
            for name in self._dropped:
                (self.root / name).unlink(missing_ok=True)
        self._dropped = []

    def _clear_folder(self) -> None:
        if self.root is not None and self.root.is_dir():
            for path in self.root.glob("*.npy"):
                path.unlink()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> uint8, as the reference's `save_image_batch` (clamp, ×255, truncate)."""
    return (images.detach().float().clamp(0, 1) * 255).to(torch.uint8)
