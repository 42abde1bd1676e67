"""The benchmark matrix as cluster jobs, one a cell (``bench run --launcher slurm|local``), through submitit.

Why one job a cell, each writing alone: the matrix (12 methods x 3 datasets x seeds, the ``paper`` profile on
Qwen3-1.7B) runs on a cluster as many jobs at once, each with what its method needs (GPUs for the LLM methods
and TIGER, CPUs for the rest). Starting one ``bench run`` command many times instead would leave it to file locks
to keep two processes off one cell, which network filesystems do not reliably honour. Here the launcher gives
each cell to exactly one job, and no two jobs share a file: a job writes its record into a folder of its own
(``OUT/cluster/cells/<result id>/``), and one last job, started once every cell job has ended, merges those
records into ``OUT/results.jsonl`` and writes the leaderboards once.

Why submitit rather than Ray: it speaks Slurm itself (sbatch files, job states through sacct, dependencies,
requeue on a time limit), needs nothing running on the cluster besides the jobs and no extra service, and has a
local executor that runs the same pickled jobs as subprocesses, which is how CI tests this path on a CPU. Ray
would need a Ray cluster started inside a Slurm allocation first. (Not measured against Ray: chosen on these
grounds.)

A data-parallel method's job with several GPUs runs one task per GPU; each task exports its rank from the job
(submitit's ``TorchDistributedEnvironment``) and the cell runs as under ``torchrun`` (:mod:`bench.distributed`).
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from tabulate import tabulate

from bench.data import load_dataset
from bench.errors import GRBenchError, UnknownNameError
from bench.profiles import get_profile
from bench.registry import methods
from bench.results import RESULTS_FILE, ResultKey, ResultStore, write_atomically
from bench.runner import MethodRun, RunPlan, check_plan, reason_to_skip
from bench.split import leave_last_out

LAUNCHERS = ("local", "slurm")
CLUSTER_FOLDER = "cluster"
JOBS_FILE = "jobs.json"
MERGE = "merge"
# Slurm's states of a job that has not ended: its cell is not given to another job meanwhile
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")
MERGE_MINUTES = 60


@dataclass(frozen=True)
class JobResources:
    """What the jobs ask for: ``gpus`` for a method that wants GPUs (a data-parallel one gets a task per GPU; any
    other at most one GPU, since it trains on one), ``cpus`` for each task, ``minutes`` before the job is stopped,
    and any other submitit parameter in ``options`` (``slurm_partition``, ``slurm_account``, ``mem_gb``, ...)."""

    gpus: int = 1
    cpus: int = 4
    minutes: int = 24 * 60
    gpu_methods: tuple[str, ...] | None = None  # method names given GPUs; None: those whose class wants_gpu
    options: dict[str, Any] = field(default_factory=dict)

    def gpus_for(self, run: MethodRun, available: int | None) -> int:
        """The GPUs of ``run``'s job (``available``: the most this launcher can give, None for no limit)."""
        wanted = run.method.wants_gpu if self.gpu_methods is None else run.method.name in self.gpu_methods
        gpus = 0 if not wanted else self.gpus if run.method.data_parallel else min(self.gpus, 1)
        return gpus if available is None else min(gpus, available)


@dataclass(frozen=True)
class SubmittedJob:
    """One line of the job table (``OUT/cluster/jobs.json``): a cell's job, or the merge job."""

    job_id: str
    launcher: str
    kind: str  # "cell" or MERGE
    cell: str  # the cell's result id ("" for the merge job)
    folder: str  # submitit's folder of the job (its logs, pickles)
    gpus: int = 0
    submitted_at: str = ""


@dataclass(frozen=True)
class PlannedJob:
    """A cell to submit: what it runs and the key its record will have."""

    run: MethodRun
    dataset_spec: str
    seed: int
    key: ResultKey
    gpus: int


def cluster_folder(out: Path) -> Path:
    return out / CLUSTER_FOLDER


def cell_folder(out: Path, key: ResultKey) -> Path:
    """Where a cell's job writes its record and rankings (its own ``--out``) until they are merged."""
    return cluster_folder(out) / "cells" / key.id


