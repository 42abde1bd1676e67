"""How far each training run in the cache has got (``python -m bench progress``), and what a ``bench run``
command would do with each of its cells (``python -m bench run ... --dry-run``).

Long runs outlive a working session (TIGER on Amazon Beauty trains for days on a CPU), and a rerun of the same
command resumes them from their checkpoints. This reads those checkpoints without building any method: the epoch
checkpoints of :func:`bench.training.train_with_early_stopping` (epochs done, best and latest validation score,
patience left, and the epoch that ends the run if no new best comes: the least it has left to train) and the
LLM stage folders (finished, or the last Trainer checkpoint of one in progress).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout
from tabulate import tabulate

from bench.checkpoint import CHECKPOINT_VERSION, EPOCH_CHECKPOINT, read_checkpoint
from bench.paths import cache_dir, lock_beside
from bench.training import VALID_METRIC, key_without_epoch_limit, last_epoch_without_gain, shorter_run_state

if TYPE_CHECKING:
    from bench.runner import MethodRun, RunPlan

LLM_STAGES = "llm-stages"


@dataclass(frozen=True)
class RunProgress:
    """One run (or LLM stage) found in the cache; its fields are already worded for the table."""

    folder: str  # relative to the cache
    method: str
    done: str  # "12/200 epochs", "40/120 steps"
    best: str
    latest: str
    status: str
    hours: float | None  # training wall time so far
    epoch_minutes: float | None  # mean wall time of an epoch (validation included), to plan the rest
    updated: float  # modification time of what was read (seconds since the epoch)
    # when early stopping ends a resumable run if validation never improves again: "epoch 42, about 4.8 h more"
    ends_without_gain: str = ""


def locked_by_another_process(folder: Path) -> bool:
    """Whether a process is running the cell (:func:`bench.runner.cell_lock`) or training the LLM stage
    (``methods.llm.stages.stage_lock``) whose lock file sits beside ``folder``. Found by trying the lock, which a
    holder keeps; a run that reaches the cell in the same instant would skip it (it says so), so this is cheap
    enough a risk for a status command."""
    path = lock_beside(folder)
    if not path.is_file():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:  # a cache this user may read but not lock (another user's): no way to tell, so not shown
        return False
    lock.release()
    return False


def training_progress(cache: Path) -> list[RunProgress]:
    """Every epoch checkpoint and LLM stage under ``cache``, the most recently updated first."""
    rows = [epoch_progress(path, cache) for path in cache.rglob(EPOCH_CHECKPOINT)]
    rows += [stage_progress(folder, cache) for stages in cache.rglob(LLM_STAGES) if stages.is_dir()
             for folder in stages.iterdir() if folder.is_dir()]
    return sorted(rows, key=lambda row: row.updated, reverse=True)


def epoch_progress(path: Path, cache: Path) -> RunProgress:
    """One epoch checkpoint: read whole (torch's format holds the history beside the weights)."""
    folder, updated = str(path.parent.relative_to(cache)), path.stat().st_mtime
    try:
        saved = read_checkpoint(path)
        version = saved["version"]
        key, state = json.loads(saved["key"]), saved["state"]
    except Exception as error:  # noqa: BLE001 - a table row says what is wrong; the run would start over
        return RunProgress(folder, "?", "", "", "", f"unreadable ({type(error).__name__}): training starts over",
                           None, None, updated)
    if version != CHECKPOINT_VERSION:
        return RunProgress(folder, key.get("method", "?"), "", "", "", f"checkpoint version {version} (this code "
                           f"reads {CHECKPOINT_VERSION}): training starts over", None, None, updated)
    settings: dict[str, Any] = key.get("settings", {})
    history: list[dict[str, Any]] = state["history"]
    epochs, patience = settings.get("epochs"), settings.get("patience")
    validated = state.get("validated_epochs") or [entry["epoch"] for entry in history]
    latest = history[validated[-1]] if validated and history else None
    patience_left: int | None = None  # for a run that can still train
    if state["stopped"]:
        status = f"stopped early (no gain in {patience} epochs)"
    elif epochs is not None and len(history) >= epochs:
        status = "finished"
    else:
        patience_left = None if patience is None else patience - (len(history) - 1 - state["best_epoch"])
        status = "training now" if locked_by_another_process(path.parent) else "resumable"
        status += "" if patience_left is None else f", {patience_left} epochs of patience left"
    wall_s = state.get("wall_s", 0.0)
    epoch_minutes = wall_s / 60 / len(history) if history else None
    ends = ""
    if patience_left is not None and epochs is not None:
        last_epoch = last_epoch_without_gain(state["best_epoch"], patience, epochs)
        ends = f"epoch {last_epoch}" + ("" if epoch_minutes is None else
                                        f", about {(last_epoch - len(history)) * epoch_minutes / 60:.1f} h more")
    return RunProgress(
        folder, key.get("method", "?"), f"{len(history)}/{epochs if epochs is not None else '?'} epochs",
        f"{state['best_score']:.4f} (epoch {state['best_epoch'] + 1})" if history else "",
        f"{latest[VALID_METRIC]:.4f} (epoch {latest['epoch'] + 1})" if latest else "",
        status, wall_s / 3600, epoch_minutes, updated, ends)


def stage_progress(folder: Path, cache: Path) -> RunProgress:
    """One LLM stage folder: finished (its ``stage.json``), or in progress at its newest Trainer checkpoint."""
    from methods.llm.stages import DONE, STAGE_FILE, TRAINER_DIR

    name = str(folder.relative_to(cache))
    stage = folder.name.rsplit("-", 1)[0]
    if (folder / DONE).is_file():
        info = json.loads((folder / STAGE_FILE).read_text())
        cost = info.get("cost", {})
        hours = cost.get("wall_s", 0.0) / 3600 if cost else None
        steps = info.get("report", {}).get("steps")
        return RunProgress(name, f"LLM stage {stage}", f"{steps} steps" if steps else "", "", "", "finished",
                           hours, None, (folder / DONE).stat().st_mtime)
    states = sorted((folder / TRAINER_DIR).glob("checkpoint-*/trainer_state.json"),
                    key=lambda path: int(path.parent.name.rsplit("-", 1)[1]))
    if not states:
        return RunProgress(name, f"LLM stage {stage}", "", "", "", "started, no checkpoint yet: starts over", None,
                           None, folder.stat().st_mtime)
    trainer = json.loads(states[-1].read_text())
    status = "training now" if locked_by_another_process(folder) else "resumable from its Trainer checkpoint"
    return RunProgress(name, f"LLM stage {stage}", f"{trainer['global_step']}/{trainer['max_steps']} steps", "", "",
                       status, None, None, states[-1].stat().st_mtime)


def format_progress(rows: list[RunProgress], cache: Path) -> str:
    """The rows as a table, with a line naming the cache (and how to resume) above it."""
    if not rows:
        return f"no training checkpoints under {cache}"
    table = [[row.folder, row.method, row.done, row.best, row.latest, row.status,
              "" if row.hours is None else f"{row.hours:.2f}",
              "" if row.epoch_minutes is None else f"{row.epoch_minutes:.1f}",
              row.ends_without_gain, time.strftime("%Y-%m-%d %H:%M", time.localtime(row.updated))] for row in rows]
    headers = ["run folder", "method", "done", f"best valid {VALID_METRIC}", f"latest valid {VALID_METRIC}",
               "status", "train h", "min/epoch", "ends if no new best", "updated"]
    return (f"training checkpoints under {cache}; rerun a run's own command to resume it\n\n"
            + tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))


