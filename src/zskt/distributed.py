"""Data-parallel runs under torchrun: process groups, batch shards, exact gradient averaging.

Outside torchrun a run is rank 0 of 1 and nothing here does any work. Under `torchrun --nproc-per-node N`,
every rank holds the same parameters; the global batch (128 by default, the paper's) is split across ranks;
each rank scales its loss by its share of the global batch and gradients are **summed**, which gives exactly
the gradient of the global-batch mean even when the batch does not divide evenly (docs/distributed.md).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

import torch
import torch.distributed as dist

from zskt.errors import ZsktError


@dataclass
class RunContext:
    """Who this process is. Outside torchrun: rank 0 of 1, nothing initialised, `device` left to the
    caller."""

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

    def __enter__(self) -> Self:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size <= 1:
            return self
        want_cuda = self.device_name.startswith("cuda") or (
            self.device_name == "auto" and torch.cuda.is_available()
        )
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

    def __exit__(self, exc_type, exc, tb) -> None:
        if not (self._owns_group and dist.is_initialized()):
            return
        if exc_type is not None:
            # Leave teardown to the process exit: a peer may never reach a barrier (torchrun stops all).
            return
        # Rank 0 finishes later than the others (model, result.json); without this barrier a rank that tore
        # its group down while rank 0 still held connections could abort in gloo's threads at exit
        # ("terminate called without an active exception", SIGABRT) after a successful run.
        dist.barrier()
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch_size: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """[start, stop) of this rank's part of a global batch: the first `batch_size % world_size` ranks take one
    sample more, so parts differ by at most one and cover the batch exactly once."""
    if rank is None or world_size is None:
        rank, world_size = world()
    base, extra = divmod(batch_size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def sum_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (sum) the gradients of `parameters` in one flat buffer; no-op in a single process.

    Every rank must send the same layout, so a parameter without a gradient on this rank (a rank whose shard
    of a batch was empty) contributes zeros: its gradient is created as zeros first."""
    if world()[1] <= 1:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not params:
        return
    _all_reduce_in_place([p.grad for p in params])


def _all_reduce_in_place(tensors: list[torch.Tensor], average: bool = False) -> None:
    # One collective per dtype: a flat buffer of each group, summed, then copied back (layouts preserved).
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        if average:
            flat /= world()[1]
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def average_buffers(module: torch.nn.Module) -> None:
    """Average floating-point buffers (BN running statistics) over ranks, so every rank evaluates and saves
    the same network; no-op in a single process."""
    if world()[1] <= 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if buffers:
        _all_reduce_in_place(buffers, average=True)


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (the start of a run: every rank then holds exactly the
    same network, whatever its own initialisation drew); no-op in a single process."""
    if world()[1] <= 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def fingerprint(*modules: torch.nn.Module) -> str:
    """A digest of the exact bytes of every parameter and buffer (SHA-256), for checking that ranks agree."""
    import hashlib

    h = hashlib.sha256()
    for module in modules:
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            h.update(name.encode())
            h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def check_in_sync(*modules: torch.nn.Module) -> dict:
    """At the end of a distributed run: every rank's fingerprint of `modules`, compared on every rank. Returns
    what result.json records ({} in a single process); raises if the ranks ended with different weights."""
    size = world()[1]
    if size <= 1:
        return {}
    prints = [None] * size
    dist.all_gather_object(prints, fingerprint(*modules))
    if len(set(prints)) != 1:
        differ = [r for r, p in enumerate(prints) if p != prints[0]]
        raise ZsktError(
            f"ranks {differ} ended with weights different from rank 0's; this is a bug in zskt's "
            "data-parallel code, please report it (the single-process run is unaffected)"
        )
    return {"world_size": size, "backend": dist.get_backend(), "weights_identical_across_ranks": True}


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place) and return it; identity in a single process."""
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (identity in a single process)."""
    if world()[1] <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass(frozen=True)
class Shard:
    """This rank's part of one global batch of `size` samples: [start, stop) and the factor `share` =
    local / global that makes summed gradients the global-batch mean's. In a single process the whole batch,
    share 1, and `reduce` does nothing."""

    size: int
    start: int
    stop: int
    world_size: int

    @classmethod
    def of(cls, size: int) -> Shard:
        rank, world_size = world()
        start, stop = shard(size, rank, world_size)
        return cls(size, start, stop, world_size)

    @property
    def local(self) -> int:
        return self.stop - self.start

    @property
    def share(self) -> float:
        return self.local / self.size if self.world_size > 1 else 1.0

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global-batch tensor (the tensor itself in a single process)."""
        return tensor if self.world_size <= 1 else tensor[self.start : self.stop]

    def reduce(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum the gradients over ranks (each already scaled by `share`): the global batch's gradient."""
        if self.world_size > 1:
            sum_gradients(parameters)


def check_sync_batchnorm(enabled: bool, device: torch.device) -> None:
    """Refuse `--sync-bn` off CUDA. The CLI calls it on every rank before the process group is made, so the
    refusal never waits on a peer (a rank that fails while another is inside a collective could otherwise
    leave that one to gloo's timeout or a traceback of its own, depending on timing)."""
    if enabled and device.type != "cuda":
        raise ZsktError(
            "--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); on CPU leave it off: "
            "each rank then normalises over its own shard of the batch (docs/distributed.md)"
        )


def use_sync_batchnorm(module: torch.nn.Module, enabled: bool, device: torch.device) -> torch.nn.Module:
    """`--sync-bn`: under torchrun, BatchNorm layers normalise over the global batch (PyTorch's
    SyncBatchNorm), as a single process does; converted in place (state_dict keys unchanged). Off, or in a
    single process, the module is returned as it is. SyncBatchNorm runs on GPUs only: asked for on CPU it is
    refused."""
    if not enabled or world()[1] <= 1:
        return module
    check_sync_batchnorm(enabled, device)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if converted is not module:
        raise ZsktError("--sync-bn: a bare BatchNorm module cannot be converted in place")
    return module
