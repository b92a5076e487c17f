"""torch.distributed for the job under torchrun / accelerate launch: one process per GPU (or CPU process with gloo),
DDP through the Trainer; only rank 0 writes the run folder, the others help train and generate."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as td

from job import runtime

log = logging.getLogger(__name__)
T = TypeVar("T")
SETTLE_S = 1.0  # see cleanup()


def enabled() -> bool:
    return runtime.distributed()


def setup() -> None:
    """Join the process group (NCCL with gloo beside it on GPUs, gloo on CPUs) and bind this rank's GPU, before any
    model loads."""
    if not enabled() or td.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(runtime.local_rank())
        # NCCL for the model's CUDA tensors, gloo for the job's own small CPU collectives (token counts, the stop
        # flag, the objects gathered after generation): NCCL alone rejects CPU tensors
        backend = "cuda:nccl,cpu:gloo"
    else:
        backend = "gloo"
    # generous: rank 0 alone scores the base model on its shard while the others wait for the gather
    td.init_process_group(backend=backend, timeout=timedelta(hours=2))
    log.info("rank %d of %d joined the %s process group", runtime.rank(), runtime.world_size(), backend)


def barrier() -> None:
    if enabled() and td.is_initialized():
        td.barrier()


def broadcast(value: T) -> T:
    """Rank 0's value on every rank."""
    if not (enabled() and td.is_initialized()):
        return value
    box = [value]
    td.broadcast_object_list(box, src=0)
    return box[0]


def shard(n: int) -> list[int]:
    """The indices of n items this rank handles (round-robin, so long and short items spread evenly)."""
    if not enabled():
        return list(range(n))
    return list(range(runtime.rank(), n, runtime.world_size()))


def gather_in_order(n: int, mine: dict[int, Any]) -> list[Any]:
    """Every rank's {index: item} merged into one list in the original order, on every rank."""
    if not (enabled() and td.is_initialized()):
        return [mine[i] for i in range(n)]
    parts: list[dict[int, Any] | None] = [None] * runtime.world_size()
    td.all_gather_object(parts, mine)
    merged: dict[int, Any] = {}
    for part in parts:
        merged.update(part or {})
    return [merged[i] for i in range(n)]


def sum_all(*values: float) -> list[float]:
    """Element-wise sum over ranks."""
    if not (enabled() and td.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    td.all_reduce(t)
    return t.tolist()


def max_all(value: float) -> float:
    if not (enabled() and td.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return float(t.item())


def cleanup() -> None:
    """Leave the process group together, every rank at the end of its work.

    gloo's worker threads release each finished collective's tensors themselves, which takes the GIL, and the
    group's destructor (run when the last reference to it goes, e.g. with DDP's reducer) joins those threads while
    holding the GIL: a worker still releasing then deadlocks the process at exit. So every rank meets at a barrier
    (the last collective), then sleeps with the GIL released so the workers finish releasing, then leaves."""
    if enabled() and td.is_initialized():
        td.barrier()
        time.sleep(SETTLE_S)
        td.destroy_process_group()