def load_jobs(out: Path) -> list[SubmittedJob]:
    path = cluster_folder(out) / JOBS_FILE
    if not path.is_file():
        return []
    try:
        return [SubmittedJob(**row) for row in json.loads(path.read_text())]
    except (json.JSONDecodeError, TypeError) as error:
        raise GRBenchError(f"{path}: not a job table written by GRBench ({error}); move it away to start a new "
                           "one") from None


def save_jobs(out: Path, jobs: Sequence[SubmittedJob]) -> None:
    write_atomically(cluster_folder(out) / JOBS_FILE, json.dumps([asdict(j) for j in jobs], indent=1).encode())


def job_state(job: SubmittedJob) -> str:
    """The engine's state of a job (Slurm's through sacct: PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, ...)."""
    import submitit

    job_class = submitit.SlurmJob if job.launcher == "slurm" else submitit.LocalJob
    return job_class(folder=job.folder, job_id=job.job_id).state


def cell_has_record(out: Path, key: ResultKey) -> bool:
    return (cell_folder(out, key) / RESULTS_FILE).is_file()


def plan_jobs(plan: RunPlan, method_runs: Sequence[MethodRun], resources: JobResources, launcher: str,
              console: Console) -> list[PlannedJob]:
    """The cells of ``plan`` that need a job: not stored in ``plan.out`` (unless forced), not finished and waiting to
    be merged, not held by a job that is still pending or running. Each dataset is loaded and split, as the run
    would, for the split fingerprint that names its cells; the cells left out are printed with the reason."""
    profile = get_profile(plan.profile)
    unknown = sorted(set(resources.gpu_methods or ()) - set(methods()))
    if unknown:
        raise UnknownNameError("method", unknown[0], list(methods()))
    available = None if launcher == "slurm" else local_gpus()
    finished = ResultStore(plan.out).finished()
    active = {job.cell: f"job {job.job_id} is {state}" for job in load_jobs(plan.out) if job.kind == "cell"
              for state in [job_state(job)] if state in ACTIVE_STATES}
    planned = []
    for dataset_spec in plan.datasets:
        split = leave_last_out(load_dataset(dataset_spec))
        for run in method_runs:
            for seed in plan.seeds:
                gpus = resources.gpus_for(run, available)
                key = ResultKey(run.spec, split.dataset, profile.name, seed, split.fingerprint,
                                "gpu" if gpus else "cpu")
                reason = reason_to_skip(run, split, key, finished, plan) or active.get(key.id)
                if reason is None and cell_has_record(plan.out, key):
                    reason = f"finished in {cell_folder(plan.out, key)}, waiting to be merged"
                if reason:
                    console.print(f"skip {key.id}: {reason}", soft_wrap=True, highlight=False)
                    continue
                planned.append(PlannedJob(run, dataset_spec, seed, key, gpus))
    return planned


