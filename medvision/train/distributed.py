"""Multi-process training helpers (PyTorch DDP launched by torchrun; gloo on CPU, NCCL on CUDA).

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) everything here degrades to a single
process, so the trainer calls these unconditionally.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from medvision.precision import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def setup(device_preference: str = "auto", timeout_min: float = 60.0) -> DistContext:
    """Join the process group when launched by torchrun; return this process's rank and device."""
    if not launched_by_torchrun():
        return DistContext(device=resolve_device(device_preference))
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Long timeout: rank 0 may prepare a store or write checkpoints while the others wait.
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
        logger.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """In-place sum over ranks (no-op on one process); returns the tensor."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if ``flag`` is True on any rank (used to stop all ranks at the same step)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_object(obj: object, ctx: DistContext, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (small picklable values: flags, paths, error text)."""
    if not ctx.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
