"""Data-parallel training under torchrun: one process per device, gradients averaged by DistributedDataParallel.

Outside torchrun (no WORLD_SIZE in the environment) everything here is a no-op and there is one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from data.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, global_batch: int, where: str = "batch_size") -> slice:
        """This rank's contiguous share of a global batch (every rank gets the same number of rows)."""
        if global_batch % self.world:
            raise InputError(where, f"the global batch {global_batch} must be divisible by the number of "
                                           f"processes ({self.world}); change batch_size or --nproc_per_node")
        share = global_batch // self.world
        return slice(self.rank * share, (self.rank + 1) * share)


def ranks() -> Ranks:
    """The process group's (rank, world size) when one is initialised, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def resolve_device(name: str, where: str = "device") -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when present) -> torch.device; one clear error for an unknown name
    or for CUDA asked for on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(where, f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(where, f"{name!r} requested but CUDA is not available here; use {where}=cpu")
    return device


def init_from_env(device: str) -> Ranks:
    """Join torchrun's process group (env:// rendezvous; multi-node works the same); NCCL for CUDA, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return ranks()
    cuda = resolve_device(device).type == "cuda"  # one clear error when CUDA is asked for and absent
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" now means this process's GPU
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return ranks()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if ranks().world > 1:
        dist.barrier()


def on_main_then_sync(fn: Callable[[], T]) -> Optional[T]:
    """Run fn on rank 0 only (file writes, grids, held-out metrics), then let every rank go on together."""
    result = fn() if ranks().is_main else None
    barrier()
    return result


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """A detached scalar averaged over processes (the global batch's loss; every rank gets the same number)."""
    value = value.detach().float().clone()
    if ranks().world > 1:
        dist.all_reduce(value)
        value /= ranks().world
    return value


class StepLoss(nn.Module):
    """The stage's loss function behind forward(): DistributedDataParallel syncs gradients only for calls
    through its forward, and our loss functions call submodules (encode/decode, UNet + ControlNet) directly."""

    def __init__(self, model: nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.model = model  # registered, so DDP sees (and broadcasts) its parameters
        self.loss_fn = loss_fn

    def forward(self, idx: torch.Tensor, draws, step: int):
        return self.loss_fn(idx, draws, step)


def wrap_for_ranks(model: nn.Module, loss_fn: Callable, device: torch.device, find_unused: bool = False) -> nn.Module:
    """StepLoss, in DistributedDataParallel when there are several processes (rank 0's weights are broadcast)."""
    step_loss = StepLoss(model, loss_fn)
    if ranks().world == 1:
        return step_loss
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(step_loss, device_ids=device_ids, find_unused_parameters=find_unused)