def local_gpus() -> int:
    """GPUs of this machine, the most a local job can have."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def make_executor(launcher: str, folder: Path) -> Any:
    import submitit

    try:
        return submitit.AutoExecutor(folder=folder, cluster=launcher)
    except RuntimeError as error:  # SlurmExecutor: no srun on this machine
        raise GRBenchError(f"--launcher {launcher}: {error} (run it on a machine that submits Slurm jobs, or use "
                           "--launcher local)") from None


def job_executor(launcher: str, folder: Path, parameters: dict[str, Any]) -> Any:
    """An executor with one job's parameters (a fresh one a job: submitit keeps parameters from one update to the
    next, and a CPU job must not inherit a GPU job's); a name submitit does not know is an error listing those it
    does."""
    executor = make_executor(launcher, folder)
    try:
        executor.update_parameters(**parameters)
    except (NameError, ValueError, AssertionError) as error:
        raise GRBenchError(f"job parameters {parameters}: {error}") from None
    return executor


def cell_parameters(job: PlannedJob, resources: JobResources) -> dict[str, Any]:
    """A cell job's submitit parameters: a data-parallel method's job has a task per GPU, any other one task; a job
    without GPUs asks for none (no ``--gpus-per-node=0``, which some clusters refuse)."""
    tasks = job.gpus if job.run.method.data_parallel and job.gpus > 1 else 1
    gpus = {"gpus_per_node": job.gpus} if job.gpus else {}
    return {"name": f"grbench-{job.key.id}", "timeout_min": resources.minutes, "cpus_per_task": resources.cpus,
            "tasks_per_node": tasks, **gpus, **resources.options}


def cell_plan(plan: RunPlan, job: PlannedJob) -> RunPlan:
    """The one-cell run a job makes: into the cell's own folder, no leaderboards, and, stored with its record, the
    command that makes the same cell in one process."""
    command = ["python", "-m", "bench", "run", "--methods", job.run.spec, "--datasets", job.dataset_spec,
               "--profile", plan.profile, "--seeds", str(job.seed), "--out", str(plan.out)]
    if plan.max_test_users is not None:
        command += ["--max-test-users", str(plan.max_test_users)]
    folder = cell_folder(plan.out, job.key)
    return replace(plan, methods=[job.run.spec], datasets=[job.dataset_spec], seeds=[job.seed], out=folder,
                   leaderboards=folder / "leaderboards", write_leaderboards=False, command=shlex.join(command))


def run_cell_job(plan: RunPlan) -> str:
    """What a cell's job runs (on every task of it): the one-cell plan, as a distributed launch where the job has
    several tasks (submitit exports each task's rank for torch.distributed; every GPU stays visible, and each task
    takes the one of its local rank)."""
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    from bench.runner import run_benchmark

    outcome = run_benchmark(plan)
    return ", ".join(record["id"] for record in outcome.made)


def merge_cells(out: Path, leaderboards: Path) -> str:
    """What the merge job runs: every cell folder's record (and rankings) into ``out``, each folder removed once
    merged (so that a later merge never puts back a record withdrawn meanwhile), then the leaderboards, once.
    Cells whose job ended without a record are named with their job's log folder."""
    from bench.leaderboard import write_leaderboards

    store = ResultStore(out)
    merged = []
    for folder in sorted((cluster_folder(out) / "cells").glob(f"*/{RESULTS_FILE}")):
        store.merge_from(folder.parent)
        shutil.rmtree(folder.parent)
        merged.append(folder.parent.name)
    stored = {key.id for key in store.finished()}
    latest = {job.cell: job for job in load_jobs(out) if job.kind == "cell"}  # a cell submitted again: its last job
    failed = [f"{cell} (job {job.job_id}, logs in {job.folder})" for cell, job in latest.items() if cell not in stored]
    with store.locked():
        write_leaderboards(store.load(), leaderboards, out)
    lines = [f"merged {len(merged)} cells into {store.path}: {', '.join(merged) or 'none'}",
             f"leaderboards: {leaderboards}"]
    if failed:
        lines.append(f"{len(failed)} cells have no record (their jobs failed or were stopped; rerun the command to "
                     f"submit them again): {'; '.join(failed)}")
    return "\n".join(lines)


