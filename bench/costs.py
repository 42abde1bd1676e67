"""What a run costs: wall time and GPU-hours per stage, hardware, and inference latency per user.

GPU-hours are ``wall seconds x GPUs in use / 3600`` (every GPU of every node under a distributed launch:
:func:`devices_in_use`); on a CPU-only machine they are 0 and the wall time is the cost. Latency is measured
after a warm-up batch, with device synchronisation, at the study's batch size of 16 users.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CPU_INFO_FILE = Path("/proc/cpuinfo")
BF16_RATE_VARIABLE = "GRBENCH_BF16_MATMUL_TFLOPS"  # a rate measured alone on this GPU (bf16_matmul_tflops)
LATENCY_BATCH_SIZE = 16
THROUGHPUT_BATCH_SIZES = (16, 64, 128)  # users per decoding batch tried for the best throughput (GPU only)


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


def cpu_info(field: str) -> str | None:
    """The first ``field : value`` of :data:`CPU_INFO_FILE` (Linux's ``/proc/cpuinfo``), or None without the
    file or the field."""
    try:
        with CPU_INFO_FILE.open(encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return cpu_info("model name") or platform.processor() or platform.machine()


def hardware() -> dict:
    """The machine a result was measured on, with a short label for tables: ``cpu_cores`` the cores the process
    may run on, ``torch_threads`` the threads torch computes with (``OMP_NUM_THREADS=1`` on a 2-core machine
    computes on one core, and a CPU label says one). A distributed launch adds its ``processes`` and ``nodes``, and
    its ``gpus`` are every rank's, on every node."""
    from bench.distributed import launch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict = {"cpu": cpu_name(), "cpu_cores": cores, "gpus": []}
    torch = _torch()
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    current = launch()
    if current.processes > 1:
        info.update(processes=current.processes, nodes=current.nodes, gpus=list(current.gpus))
    if info["gpus"]:
        info["label"] = f"{len(info['gpus'])}x {info['gpus'][0]}"
    else:
        info["label"] = cpu_label(computing_cores(info))
    if current.processes > 1:
        nodes = f" on {current.nodes} nodes" if current.nodes > 1 else ""
        info["label"] += f", {current.processes} processes{nodes}"
    return info


def devices_in_use() -> int:
    """The GPUs a run holds, which its GPU-hours count: under a distributed launch every rank's GPU on every node
    (the ranks that wait while rank 0 trains a method alone hold theirs too), else the GPUs this process sees."""
    from bench.distributed import launch

    current = launch()
    return len(current.gpus) if current.processes > 1 else gpu_count()


def computing_cores(machine: dict) -> int:
    """The cores a CPU run computed on: its cores, or fewer where torch had fewer threads (records from before
    ``torch_threads`` was stored count their cores), times the processes of a distributed launch (at most every
    core of its nodes)."""
    per_process = min(machine["cpu_cores"], machine.get("torch_threads") or machine["cpu_cores"])
    processes, nodes = machine.get("processes", 1), machine.get("nodes", 1)
    return min(per_process * processes, machine["cpu_cores"] * nodes)


def cpu_label(cores: int) -> str:
    return f"CPU {cores} core{'' if cores == 1 else 's'}"


@functools.cache
def bf16_matmul_tflops() -> float | None:
    """This GPU's measured bf16 matrix-product rate in TFLOP/s (an 8192^3 product, mean of ten after three
    warm-ups), the denominator of model FLOPs utilisation: measured rather than the datasheet's peak, so that MFU
    says how much of what the chip really delivers a stage used. None without a GPU. Measured once a process, or
    read from ``GRBENCH_BF16_MATMUL_TFLOPS``: runs that share a GPU each measure a share of it, so one measurement
    alone must serve them all (in GPU run 3 three CPT trainers at 29-30k tokens/s each reported 2.2% to 6.3% MFU);
    ``scripts/device/run.sh`` sets it."""
    torch = _torch()
    if torch is None or not torch.cuda.is_available():
        return None
    configured = os.environ.get(BF16_RATE_VARIABLE)
    if configured:
        try:
            rate = float(configured)
        except ValueError:
            rate = 0.0
        if not rate > 0:
            from bench.errors import GRBenchError

            raise GRBenchError(f"{BF16_RATE_VARIABLE}={configured!r}: expected this GPU's measured bf16 matrix rate "
                               "in TFLOP/s, a positive number (unset it to measure it in this process)")
        return rate
    n, repeats = 8192, 10
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 * repeats / seconds / 1e12


def training_flops_per_token(parameters: int, trainable: int) -> float:
    """Model FLOPs of one training token: forward 2N, backward through the activations 2N, weight gradients 2N
    for the trainable share (CPT and pause pretraining train embedding rows only). Attention's score and value
    products are not in it (:func:`attention_flops`)."""
    return 4.0 * parameters + 2.0 * trainable


def attention_flops(layers: int, attention_width: int, squared_lengths: float) -> float:
    """FLOPs of causal attention's score and value products (``QK^T``, ``PV``) over training sequences, forward
    and backward, which the parameter count misses: a sequence of ``T`` tokens costs ``2·T²·w`` a product and layer
    at full width (``w``: query heads x head width), half of it causal, and its backward twice its forward, so
    ``6·L·w·ΣT²`` in all. PaLM's MFU (Chowdhery et al. 2022, appendix B) counts the full square (``12·L·w·T`` a
    token); the causal half is the work the kernels do, and gives the lower MFU. At SFT's 1,700-token prompts on
    SmolLM2 (30 layers, width 576) this adds about a fifth to the parameters' FLOPs; at 100 tokens, 1%."""
    return 6.0 * layers * attention_width * squared_lengths


def model_flops_utilisation(tokens: float, flops_per_token: float, seconds: float,
                            extra_flops: float = 0.0) -> float | None:
    """Achieved model FLOP/s (``tokens x flops_per_token + extra_flops``, such as :func:`attention_flops`, over
    ``seconds``) over :func:`bf16_matmul_tflops` (None without a GPU or without time)."""
    peak = bf16_matmul_tflops()
    if peak is None or seconds <= 0:
        return None
    return (tokens * flops_per_token + extra_flops) / seconds / (peak * 1e12)


class GpuSharing:
    """Samples, every ``interval`` seconds, how many processes compute on this machine's GPUs (through NVML, the
    ``nvidia-ml-py`` package): a GPU shared with other runs makes a run's time and latency an upper bound, and its
    record says so (``max_processes``; None where NVML or a GPU is missing)."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.max_processes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _count(self) -> int:
        import pynvml

        return sum(len(pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i)))
                   for i in range(pynvml.nvmlDeviceGetCount()))

    def _sample(self) -> None:
        while True:
            try:
                self.max_processes = max(self.max_processes or 0, self._count())
            except Exception:  # noqa: BLE001 - a monitor must never stop the run it watches
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> GpuSharing:
        if gpu_count():
            try:
                import pynvml

                pynvml.nvmlInit()
                self.max_processes = self._count()
            except Exception:  # noqa: BLE001 - no NVML: sharing unknown
                return self
            self._thread = threading.Thread(target=self._sample, name="gpu-sharing", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


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
        gpus = devices_in_use()
        if gpu_count():
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
            if gpu_count():
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


PROBE_MEMORY_SHARE = 0.8  # of the free device memory, the most a throughput batch size may be predicted to take


def _free_device_bytes(torch: Any) -> int:
    """Device memory this process could still use: free on the device plus what its own allocator holds unused."""
    free, _ = torch.cuda.mem_get_info()
    return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())


def best_throughput(run_batch: Callable[[slice, int], None], n: int,
                    batch_sizes: Sequence[int] = THROUGHPUT_BATCH_SIZES) -> dict:
    """Users/s at the best of ``batch_sizes``: each size decodes the first ``min(n, 2 x size)`` users once, timed
    with synchronisation (the latency pass before it has warmed everything up). ``run_batch(window, size)`` decodes
    ``window`` in batches of ``size``. On a CPU, where bigger batches only queue, nothing is run: the record keeps
    the batch-16 latency's throughput.

    The probe is optional, the cell's rankings are not, nor are the other runs on a shared GPU (GPU run 5 lost
    three trained cells to it: 128 users x 10 beams x 1,700-token prompts of KV cache). So each size's peak memory
    a user predicts the next size's, a size predicted to take more than ``PROBE_MEMORY_SHARE`` of the free memory
    ends the probe (``too_large_at``), and one that runs out of memory all the same ends it too
    (``out_of_memory_at``); the best size that ran is kept."""
    if not gpu_count():
        return {"users_per_s": None, "batch_size": None, "by_batch_size": {}}
    from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

    torch = _torch()
    by_size: dict[int, float] = {}
    peak_gb: dict[int, float] = {}  # what each size held at its peak: what a user of that batch size needs
    bytes_a_user: float | None = None
    stopped: dict[str, int] = {}
    for size in batch_sizes:
        if size > n and by_size:
            break
        if bytes_a_user is not None and bytes_a_user * size > PROBE_MEMORY_SHARE * _free_device_bytes(torch):
            stopped["too_large_at"] = size
            break
        window = slice(0, min(n, 2 * size))
        synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated = torch.cuda.memory_allocated()
        began = time.perf_counter()
        try:
            run_batch(window, size)
        except RuntimeError as error:  # torch's OutOfMemoryError is a RuntimeError
            if not should_reduce_batch_size(error):
                raise
            stopped["out_of_memory_at"] = size
        if stopped:
            clear_device_cache(garbage_collection=True)  # outside the except: its traceback held the batch's tensors
            break
        synchronize()
        by_size[size] = (window.stop - window.start) / (time.perf_counter() - began)
        peak = torch.cuda.max_memory_allocated()
        peak_gb[size] = peak / 2**30
        bytes_a_user = (peak - allocated) / size
    best = max(by_size, key=by_size.__getitem__) if by_size else None
    return {"users_per_s": by_size.get(best), "batch_size": best, "by_batch_size": by_size,
            "peak_gpu_mem_gb_by_batch_size": peak_gb, "out_of_memory_at": stopped.get("out_of_memory_at"),
            "too_large_at": stopped.get("too_large_at")}
