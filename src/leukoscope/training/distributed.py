"""Process layout: one CPU/GPU process, or PyTorch DDP when launched by ``torchrun``.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; each process then drives one GPU
(NCCL) or, without GPUs, one CPU process (gloo). Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

INIT_TIMEOUT = timedelta(hours=2)
"""Long enough for rank 0 to build the caches while the other ranks wait at a barrier."""


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank (the other ranks pass placeholders of equal length),
        so that decisions such as early stopping are taken once, identically everywhere."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()


@contextmanager
def distributed_context() -> Iterator[DistContext]:
    """Join the torchrun process group if there is one; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield DistContext(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group(backend, timeout=INIT_TIMEOUT)
    try:
        yield DistContext(dist.get_rank(), dist.get_world_size(), device)
    finally:
        if owner:
            dist.destroy_process_group()