# ------------------------------------------------------------------------------------------ bench run --dry-run

@dataclass(frozen=True)
class PlannedCell:
    """One (method, dataset, seed) cell of a ``bench run`` command, and what the command would do with it."""

    method: str
    dataset: str
    seed: int
    action: str
    downloads: tuple[Path, ...] = ()  # files the run would download before it can split the dataset


def plan_cells(plan: RunPlan) -> list[PlannedCell]:
    """What ``bench run`` would do with each cell of ``plan``, found without training anything: skip it (stored,
    another process running it, or no item text), resume it from its epoch checkpoint, or train it. Loads and
    splits each dataset, as the run would, for the split fingerprint that names the cell; a dataset whose files
    would be downloaded first is not downloaded, and its cells say so."""
    from bench.data import dataset_name, load_dataset, parse_spec
    from bench.profiles import get_profile
    from bench.results import ResultKey, ResultStore
    from bench.runner import reason_to_skip, resolve_methods, run_device
    from bench.split import leave_last_out

    profile = get_profile(plan.profile)
    method_runs = resolve_methods(plan.methods, profile)
    finished = ResultStore(plan.out).finished()
    cells = []
    for dataset_spec in plan.datasets:
        source, argument = parse_spec(dataset_spec)
        missing = source.pending_downloads(argument) if source.pending_downloads else []
        if missing:  # a dry run downloads nothing; without the files there is no split to look cells up by
            cells += [PlannedCell(run.spec, dataset_name(dataset_spec), seed,
                                  f"download the data, then {fresh_action(run)}", tuple(missing))
                      for run in method_runs for seed in plan.seeds]
            continue
        split = leave_last_out(load_dataset(dataset_spec))
        for run in method_runs:
            for seed in plan.seeds:
                key = ResultKey(run.spec, split.dataset, profile.name, seed, split.fingerprint, run_device())
                folder = cache_dir() / key.cache_folder
                checkpoint = folder / EPOCH_CHECKPOINT
                reason = reason_to_skip(run, split, key, finished, plan)
                if reason:
                    action = f"skip: {reason}"
                elif locked_by_another_process(folder):
                    action = "skip: another process is running it"
                elif checkpoint.is_file():
                    action = checkpoint_action(epoch_progress(checkpoint, cache_dir()))
                else:
                    action = continue_action(run, folder, split.fingerprint, seed) or fresh_action(run)
                cells.append(PlannedCell(run.spec, split.dataset, seed, action))
    return cells


