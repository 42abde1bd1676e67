"""Where an LLM training step's time goes: ``torch.profiler`` over a few optimizer steps of a stage.

GPU run 3 timed SmolLM2 steps at 0.3-0.6 s for a few thousand tokens on an H200 (2% MFU), far slower than the
GPU's arithmetic or the kernels' launches alone explain. With ``GRBENCH_TORCH_PROFILE=<folder>`` every LLM stage
trained through :func:`methods.llm.stages.train` profiles its optimizer steps ``skip + 1`` to ``skip + steps``
(after the first steps' allocations and kernel choices) and appends to ``<folder>/<stage>.txt``: each step's wall
time, the share of it the GPU spent in kernels, and the operators by their own device time and their own CPU
time. A busy share near 100% means arithmetic bounds the step (bigger batches will not help); a low one means the
GPU waits for the CPU (fewer, fused kernels, CUDA graphs or ``torch.compile`` will). Off unless the variable is
set; ``scripts/device/run.sh bench`` sets it for its MFU runs.

Written here rather than taken from Trainer: Trainer has no profiler hook, and its callbacks are where a step
begins and ends; ``torch.profiler`` does the measuring.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from bench.costs import synchronize

PROFILE_VARIABLE = "GRBENCH_TORCH_PROFILE"
TABLE_ROWS = 25


def profile_folder() -> Path | None:
    """The folder of ``$GRBENCH_TORCH_PROFILE``, or None when stages are not profiled."""
    configured = os.environ.get(PROFILE_VARIABLE, "").strip()
    return Path(configured).expanduser() if configured else None


def profile_file(folder: Path, description: str) -> Path:
    """``CPT steps`` -> ``<folder>/cpt-steps.txt``."""
    return folder / (re.sub(r"[^a-z0-9]+", "-", description.lower()).strip("-") + ".txt")


def step_profiler(description: str, skip: int = 3, steps: int = 5) -> Any | None:
    """A Trainer callback that profiles ``steps`` optimizer steps after ``skip`` (counted from where training
    starts, also when it resumes), or None without ``$GRBENCH_TORCH_PROFILE``."""
    folder = profile_folder()
    if folder is None:
        return None
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])

    class StepProfiler(TrainerCallback):
        def __init__(self) -> None:
            self.first_step: int | None = None
            self.profiler: Any = None
            self.walls: list[float] = []
            self.began = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step = state.global_step + skip

        def on_step_begin(self, args, state, control, **kwargs):
            if self.profiler is None and state.global_step == self.first_step:
                synchronize()
                self.profiler = profile(activities=activities)
                self.profiler.start()
            if self.profiler is not None:
                synchronize()
                self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is None:
                return
            synchronize()
            self.walls.append(time.perf_counter() - self.began)
            if len(self.walls) == steps:
                self.write(args, state)

        def on_train_end(self, args, state, control, **kwargs):
            if self.profiler is not None and self.walls:  # a stage shorter than skip + steps
                self.write(args, state)

        def write(self, args, state) -> None:
            self.profiler.stop()
            averages = self.profiler.key_averages()
            self.profiler = None
            count, wall = len(self.walls), sum(self.walls)
            lines = [f"# {description}: {count} optimizer steps from step {state.global_step - count + 1} of "
                     f"{state.max_steps}, {args.gradient_accumulation_steps} micro-batch(es) of "
                     f"{args.per_device_train_batch_size} a step, device {args.device}",
                     "wall ms a step: " + " ".join(f"{1000 * w:.1f}" for w in self.walls),
                     f"operators called: {sum(e.count for e in averages if e.key.startswith('aten::')) / count:.0f} "
                     "a step"]
            if ProfilerActivity.CUDA in activities:
                busy_us = sum(event.self_device_time_total for event in averages)
                lines.append(f"GPU kernels: {busy_us / 1000 / count:.1f} ms a step, busy {busy_us / 1e6 / wall:.1%} "
                             "of the wall time (low: the GPU waits for the CPU to issue work)")
                lines += ["", "by own device time:",
                          averages.table(sort_by="self_device_time_total", row_limit=TABLE_ROWS)]
            lines += ["", "by own CPU time:", averages.table(sort_by="self_cpu_time_total", row_limit=TABLE_ROWS)]
            folder.mkdir(parents=True, exist_ok=True)
            with profile_file(folder, description).open("a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n\n")

    return StepProfiler()
