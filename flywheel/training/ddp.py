"""The trainer's DDP plumbing: join torchrun's process group, all-reduce, agree on steps per epoch.

Under `torchrun` (env RANK/WORLD_SIZE) every rank runs the same loop on its own share of the data;
these helpers keep the ranks in step (the same steps per epoch, an early stop on every rank at
once) and reduce metrics over them. Outside torchrun they are no-ops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we initialized the process group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> Dist:
    """Join the torchrun process group (env RANK/WORLD_SIZE) if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return Dist()
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            device_id=device if device.type == "cuda" else None,
        )
        owns = True
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), owns_group=owns)


@contextmanager
def joined(device: torch.device) -> Iterator[Dist]:
    """`init`, and leave the process group at the end if this call set it up (an outer `joined`, e.g.
    both phases of a challenger's training, keeps one group for everything inside it)."""
    group = init(device)
    try:
        yield group
    finally:
        if group.owns_group:
            dist.destroy_process_group()


def all_reduce(t: torch.Tensor, ddp: Dist, op=None) -> torch.Tensor:
    if ddp.enabled:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def agreed_steps(n: int, ddp: Dist, device: torch.device) -> int:
    """The fewest steps per epoch over all ranks: DDP needs every rank to take the same steps."""
    t = torch.tensor([n], dtype=torch.int64, device=device)
    return int(all_reduce(t, ddp, dist.ReduceOp.MIN if ddp.enabled else None).item())


def next_batch_everywhere(it, ddp: Dist, device: torch.device):
    """The next batch, or None once any rank has run out (a rank alone would hang the all-reduce)."""
    batch = next(it, None)
    if ddp.enabled:
        have = torch.tensor([batch is not None], dtype=torch.int32, device=device)
        if all_reduce(have, ddp, dist.ReduceOp.MIN).item() == 0:
            return None
    return batch
