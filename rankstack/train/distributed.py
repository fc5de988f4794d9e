"""Helpers for multi-process data-parallel training launched with `torchrun`.

`init_distributed()` reads the environment variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and joins the process group: NCCL when CUDA is available, gloo on CPU. Without torchrun it returns
``(0, 1, 0)`` and every helper below degrades to a no-op, so the same script runs single-process unchanged.

Call `init_distributed()` before building the loader (the loader shards by rank) and the `Trainer`; call
`cleanup()` when the script is done.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import torch
import torch.distributed as dist

from rankstack.errors import ConfigError


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"The environment variable {name}={value!r} is not an integer; launch the script with torchrun or "
            "unset it."
        ) from None


def resolve_device(spec: str) -> torch.device:
    """`auto` is this process's GPU when CUDA is available, else the CPU; anything else is `torch.device(spec)`."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def init_distributed() -> tuple[int, int, int]:
    """Join the torchrun process group and return ``(rank, world_size, local_rank)``.

    Without torchrun (WORLD_SIZE unset or 1) nothing is initialised and ``(0, 1, 0)`` is returned. On CUDA the
    current device is set to ``cuda:local_rank`` so that NCCL collectives and `.cuda()` land on this process's GPU.
    Calling it again after the group exists just returns the same triple.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        return 0, 1, 0
    if not dist.is_available():
        raise ConfigError(
            "WORLD_SIZE > 1 asks for distributed training but this PyTorch build has no torch.distributed; "
            "install a build with distributed support or run a single process."
        )
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank, world_size, local_rank


def is_distributed() -> bool:
    """Whether a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Whether this is rank 0, the only rank that writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Return the element-wise mean of `tensor` over all ranks (a new tensor; the input is left unchanged).

    With NCCL the tensor must live on this rank's GPU.
    """
    if not is_distributed():
        return tensor.clone()
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / dist.get_world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank `src`'s `obj` on every rank (picklable objects only)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Return the list of every rank's `obj`, indexed by rank (picklable objects only)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    """Leave the process group if one was joined; safe to call when not distributed. Every rank calls it: the ranks
    first meet at a barrier, so that none tears down while another still works (rank 0 scores the test split after
    training), and unreachable objects that still hold the group (a DistributedDataParallel wrapper in a reference
    cycle) are collected now rather than at interpreter exit, where gloo's threads can abort the process."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        gc.collect()
        dist.destroy_process_group()
