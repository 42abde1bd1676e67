"""Runs the benchmark matrix: datasets x methods x seeds, one stored result per cell.

Every name is checked before any work starts; each finished cell is written at once (rankings,
then its record), so an interrupted run loses at most the cell in progress and a rerun of the same
command skips what is finished. A cell is run under a lock file beside its cache folder: a second process
that reaches a cell another one is running skips it (the command ends with exit status 3 and names it), so
the same command launched twice, or two commands sharing cells, never train one cell twice at once, fight
over its checkpoint or store it twice.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from filelock import FileLock, Timeout
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from bench.costs import (
    LATENCY_BATCH_SIZE,
    GpuSharing,
    best_throughput,
    devices_in_use,
    gpu_count,
    hardware,
    timed_batches,
)
from bench.data import load_dataset, parse_spec
from bench.distributed import gather, is_main_process, launch, share_main, wait_for_everyone
from bench.errors import GRBenchError
from bench.evaluate import check_rankings, list_stats, per_user_metrics, summarize
from bench.leaderboard import render_dataset_tables, write_leaderboards
from bench.paths import cache_dir, lock_beside
from bench.profiles import Profile, get_profile
from bench.provenance import process_commit, versions
from bench.registry import Method, RunContext, methods, parse_method_spec, seed_everything
from bench.results import ResultKey, ResultStore, check_writable, slug, write_atomically
from bench.split import EVAL_SUBSET_SEED, Split, leave_last_out

TOP_K = 10
T = TypeVar("T")


@dataclass
class RunPlan:
    """One ``python -m bench run`` invocation."""

    methods: list[str]
    datasets: list[str]
    profile: str = "quick"
    seeds: list[int] = field(default_factory=lambda: [0])
    out: Path = Path("results")
    leaderboards: Path = Path("leaderboards")
    force: bool = False
    max_test_users: int | None = None  # overrides the profile's subset size
    write_leaderboards: bool = True  # False for a cluster job, whose records are merged and tabled later
    command: str | None = None  # the command line stored with each record, where not this process's own


@dataclass(frozen=True)
class MethodRun:
    spec: str
    method: type[Method]
    settings: dict[str, Any]
    options: dict[str, str]


def resolve_methods(specs: Sequence[str], profile: Profile) -> list[MethodRun]:
    """Parses every method spec and its options up front, so a typo fails before hours of training."""
    resolved = []
    for spec in specs:
        method, options = parse_method_spec(spec)
        resolved.append(MethodRun(spec, method, method.settings_for(profile.name, options), options))
    return resolved


@dataclass
class RunOutcome:
    """What one :func:`run_benchmark` call did: the records it stored, and the cells it left to other processes
    that were running them (by result id)."""

    made: list[dict] = field(default_factory=list)
    running_elsewhere: list[str] = field(default_factory=list)


def stage_warnings(record: dict) -> list[str]:
    """The warnings a record's stages carry (``extra.warning``, e.g. a GRPO stage whose reward never varied),
    one line each, naming the result and the stage."""
    name = record.get("id") or ResultKey.of(record).id
    return [f"WARNING {name}: stage {stage['name']}: {stage['extra']['warning']}"
            for stage in record.get("stages", []) if stage.get("extra", {}).get("warning")]


def cell_lock_path(key: ResultKey) -> Path:
    """The lock file of one cell, beside its cache folder (``.../seed0.lock``)."""
    return lock_beside(cache_dir() / key.cache_folder)


@contextmanager
def cell_lock(key: ResultKey) -> Iterator[bool]:
    """Yields True while this process holds the cell's lock, False at once if another process holds it. The
    operating system drops a lock whose process dies (even by SIGKILL), so a killed run never blocks a rerun.
    The ranks of one distributed launch run a cell together: rank 0 takes the lock for them all and shares what
    it found."""
    path = cell_lock_path(key)
    lock = FileLock(str(path))

    def try_lock() -> bool:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=0)
        except Timeout:
            return False
        except OSError as error:
            raise GRBenchError(f"cannot write the cell lock {path} in the cache folder ({error.strerror or error}); "
                               f"set GRBENCH_CACHE to a writable folder") from None
        return True

    ours = share_main(try_lock)
    try:
        yield ours
    finally:
        if ours and is_main_process():
            lock.release()


def progress_line_seconds() -> float:
    """``GRBENCH_PROGRESS_SECONDS`` (default 60): how often :class:`LoggedProgress` prints its lines."""
    text = os.environ.get("GRBENCH_PROGRESS_SECONDS", "60")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise GRBenchError(f"GRBENCH_PROGRESS_SECONDS={text!r}: expected a number of seconds, 0 or more")
    return seconds


class LoggedProgress(Progress):
    """Rich's progress bars, plus a plain line per unfinished task every ``line_seconds`` when the console is
    not a terminal: rich draws nothing into a log file (``nohup``, Slurm, the device script) until a task ends,
    so a 30-minute epoch would otherwise leave no trace of where it is or how long it has left."""

    def __init__(self, *columns: Any, line_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.line_seconds = progress_line_seconds() if line_seconds is None else line_seconds
        self._last_lines = time.monotonic()

    def track(self, sequence: Iterable[T], total: float | None = None, task_id: TaskID | None = None,
              description: str = "Working...", **kwargs: Any) -> Iterable[T]:
        """Rich's ``track``, whose task stops when the loop ends early (a ``break``: early stopping), so that it
        is not printed as running ever after."""
        if task_id is None:  # rich's own track sets the total from the sequence's length
            task_id = self.add_task(description, total=total)
        try:
            yield from super().track(sequence, total=total, task_id=task_id, description=description, **kwargs)
        finally:
            self.stop_task(task_id)

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._maybe_print_lines()

    def advance(self, *args: Any, **kwargs: Any) -> None:
        super().advance(*args, **kwargs)
        self._maybe_print_lines()

    def _maybe_print_lines(self) -> None:
        if self.console.is_terminal or time.monotonic() - self._last_lines < self.line_seconds:
            return
        self._last_lines = time.monotonic()
        for task in self.tasks:
            if task.started and not task.finished and task.stop_time is None:
                self.console.print(progress_line(task), highlight=False, soft_wrap=True)


def progress_line(task: Any) -> str:
    """``12:03:04 tiger: tiger epochs 3/200 (2%), 0:41:10 elapsed, about 21:03:00 left`` for a rich task."""
    done = f"{task.completed:.0f}" if task.total is None else \
        f"{task.completed:.0f}/{task.total:.0f} ({task.percentage:.0f}%)"
    left = "" if task.time_remaining is None else f", about {timedelta(seconds=round(task.time_remaining))} left"
    return (f"{time.strftime('%H:%M:%S')} {task.description.strip()} {done}, "
            f"{timedelta(seconds=round(task.elapsed or 0))} elapsed{left}")


def make_progress(console: Console) -> Progress:
    return LoggedProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=False)


def run_benchmark(plan: RunPlan, console: Console | None = None) -> RunOutcome:
    """Runs the plan and writes results and leaderboards; returns the records made by this call and the cells
    skipped because another process was running them. Under a distributed launch every rank calls it; rank 0
    decides which cells run, and alone writes and prints."""
    console = console or Console(stderr=True, quiet=not is_main_process())
    process_commit()  # the code loaded now is what runs, whatever is committed while it does
    launch()  # a distributed launch's ranks meet here first (who runs where, which devices it holds)
    profile = get_profile(plan.profile)
    method_runs = check_plan(plan)
    check_writable(cache_dir(), "stage caches, checkpoints and cell locks (GRBENCH_CACHE)")
    store = ResultStore(plan.out)
    finished = store.finished()
    max_users = plan.max_test_users if plan.max_test_users is not None else profile.max_test_users
    outcome = RunOutcome()
    made = outcome.made
    with make_progress(console) as progress:
        for dataset_spec in plan.datasets:
            task = progress.add_task(f"load + split {dataset_spec}", total=1)
            split = leave_last_out(load_dataset(dataset_spec))
            if split.n_items < TOP_K:
                raise GRBenchError(f"dataset {dataset_spec}: {split.n_items} items; top-{TOP_K} rankings of distinct "
                                   f"items need at least {TOP_K}")
            progress.update(task, completed=1)
            users = split.evaluation_users(max_users)
            for run in method_runs:
                for seed in plan.seeds:
                    key = ResultKey(run.spec, split.dataset, profile.name, seed, split.fingerprint, run_device())
                    reason = share_main(reason_to_skip, run, split, key, finished, plan)
                    if reason:
                        console.print(f"skip {key.id}: {reason}", soft_wrap=True)
                        continue
                    with cell_lock(key) as ours:
                        if not ours:
                            console.print(f"[yellow]skip {key.id}: another process is running it (it holds "
                                          f"{cell_lock_path(key)}); `python -m bench progress` shows how far it "
                                          f"got[/yellow]", soft_wrap=True)
                            outcome.running_elsewhere.append(key.id)
                            continue
                        if key in share_main(store.finished) and not plan.force:
                            console.print(f"skip {key.id}: another process has just stored it in {store.path}")
                            continue
                        cell = run_cell(split, run, profile, seed, users, progress)
                        if cell is None:
                            continue  # not rank 0 of a distributed launch: rank 0 writes
                        record, rows = cell
                        if plan.command is not None:
                            record["command"] = plan.command
                        record["rankings"] = str(store.write_rankings(key, rows).relative_to(plan.out))
                        store.add(record)
                    made.append(record)
                    latency = record["inference"]["ms_per_user"]
                    latency_text = "latency not timed (too few test users)" if latency is None else \
                        f"{latency:.1f} ms/user"
                    console.print(f"done {key.id}: NDCG@10 {record['metrics']['ndcg@10']['mean']:.4f}, trained in "
                                  f"{record['train']['wall_s']:.0f} s, {latency_text}", highlight=False, soft_wrap=True)
    if not is_main_process() or not plan.write_leaderboards:
        return outcome
    with store.locked():  # of concurrent runs sharing --out, the last to write the leaderboards read every record
        records = store.load()
        write_leaderboards(records, plan.leaderboards, plan.out)
    print(render_dataset_tables(records, datasets={r["dataset"] for r in made} or None))
    console.print(f"results: {store.path}   leaderboards: {plan.leaderboards}")
    for record in made:  # last, where a reader of the run's end sees them
        for line in stage_warnings(record):
            console.print(f"[yellow]{escape(line)}[/yellow]", highlight=False, soft_wrap=True)
    if outcome.running_elsewhere:
        console.print(f"[yellow]{len(outcome.running_elsewhere)} cell(s) left to the other processes running "
                      f"them: {', '.join(outcome.running_elsewhere)}; rerun this command after they finish to "
                      f"see every row[/yellow]", soft_wrap=True)
    return outcome


def check_plan(plan: RunPlan) -> list[MethodRun]:
    """Every name of ``plan``, what its methods load from outside the suite, and its output folders, checked before
    any work starts (here or in cluster jobs); returns the resolved methods."""
    method_runs = resolve_methods(plan.methods, get_profile(plan.profile))
    for spec in plan.datasets:
        parse_spec(spec)
    check_available(method_runs)
    check_writable(plan.out)
    if plan.write_leaderboards:
        check_writable(plan.leaderboards, "leaderboards")
    return method_runs


def check_available(method_runs: Sequence[MethodRun]) -> None:
    """What every method loads from outside the suite (a backbone) is there, before any work starts
    (:meth:`bench.registry.Method.check_available`)."""
    for run in method_runs:
        run.method.check_available(run.settings)


def reason_to_skip(run: MethodRun, split: Split, key: ResultKey, finished: Container[ResultKey],
                   plan: RunPlan) -> str | None:
    """Why a run leaves cell ``key`` alone before it tries the cell's lock, or None: one rule for `bench run`
    and for its dry run, which must agree."""
    if run.method.needs_text and not split.has_text:
        return "needs item text, and this dataset has none"
    if key in finished and not plan.force:
        return f"stored in {plan.out} (--force reruns it)"
    return None


def make_method(split: Split, run: MethodRun, profile: Profile, seed: int,
                progress: Progress) -> tuple[Method, RunContext]:
    """A seeded, untrained instance of ``run`` with its run context (cache folder, progress bars)."""
    seed_everything(seed)

    def track(iterable, description: str = "", total: int | None = None):
        return progress.track(iterable, total=total, description=f"  {run.spec}: {description}")

    context = RunContext(
        seed=seed,
        profile=profile.name,
        device="cuda" if gpu_count() else "cpu",
        cache_dir=cache_dir() / ResultKey(run.spec, split.dataset, profile.name, seed, split.fingerprint).cache_folder,
        track=track,
        log=lambda text: progress.console.print(f"  {time.strftime('%H:%M:%S')} {text}", highlight=False,
                                                soft_wrap=True),
    )
    return run.method(run.settings, context), context


def run_analyses(method_specs: Sequence[str], dataset_specs: Sequence[str], profile_name: str, seed: int,
                 folder: Path, console: Console | None = None) -> list[Path]:
    """``python -m bench analyze``: for each method and dataset, the method's trained model (from its stage
    cache, trained first where missing), then its own analyses (:meth:`Method.analyze`): plots and a summary
    under ``folder/<dataset>/<method spec>/<profile>-seed<k>/``. Returns the summary files."""
    console = console or Console(stderr=True, quiet=not is_main_process())
    process_commit()
    launch()
    profile = get_profile(profile_name)
    method_runs = resolve_methods(method_specs, profile)
    for run in method_runs:
        if run.method.analyze is Method.analyze:
            having = sorted(name for name, cls in methods().items() if cls.analyze is not Method.analyze)
            raise GRBenchError(f"method {run.spec!r} has no analyses; methods with analyses: {', '.join(having)}")
    for spec in dataset_specs:
        parse_spec(spec)
    check_available(method_runs)
    written = []
    with make_progress(console) as progress:
        for dataset_spec in dataset_specs:
            split = leave_last_out(load_dataset(dataset_spec))
            data = split.train_view()
            for run in method_runs:
                method, context = make_method(split, run, profile, seed, progress)
                with context.stage("train"):
                    method.fit(data, context)
                # one folder per profile and seed, so that a quick analysis never overwrites a small one
                target = folder / slug(split.dataset) / slug(run.spec) / f"{profile.name}-seed{seed}"
                task = progress.add_task(f"analyze {run.spec} / {split.dataset}", total=1)
                summary = method.analyze(data, target)
                progress.update(task, completed=1)
                record = {"method": run.spec, "dataset": split.dataset, "profile": profile.name, "seed": seed,
                          "split_fingerprint": split.fingerprint, "variant": run.method.variant(run.settings),
                          "settings": run.settings, "analyses": summary, "hardware": hardware(),
                          "versions": versions(), "git_commit": process_commit(), "command": shlex.join(sys.argv),
                          "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                path = target / "analysis.json"
                write_atomically(path, json.dumps(record, indent=1, default=str).encode())
                console.print(f"{run.spec} / {split.dataset}: {path} and its plots")
                written.append(path)
    return written


def run_device() -> str:
    """What this process runs on, as result keys name it (:class:`bench.results.ResultKey`)."""
    return "gpu" if gpu_count() else "cpu"


def run_cell(split: Split, run: MethodRun, profile: Profile, seed: int, users: np.ndarray,
             progress: Progress) -> tuple[dict, list[dict]] | None:
    """Trains and scores one method on one split with one seed; returns its record and ranking rows.

    Under a distributed launch a data-parallel method trains on every rank, any other on rank 0 alone while the
    others wait; rank 0 alone ranks the test users, and the other ranks get None."""
    label = f"{run.spec} / {split.dataset} / seed {seed}"
    trains_here = is_main_process() or run.method.data_parallel
    with GpuSharing() as sharing:
        if trains_here:
            method, context = make_method(split, run, profile, seed, progress)
            fit_task = progress.add_task(f"train {label}", total=1)
            started = time.perf_counter()
            with context.stage("train") as train_cost:
                method.fit(split.train_view(), context)
            progress.update(fit_task, completed=1)
        trained_by = [rank for rank, trained in enumerate(gather(trains_here)) if trained]
        if is_main_process():
            record, rows = _score(split, run, profile, seed, users, progress, method, context, train_cost, started,
                                  label)
        wait_for_everyone()  # while rank 0 ranks the test users
    if not is_main_process():
        return None
    record["hardware"]["gpu_processes_max"] = sharing.max_processes
    record["launch"] = launch_record(trained_by)
    return record, rows


def launch_record(trained_by: list[int]) -> dict[str, Any]:
    """How a cell ran: processes, nodes and devices (GPUs, else one CPU process each), and the ranks that trained
    it (every rank for a data-parallel method, else rank 0)."""
    current, gpus = launch(), devices_in_use()
    return {"processes": current.processes, "nodes": current.nodes, "devices": gpus or current.processes,
            "device_kind": "gpu" if gpus else "cpu", "trained_by_ranks": trained_by}


def _score(split: Split, run: MethodRun, profile: Profile, seed: int, users: np.ndarray, progress: Progress,
           method: Method, context: RunContext, train_cost: Any, started: float, label: str,
           ) -> tuple[dict, list[dict]]:
    """Ranks the test users with the fitted ``method``, times it, and builds the result record (:func:`run_cell`)."""
    histories = split.test_histories(users)
    targets = split.test_targets(users)
    topk = np.zeros((len(users), TOP_K), dtype=np.int64)
    infer_task = progress.add_task(f"recommend {label}", total=len(users))

    def run_batch(window: slice) -> None:
        batch = method.recommend(histories[window], TOP_K, users[window])
        topk[window] = check_rankings(batch, window.stop - window.start, TOP_K, split.n_items, run.spec)

    latency = timed_batches(run_batch, len(users), LATENCY_BATCH_SIZE,
                            on_batch=lambda n: progress.advance(infer_task, n))
    # this process's own training time: wall_s also counts stages reused from the cache (carried_wall_s)
    inference_s = time.perf_counter() - started - (train_cost.wall_s - train_cost.carried_wall_s)

    def run_batches_of(window: slice, size: int) -> None:
        with method.decoding_batch(size):
            for start in range(window.start, window.stop, size):
                part = slice(start, min(start + size, window.stop))
                method.recommend(histories[part], TOP_K, users[part])

    throughput = best_throughput(run_batches_of, len(users))

    vectors = per_user_metrics(targets, topk)
    record = {
        "id": ResultKey(run.spec, split.dataset, profile.name, seed, split.fingerprint, run_device()).id,
        "device": run_device(),
        "method": run.spec,
        "dataset": split.dataset,
        "profile": profile.name,
        "seed": seed,
        "split_fingerprint": split.fingerprint,
        "method_name": run.method.name,
        "family": run.method.family,
        "options": run.options,
        "settings": run.settings,
        "variant": run.method.variant(run.settings),
        "reduced_schedule": profile.reduced_schedule and run.method.has_training_schedule,
        "dataset_info": {**split.stats, "has_text": split.has_text},
        "eval_users": int(len(users)),
        "eval_subset": "all" if len(users) == split.n_users else f"fixed subset (seed {EVAL_SUBSET_SEED})",
        "top_k": TOP_K,
        "metrics": summarize(vectors, profile.bootstrap_samples),
        "list_stats": list_stats(topk, histories, split.n_items),
        "train": {"wall_s": train_cost.wall_s, "gpus": train_cost.gpus, "gpu_hours": train_cost.gpu_hours,
                  "peak_gpu_mem_gb": train_cost.peak_gpu_mem_gb,
                  "carried_wall_s": train_cost.carried_wall_s},
        "stages": [s for s in context.costs.as_records() if s["name"] != "train"],
        "inference": {"wall_s": inference_s, **latency, "throughput": throughput},
        "report": method.report(),
        "hardware": hardware(),
        "versions": versions(),
        "git_commit": process_commit(),
        "command": shlex.join(sys.argv),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    rows = [
        {"user": str(split.user_ids[u]), "target": str(split.item_ids[t]),
         "topk": [str(i) for i in split.original_items(ranked)]}
        for u, t, ranked in zip(users, targets, topk)
    ]
    return record, rows

