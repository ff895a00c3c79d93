"""DistributedDataParallel plumbing: process-group setup from torchrun's environment, and reductions.

Under ``torchrun --nproc-per-node N [--nnodes M …] -m boneseg train …`` the variables ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` are set; `setup` then joins the group (NCCL on CUDA, gloo on CPU) with a
collective timeout, so a dead rank makes the others fail instead of hanging forever. Without them,
everything here is a no-op on a single process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from boneseg.errors import BonesegError, UsageError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created: bool = False  # `setup` created the process group (`cleanup` destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else CPU; ``cuda`` -> this rank's GPU
    (`local_rank`, default ``$LOCAL_RANK``); ``cuda:N`` -> GPU N.

    Raises:
        UsageError: an unknown device, CUDA asked for without a GPU, or a GPU index out of range.
    """
    name = str(name).lower()
    if name not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise UsageError(f"--device {name!r}: expected auto, cpu or cuda[:N]")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device available (use --device cpu or auto)")
    count = torch.cuda.device_count()
    if name.startswith("cuda:"):
        if int(name[5:]) >= count:
            raise UsageError(f"--device {name}: only {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
        return torch.device(name)
    local = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    return torch.device("cuda", local % count)


def setup(device: str | torch.device = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Resolve this process's device and join the torchrun process group if there is one (NCCL on CUDA,
    gloo on CPU); returns this process's `DistInfo`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    created = world > 1 and not dist.is_initialized()
    if created:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_minutes))
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local, dev, created)


def cleanup(info: DistInfo) -> None:
    """Leave the process group when `setup` joined it."""
    if info.created and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(objects: list, info: DistInfo) -> list:
    """Rank 0's picklable `objects` (a list, replaced in place) on every rank; also a barrier."""
    if info.enabled:
        dist.broadcast_object_list(objects, src=0)
    return objects


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm running statistics …) in `module` on every rank, in place: without
    SyncBatchNorm each rank's last forward updates them from its own images."""
    if info.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `tensor` over ranks in place (no-op on one process); returns it."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's `tensor` stacked in rank order (shape ``(world_size, *tensor.shape)``) on every rank."""
    if not info.enabled:
        return tensor.unsqueeze(0).clone()
    parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def all_reduce_min(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Minimum of `tensor` over ranks in place (no-op on one process); returns it."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when `flag` is true on any rank (used so every rank stops at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class RankFailure(BonesegError):
    """A collective failed because another rank crashed, was killed or stopped responding."""


_PEER_SIGNS = (
    "connection closed by peer",
    "connection reset",
    "timed out",
    "timeout",
    "broken pipe",
    "nccl",
    "gloo",
    "socket",
)


def as_rank_failure(
    exc: BaseException, info: DistInfo, then: str = "restart the same command with --resume"
) -> RankFailure | None:
    """A clear `RankFailure` for a collective that failed under DDP (None for other errors); the line
    ends with what to do `then`."""
    if not info.enabled or isinstance(exc, BonesegError):  # this rank's own error, already clear
        return None
    text = str(exc)
    dist_error = getattr(dist, "DistError", ())
    if not (isinstance(exc, dist_error) or any(s in text.lower() for s in _PEER_SIGNS)):
        return None
    detail = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    detail = detail.split("] ", 1)[-1][:160]
    return RankFailure(
        f"another rank failed or stopped responding ({detail}); see its error above, fix the cause and {then}"
    )
