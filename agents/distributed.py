"""Training on several processes with ``torchrun``: who this process is, and what they share.

``torchrun --nproc-per-node N -m train.selfplay ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`start` joins them into one process group
(NCCL between GPUs, gloo between CPUs) and gives each its device (``cuda:LOCAL_RANK``
on a GPU machine). Without ``torchrun`` it is one process and nothing is initialised.
The backbones use GroupNorm, not BatchNorm, so no SyncBatchNorm is needed: the processes'
models differ only by the games they play, and DDP averages their gradients.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from agents.trainer import select_device
from sketchenv.game import share_blocks

STOP_REASONS = (None, "max_steps", "time_budget", "callback", "SIGTERM", "SIGINT")
"""Why a run stops, least to most urgent; :meth:`Processes.agree` keeps the most urgent."""


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one, when not under torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 writes the run folder (logs, grids, checkpoints); the others only train."""
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Each value summed over all processes (unchanged with one process)."""
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, items: list) -> list:
        """Every process's ``items`` (picklable), concatenated in rank order, on every
        process (``items`` itself with one process)."""
        if self.world == 1:
            return items
        everyone: list[list] = [[] for _ in range(self.world)]
        dist.all_gather_object(everyone, items)
        return [item for part in everyone for item in part]

    def gather_rows(self, rows: Tensor, total: int) -> Tensor:
        """This process's ``rows`` (its :func:`~sketchenv.game.share_blocks` share of
        ``total``) and every other process's, concatenated in rank order; the gradient of
        each process's rows comes back to it (unchanged with one process)."""
        if self.world == 1:
            return rows
        return _GatherRows.apply(rows, total, self.rank, self.world)

    def agree(self, reason: str | None, device: torch.device) -> str | None:
        """The most urgent of every process's reason to stop (see ``STOP_REASONS``), so all
        stop after the same step (a signal or the time budget can reach them apart)."""
        if self.world == 1:
            return reason
        code = torch.tensor([STOP_REASONS.index(reason)], device=device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return STOP_REASONS[int(code)]


class _GatherRows(torch.autograd.Function):
    """All-gather of unequal shares of rows, with the backward that sums the processes'
    gradients (each computes its own loss on the gathered rows) and keeps its share."""

    @staticmethod
    def forward(ctx, rows: Tensor, total: int, rank: int, world: int) -> Tensor:
        sizes = [len(range(total)[share_blocks(total, r, world)]) for r in range(world)]
        padded = rows.new_zeros(max(sizes), *rows.shape[1:])
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        ctx.share = share_blocks(total, rank, world)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.share], None, None, None


def start(device_name: str = "auto") -> tuple[Processes, torch.device]:
    """Join the process group torchrun set up (if it did) and choose this process's device:
    ``--device auto`` is ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(), select_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world), device


def stop() -> None:
    """Leave the process group (when :func:`start` joined one) once every process is done:
    a process that left while rank 0 still wrote its files could abort in gloo's
    teardown. Call it after a run that ended normally; after an error, torchrun stops
    the other processes (a barrier then would wait for them in vain)."""
    if dist.is_initialized():
        gc.collect()  # a DDP model in a reference cycle must go while Python is whole
        dist.barrier()
        dist.destroy_process_group()
