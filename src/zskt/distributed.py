"""Data-parallel runs under torchrun: process groups, batch shards, exact gradient averaging.

Outside torchrun a run is rank 0 of 1 and nothing here does any work. Under `torchrun --nproc-per-node N`,
every rank holds the same parameters; the global batch (128 by default, the paper's) is split across ranks;
each rank scales its loss by its share of the global batch and gradients are **summed**, which gives exactly
the gradient of the global-batch mean even when the batch does not divide evenly (docs/distributed.md).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist

from zskt.errors import ZsktError


@dataclass
class RunContext:
    """Who this process is. Outside torchrun: rank 0 of 1, nothing initialised, `device` left to the caller."""

    device_name: str = "auto"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    _owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def __enter__(self) -> "RunContext":
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size <= 1:
            return self
        want_cuda = self.device_name.startswith("cuda") or (self.device_name == "auto" and torch.cuda.is_available())
        if want_cuda:
            if not torch.cuda.is_available():
                raise ZsktError("--device cuda under torchrun, but CUDA is not available; use --device cpu")
            self.device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
            backend = "nccl"
        else:
            self.device = torch.device("cpu")
            backend = "gloo"
        if not dist.is_initialized():
            # A bounded timeout: if a peer dies outside a collective, the others fail instead of hanging
            # (torchrun also stops every rank as soon as one exits with an error).
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
            self._owns_group = True
        return self

    def __exit__(self, *exc) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def shard(batch_size: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """[start, stop) of this rank's part of a global batch: the first `batch_size % world_size` ranks take one
    sample more, so parts differ by at most one and cover the batch exactly once."""
    if rank is None or world_size is None:
        rank, world_size = world()
    base, extra = divmod(batch_size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def local_batch_size(batch_size: int) -> int:
    start, stop = shard(batch_size)
    return stop - start


def loss_share(local: int, batch_size: int) -> float:
    """Factor for a rank's mean loss so that summed gradients are the global-batch mean's: local / global."""
    return local / batch_size if world()[1] > 1 else 1.0


def sum_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (sum) the gradients of `parameters` in one flat buffer; no-op in a single process."""
    if world()[1] <= 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BN running statistics) over ranks, so every rank evaluates and saves
    the same network; no-op in a single process."""
    if world()[1] <= 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat)
    flat /= world()[1]
    offset = 0
    for b in buffers:
        n = b.numel()
        b.copy_(flat[offset:offset + n].view_as(b))
        offset += n


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place) and return it; identity in a single process."""
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (identity in a single process)."""
    if world()[1] <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def derived_seed(seed: int, *keys: int) -> int:
    """A seed for (run seed, keys...), e.g. (seed, pseudo batch, rank): independent streams that a resumed
    run can recreate from the counters alone, whatever the number of ranks before and after."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
