"""The processes of one distributed launch (``accelerate launch``, ``torchrun``, a multi-task cluster job): who
trains, who writes, who waits, and which devices the launch holds.

Under a launch of N processes the LLM stages train data-parallel through ``Trainer``; every other method (the ID
models, TIGER, the semantic IDs) has no data-parallel training here, so rank 0 trains it alone while the others
wait: N copies of one model would cost N times the devices for one result. Only rank 0 writes. The waits use a
gloo group of their own with a long timeout, since rank 0 may train TIGER for hours and a NCCL collective would
time out long before. Every rank must make the same calls here in the same order (they are collectives), so the
decisions that choose a path (skip a cell, run it) are rank 0's, shared with :func:`share_main`.

Outside a launch every function answers for one process without touching ``torch.distributed``.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")
# how long the other ranks wait for rank 0 to train and rank a method alone (TIGER on Amazon: hours on a GPU)
WAIT_TIMEOUT = timedelta(days=7)


def world_size() -> int:
    """Processes of a distributed launch (``accelerate launch`` / ``torchrun`` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch (torchrun / accelerate set RANK)."""
    return rank() == 0


@dataclass(frozen=True)
class Launch:
    """What one launch runs on: its processes, the nodes they run on, and the accelerator each process drives
    (all of them, on every node: GPU-hours count every device the launch holds)."""

    processes: int
    nodes: int
    gpus: tuple[str, ...]  # one name per process that drives a GPU, in rank order


@functools.cache
def _wait_group() -> Any:
    """Joins the launch's process group as ``Trainer`` will (accelerate's state: gloo on CPUs, NCCL on GPUs),
    and makes the gloo group with a long timeout that the waits use."""
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    # cpu=True on a machine without GPUs: accelerate's state of CPU processes (gloo), the one Trainer's use_cpu asks
    # for (with cpu=False there, accelerate calls the launch undistributed)
    PartialState(cpu=not torch.cuda.is_available())
    return dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order (``[value]`` outside a launch). Waits for every rank."""
    if world_size() == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value, group=_wait_group())
    return values


def share_main(compute: Callable[..., T], *args: Any) -> T:
    """Rank 0's ``compute(*args)``, on every rank (the others do not call it): one decision for all of them."""
    if world_size() == 1:
        return compute(*args)
    import torch.distributed as dist

    box = [compute(*args) if is_main_process() else None]
    dist.broadcast_object_list(box, src=0, group=_wait_group())
    return box[0]


def wait_for_everyone() -> None:
    """Waits until every rank gets here (no-op outside a launch)."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier(group=_wait_group())


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (building and caching what it makes), the others after it (loading it)."""
    if not is_main_process():
        wait_for_everyone()
    try:
        yield
    finally:
        if is_main_process():
            wait_for_everyone()


@functools.cache
def launch() -> Launch:
    """This launch's processes, nodes and GPUs, gathered from every rank once (call it on every rank before the
    first cell: the first call is a collective)."""
    if world_size() == 1:
        return Launch(1, 1, ())
    import torch
    from accelerate import PartialState

    _wait_group()  # accelerate's state places this process on its device (cuda:LOCAL_RANK)
    gpu = torch.cuda.get_device_name(PartialState().device) if torch.cuda.is_available() else None
    found = gather((socket.gethostname(), gpu))
    return Launch(len(found), len({host for host, _ in found}), tuple(name for _, name in found if name))
