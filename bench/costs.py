"""What a run costs: wall time and GPU-hours per stage, hardware, and inference latency per user.

GPU-hours are ``wall seconds x GPUs in use / 3600``; on a CPU-only machine they are 0 and the wall
time is the cost. Latency is measured after a warm-up batch, with device synchronisation, at the
study's batch size of 16 users.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

LATENCY_BATCH_SIZE = 16


def _torch():
    """torch if it is already imported (never imported just to ask about GPUs)."""
    return sys.modules.get("torch")


def gpu_count() -> int:
    torch = _torch()
    return torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0


def synchronize() -> None:
    """Waits for queued GPU work so that a timer measures it."""
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    """The machine a result was measured on, with a short label for tables."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict = {"cpu": cpu_name(), "cpu_cores": cores, "gpus": []}
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if info["gpus"]:
        info["label"] = f"{len(info['gpus'])}x {info['gpus'][0]}"
    else:
        info["label"] = f"CPU {cores} cores"
    return info


@dataclass
class StageCost:
    name: str
    wall_s: float = 0.0
    gpus: int = 0
    gpu_hours: float = 0.0
    peak_gpu_mem_gb: float | None = None
    # Part of wall_s and gpu_hours spent by earlier processes of this run that were interrupted and resumed
    carried_wall_s: float = 0.0
    carried_gpu_hours: float = 0.0
    extra: dict = field(default_factory=dict)


class CostMeter:
    """Collects the stage costs of one run."""

    def __init__(self) -> None:
        self.stages: list[StageCost] = []
        self._open: list[StageCost] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[StageCost]:
        """Times a stage; yields its record so the stage can add extra numbers (tokens/s, ...)."""
        torch = _torch()
        gpus = gpu_count()
        if gpus:
            torch.cuda.reset_peak_memory_stats()
        record = StageCost(name, gpus=gpus)
        synchronize()
        start = time.perf_counter()
        self._open.append(record)
        try:
            yield record
        finally:
            synchronize()
            self._open.remove(record)
            elapsed = time.perf_counter() - start
            record.wall_s = elapsed + record.carried_wall_s
            record.gpu_hours = elapsed * gpus / 3600 + record.carried_gpu_hours
            if gpus:
                record.peak_gpu_mem_gb = torch.cuda.max_memory_allocated() / 2**30
            self.stages.append(record)

    def carry_over(self, wall_s: float, gpu_hours: float) -> None:
        """Adds time spent before a resume (read from a checkpoint) to every stage open now."""
        for record in self._open:
            record.carried_wall_s += wall_s
            record.carried_gpu_hours += gpu_hours

    def as_records(self) -> list[dict]:
        return [asdict(stage) for stage in self.stages]


def timed_batches(run_batch: Callable[[slice], None], n: int, batch_size: int = LATENCY_BATCH_SIZE,
                  on_batch: Callable[[int], None] | None = None) -> dict:
    """Runs ``run_batch`` over ``n`` users in batches; the first batch is a warm-up, not timed.

    Returns ``{"ms_per_user", "users_timed", "batch_size"}`` (``ms_per_user`` is None when all
    users fit in the warm-up batch).
    """
    timed_s = 0.0
    timed_users = 0
    for batch_number, start in enumerate(range(0, n, batch_size)):
        window = slice(start, min(start + batch_size, n))
        synchronize()
        began = time.perf_counter()
        run_batch(window)
        synchronize()
        if batch_number > 0:
            timed_s += time.perf_counter() - began
            timed_users += window.stop - window.start
        if on_batch is not None:
            on_batch(window.stop - window.start)
    ms = 1000 * timed_s / timed_users if timed_users else None
    return {"ms_per_user": ms, "users_timed": timed_users, "batch_size": batch_size}