def submit_matrix(plan: RunPlan, launcher: str, resources: JobResources, console: Console | None = None,
                  ) -> list[SubmittedJob]:
    """Submits one job per cell of ``plan`` that needs one, then the merge job; prints the table of job ids.

    ``slurm``: returns at once; the merge job waits in Slurm for the cell jobs (``afterany``). ``local``: the jobs
    run here as subprocesses, all at once; this waits for them, then runs the merge job and prints its report."""
    console = console or Console(stderr=True)
    if launcher not in LAUNCHERS:
        raise GRBenchError(f"launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    planned = plan_jobs(plan, check_plan(plan), resources, launcher, console)
    unmerged = list((cluster_folder(plan.out) / "cells").glob(f"*/{RESULTS_FILE}"))
    if not planned and not unmerged:
        console.print("nothing to submit: every cell is stored or has a job that has not ended")
        return []
    logs = cluster_folder(plan.out) / "logs"
    cell_jobs = []
    for job in planned:
        executor = job_executor(launcher, logs, cell_parameters(job, resources))
        cell_jobs.append((job, executor.submit(run_cell_job, cell_plan(plan, job))))
    submitted = [SubmittedJob(handle.job_id, launcher, "cell", job.key.id, str(handle.paths.folder), job.gpus,
                              time.strftime("%Y-%m-%dT%H:%M:%S%z")) for job, handle in cell_jobs]
    save_jobs(plan.out, load_jobs(plan.out) + submitted)  # before any wait: `bench progress` reads it
    if submitted:
        console.print(format_jobs([(job, "submitted") for job in submitted]), highlight=False, soft_wrap=True)
    # the options given (partition, account, ...), but one task on one CPU without a GPU: two tasks would both merge
    merge_options = {**{key: value for key, value in resources.options.items() if "gpu" not in key},
                     "name": "grbench-merge", "timeout_min": MERGE_MINUTES, "cpus_per_task": 1, "tasks_per_node": 1}
    failed: list[str] = []
    if launcher == "slurm":
        if submitted:
            merge_options["slurm_dependency"] = "afterany:" + ":".join(job.job_id for job in submitted)
    else:
        failed = wait_for([handle for _, handle in cell_jobs], console)
    merge_handle = job_executor(launcher, logs, merge_options).submit(merge_cells, plan.out, plan.leaderboards)
    merge_job = SubmittedJob(merge_handle.job_id, launcher, MERGE, "", str(merge_handle.paths.folder), 0,
                             time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    save_jobs(plan.out, load_jobs(plan.out) + [merge_job])
    if launcher == "slurm":
        console.print(f"merge job {merge_job.job_id} writes {plan.out / RESULTS_FILE} and the leaderboards once the "
                      f"cell jobs have ended; `python -m bench progress --out {plan.out}` shows the jobs",
                      highlight=False, soft_wrap=True)
    else:
        wait_for([merge_handle], console)
        if job_error(merge_handle) is not None:
            raise GRBenchError(f"the merge job {merge_job.job_id} failed: {error_line(job_error(merge_handle))} "
                               f"(logs: {merge_job.folder}); `python -m bench run ... --launcher local` again merges "
                               "what the cell jobs stored")
        console.print(merge_handle.result(), highlight=False, soft_wrap=True)
        if failed:
            raise GRBenchError(f"{len(failed)} of {len(submitted)} cell jobs failed (jobs {', '.join(failed)}; logs in "
                               f"{logs}); the others' records are merged; rerun the command to submit the failed "
                               "cells again")
    return submitted + [merge_job]


def wait_for(handles: Sequence[Any], console: Console) -> list[str]:
    """Waits for local jobs to end; returns the ids of those that failed, each printed with its error (not raised
    here: the merge job still stores what the others made)."""
    failed = []
    for handle in handles:
        handle.wait()
        error = job_error(handle)
        if error is not None:
            console.print(f"[red]job {handle.job_id} failed[/red]: {error_line(error)}", soft_wrap=True,
                          highlight=False)
            failed.append(str(handle.job_id))
    return failed


def job_error(handle: Any) -> BaseException | None:
    """The error an ended job raised, or the engine's error for a job that left no result (killed)."""
    try:
        return handle.exception()
    except Exception as error:  # noqa: BLE001 - submitit's UncompletedJobError and kin: the job left no outcome
        return error


def error_line(error: BaseException) -> str:
    """The line of a job's error that says what went wrong: the last of its traceback (submitit's error holds the
    whole traceback between two rules, then the paths of the logs)."""
    parts = str(error).split("-" * 22)
    lines = [line for line in (parts[1] if len(parts) >= 3 else str(error)).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def format_jobs(rows: Sequence[tuple[SubmittedJob, str]]) -> str:
    table = [[job.job_id, job.launcher, job.cell or "merge + leaderboards", job.gpus, state]
             for job, state in rows]
    return tabulate(table, headers=["job", "launcher", "cell", "GPUs", "state"], tablefmt="github",
                    disable_numparse=True)


def jobs_report(out: Path, state_of: Callable[[SubmittedJob], str] = job_state) -> str | None:
    """``bench progress``'s table of the jobs submitted for ``out`` (None where none were): each job's state from
    the engine, and whether its cell is stored, finished and waiting for the merge, or neither yet."""
    jobs = load_jobs(out)
    if not jobs:
        return None
    stored = {key.id for key in ResultStore(out).finished()}
    cells = cluster_folder(out) / "cells"
    rows = []
    for job in jobs:
        state = state_of(job)
        if job.kind == "cell":
            state += ", stored" if job.cell in stored else \
                ", record waiting to be merged" if (cells / job.cell / RESULTS_FILE).is_file() else \
                "" if state in ACTIVE_STATES else ", no record"
        rows.append((job, state))
    return f"jobs submitted for {out} ({cluster_folder(out) / JOBS_FILE})\n\n{format_jobs(rows)}"
