"""Process groups for data-parallel runs under torchrun; a single process is the ordinary case."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class RunContext:
    """Who this process is. Outside torchrun: rank 0 of 1, nothing initialised."""

    device_name: str = "auto"
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def __enter__(self) -> "RunContext":
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        return self

    def __exit__(self, *exc) -> None:
        return None
