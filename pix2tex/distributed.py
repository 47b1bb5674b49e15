"""Training on several processes and machines: ``torchrun`` + DistributedDataParallel, nothing home-made.

``torchrun --nproc_per_node N -m pix2tex.train --config FILE`` starts N processes and sets RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous variables; :func:`init_from_env` turns them into a
process group (NCCL on GPUs, Gloo on CPUs).  A plain ``python -m pix2tex.train`` sees no WORLD_SIZE
and gets :data:`SINGLE`, for which every helper here is a no-op.

How the training loop uses it (pix2tex/train.py): every rank walks the same list of global batches
(a function of seed and epoch) and takes its own contiguous share of each (:meth:`Dist.rows`);
DDP averages the gradients; the loss of a share is normalized by the token count of the whole
global batch (:meth:`Dist.all_sum`), so N ranks make exactly the step one process makes on the
whole batch.  Only rank 0 writes files and validates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["Dist", "SINGLE", "DistributedError", "init_from_env"]


class DistributedError(RuntimeError):
    """The distributed setup is unusable; the message is one line."""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def rows(self, batch: int) -> slice:
        """This rank's contiguous share of a global batch of ``batch`` rows (a multiple of world)."""
        size = batch // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def all_sum(self, value: float, device: torch.device) -> float:
        """``value`` summed over all ranks."""
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def sum_tensor(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over all ranks, as a tensor on its device (no host sync on one process)."""
        if not self.active:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is set on any rank (how all ranks agree to stop together)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Dist()


def init_from_env(device_type: str, timeout_s: float) -> Dist:
    """The process group torchrun describes in the environment, or :data:`SINGLE` without one.

    ``timeout_s`` bounds every collective: a rank that dies makes the others fail with an error
    after at most this long instead of waiting forever.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed support")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise DistributedError("the NCCL backend is not available in this PyTorch build (GPUs need it)")
    if backend == "gloo" and not dist.is_gloo_available():
        raise DistributedError("the Gloo backend is not available in this PyTorch build (CPU training needs it)")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(f"cannot join the process group ({backend}, rank {rank} of {world}): {first}") from None
    return Dist(rank=rank, world=world, local_rank=local_rank)
