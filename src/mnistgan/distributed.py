"""Training on several processes with PyTorch's DistributedDataParallel, launched by torchrun.

`torchrun --nproc_per_node=N -m mnistgan train ...` starts N copies of the trainer; torchrun
sets RANK, LOCAL_RANK and WORLD_SIZE, and `join()` connects them (gloo on CPU, nccl on CUDA).
Each process trains on its own slice of every global batch, DDP averages the gradients, and
only rank 0 writes files. Without torchrun, WORLD_SIZE is unset and everything here reduces
to a single process. docs/distributed.md has the batch-size and learning-rate rules.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"  # where collectives' tensors live: cuda for nccl, cpu for gloo

    @property
    def main(self) -> bool:
        """Rank 0 writes the run folder and shows the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> slice:
        """This rank's slice of a global batch of n * size items."""
        return slice(self.rank * n, (self.rank + 1) * n)


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun set up (if any); returns the world and this rank's
    device (cuda:LOCAL_RANK on GPUs)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        raise UserError("WORLD_SIZE is set but RANK/LOCAL_RANK are not: launch with "
                        "torchrun --nproc_per_node=N -m mnistgan train ...") from None
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if device.type == "mps":
        raise UserError("distributed training runs on cpu (gloo) or cuda (nccl), not mps: "
                        "use --device cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, "cuda" if device.type == "cuda" else "cpu"), device


def leave() -> bool:
    """Close the process group at the end of a distributed run; whether there was one."""
    if not dist.is_initialized():
        return False
    dist.destroy_process_group()
    return True


def end_process(code: int) -> NoReturn:
    """Exit a rank at once, skipping Python's shutdown. DDP's reducer keeps the gloo group
    alive past destroy_process_group, and a gloo worker thread still letting go of the last
    step's tensors when the interpreter shuts down aborts the process ("terminate called
    without an active exception"), which fails the whole torchrun job after a run that
    finished: seen on a loaded 2-core host, where rank 1 exits while rank 0 draws its plots."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wrap(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """`module` under DDP when there are several processes (rank 0's weights are broadcast
    to all at this point), else `module` itself."""
    if not world.distributed:
        return module
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


# The registry of learning-rate rules (train.lr_scaling): processes -> factor.
LR_SCALING = {"none": lambda n: 1.0, "linear": float, "sqrt": lambda n: n**0.5}


def lr_scale(rule: str, processes: int) -> float:
    """The learning-rate factor for `processes` ranks (each at the config's batch size)."""
    return LR_SCALING[rule](processes)


def any_rank(world: World, *flags: bool) -> list[bool]:
    """Each flag, true if it is true on any rank: stop decisions that every rank must share
    (a signal reached one process, one process ran out of time)."""
    if not world.distributed:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather(world: World, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape and dtype on all), in rank order, on every rank."""
    if not world.distributed:
        return [tensor]
    local = tensor.to(world.device)
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local)
    return [p.to(tensor.device) for p in parts]


def own(world: World, per_rank: list[torch.Tensor]) -> torch.Tensor:
    """This rank's entry of a `gather`ed list (one entry: the same for every rank, as in
    checkpoints written before 2026-12-01)."""
    if len(per_rank) == 1:
        return per_rank[0]
    if len(per_rank) != world.size:
        raise ValueError(f"states of {len(per_rank)} ranks for {world.size}")
    return per_rank[world.rank]


def mean_over_ranks(world: World, tensor: torch.Tensor) -> torch.Tensor:
    """The average of `tensor` over all ranks (a copy; the input is left as it is)."""
    if not world.distributed:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / world.size