def fresh_action(run: MethodRun) -> str:
    """What a run does with a cell it has nothing of yet."""
    return "train and rank" if run.method.family != "baseline" else "rank"


def continue_action(run: MethodRun, folder: Path, fingerprint: str, seed: int) -> str | None:
    """For a method that :attr:`~bench.registry.Method.extends_shorter_runs`: the cut run of the same settings,
    split and seed the cell in ``folder`` would continue (as :func:`bench.training.train_with_early_stopping`
    looks for it; the run also checks what a plan cannot know before training, e.g. the SIDs), or None."""
    if not run.method.extends_shorter_runs:
        return None

    def essentials(key: dict[str, Any]) -> str:
        return key_without_epoch_limit({name: key.get(name) for name in ("method", "settings", "split", "seed")})

    wanted = essentials({"method": run.method.name, "settings": run.settings, "split": fingerprint, "seed": seed})
    shorter = shorter_run_state(folder, run.method.name, lambda found: essentials(found) == wanted,
                                run.settings["epochs"], run.method.validate_every(run.settings))
    if shorter is None:
        return None
    cell, state = shorter
    return (f"continue cell {cell} after its {len(state['history'])} epochs (best valid {VALID_METRIC} "
            f"{state['best_score']:.4f}), train up to {run.settings['epochs']}, rank")


def checkpoint_action(row: RunProgress) -> str:
    """What a run does with a cell whose epoch checkpoint ``row`` describes."""
    if row.status.startswith("resumable"):
        return f"resume after {row.done}; best valid {VALID_METRIC} so far {row.best}"
    if row.status.startswith(("stopped early", "finished")):
        return f"rank with its trained weights ({row.status})"
    return f"train from the start (checkpoint {row.status})"  # unreadable, or from another checkpoint version


def format_plan(cells: list[PlannedCell]) -> str:
    """The planned cells as a table, with a count of those the command would compute."""
    table = [[cell.method, cell.dataset, cell.seed, cell.action] for cell in cells]
    computed = sum(not cell.action.startswith("skip") for cell in cells)
    downloads = list(dict.fromkeys(path for cell in cells for path in cell.downloads))
    download_text = "".join(f"\n  {path}" for path in downloads)
    return (f"{computed} of {len(cells)} cells would be computed; nothing was run (--dry-run)\n"
            + (f"Files the run would download first (their cells may already be stored: that is known once the "
               f"files are here, since a cell is named by its split):{download_text}\n" if downloads else "")
            + "\n" + tabulate(table, headers=["method", "dataset", "seed", "what the run would do"], tablefmt="github",
                       disable_numparse=True))
