"""A finished run of an ID-based method, rebuilt from its epoch checkpoint for re-ranking analyses.

The analysis scripts here (``history_masking.py``, ``rearec_steps.py``) re-rank a trained model's test users in
ways the leaderboard does not; they never train. This module finds the run's cache from the same method spec,
dataset, profile and seed as ``python -m bench run``, refuses an unfinished run, loads the best weights, and
checks a re-computed leaderboard row against the stored record.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from bench.errors import GRBenchError

METRICS = {"hit@5": "Hit@5", "hit@10": "Hit@10", "ndcg@5": "NDCG@5", "ndcg@10": "NDCG@10"}  # name -> column


@dataclass
class FinishedRun:
    """A trained method with the split, the test users and the resolved spec of its run."""

    spec: str
    method: Any
    split: Any
    users: np.ndarray
    profile: str

    def heading(self, seed: int) -> str:
        return (f"{self.spec} / {self.split.dataset} / profile {self.profile} / seed {seed}: "
                f"{len(self.users)} test users")


def metric_means(targets: np.ndarray, topk: np.ndarray) -> dict[str, float]:
    """The shared evaluator's mean of each metric in :data:`METRICS` over users (no bootstrap)."""
    from bench.evaluate import per_user_metrics, summarize

    summary = summarize(per_user_metrics(targets, topk), bootstrap_samples=0)
    return {name: summary[name]["mean"] for name in METRICS}


def add_run_arguments(parser: argparse.ArgumentParser, method_default: str | None, checked_row: str) -> None:
    """The options that name a finished run, as ``python -m bench run`` names it: ``--method`` (required when
    ``method_default`` is None), ``--dataset``, ``--profile``, ``--seed``, ``--max-test-users``, and ``--out``,
    the results folder whose record ``checked_row`` is checked against."""
    parser.add_argument("--method", required=method_default is None, default=method_default,
                        help="method spec, as given to `python -m bench run`")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--profile", default="quick", help="as for `python -m bench run` (default quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"),
                        help=f"results folder whose record of this run the {checked_row} row is checked against")
    parser.add_argument("--max-test-users", type=int, default=None,
                        help="as for `python -m bench run` (default: the profile's, so the run's own users)")


def finished_checkpoint(path: Path, epochs: int | None) -> dict:
    """The epoch checkpoint at ``path``, which must belong to a run that stopped early or ran all ``epochs``."""
    import torch

    if not path.exists():
        raise GRBenchError(f"{path}: no epoch checkpoint. This script reads a finished run of an epoch-trained "
                           "method from its cache (set GRBENCH_CACHE to the cache the run used) and never trains")
    state = torch.load(path, map_location="cpu", weights_only=False)["state"]
    if not state["stopped"] and (epochs is None or len(state["history"]) < epochs):
        raise GRBenchError(f"{path}: training stopped at epoch {len(state['history'])} without finishing; "
                           "finish it with the same `python -m bench run` command first")
    return state


def load_finished_run(spec: str, dataset: str, profile_name: str, seed: int, max_test_users: int | None,
                      console: Any, progress: Any,
                      why_full_ranking: str = "the analysis needs a score for every item") -> FinishedRun:
    """Rebuild the run of ``spec`` on ``dataset`` from its cache with its best weights; refuses a method that
    does not rank by item scores (``why_full_ranking`` says what the calling analysis needs them for)."""
    from bench.data import load_dataset
    from bench.profiles import get_profile
    from bench.runner import make_method, resolve_methods
    from bench.split import leave_last_out

    profile = get_profile(profile_name)
    (run,) = resolve_methods([spec], profile)
    if run.method.family != "id-based":
        raise GRBenchError(f"{run.spec} is a {run.method.family} method: {why_full_ranking}; this script takes "
                           "ID-based methods (full ranking over item scores)")
    split = leave_last_out(load_dataset(dataset))
    users = split.evaluation_users(max_test_users if max_test_users is not None else profile.max_test_users)
    method, context = make_method(split, run, profile, seed, progress)
    checkpoint = context.cache_dir / "training-state.pt"
    state = finished_checkpoint(checkpoint, run.settings.get("epochs"))
    console.print(f"{run.spec}: best validation NDCG@10 {state['best_score']:.4f} at epoch "
                  f"{state['best_epoch'] + 1} of {len(state['history'])} ({checkpoint})")
    method.fit(split.train_view(), context)  # loads the best weights; trains nothing, since it finished
    return FinishedRun(run.spec, method, split, users, profile.name)


def stored_record_check(out: Path, finished: FinishedRun, seed: int, ndcg_at_10: float, row: str) -> str:
    """Whether ``row``'s NDCG@10 equals a stored record of the same cell in ``out`` (a cache may hold another
    training run of it than the one in the leaderboard, e.g. an older one)."""
    from bench.results import ResultStore

    split = finished.split
    records = [r for r in ResultStore(out).load()
               if (r["method"], r["dataset"], r["profile"], r["seed"], r["split_fingerprint"], r["eval_users"])
               == (finished.spec, split.dataset, finished.profile, seed, split.fingerprint, len(finished.users))]
    if not records:
        return f"no stored record of this cell in {out} to check the {row!r} row against"
    # a cell may be stored twice (a CPU and a GPU run): the cache holds one of them
    equal = [r for r in records if abs(r["metrics"]["ndcg@10"]["mean"] - ndcg_at_10) <= 1e-9]
    if equal:
        return f"the {row!r} row equals the stored record {equal[0]['id']} ({out})"
    stored = ", ".join(f"{r['id']} ({r['device']}) {r['metrics']['ndcg@10']['mean']:.4f}" for r in records)
    return (f"WARNING: the {row!r} NDCG@10 {ndcg_at_10:.4f} differs from every stored record of this cell "
            f"({stored}): this cache holds another training run of it than the ones stored")


def run_main(main: Callable[[], int]) -> NoReturn:
    """Run an analysis script's ``main`` and exit with its status; a GRBenchError ends it with its message
    instead of a traceback, as ``python -m bench`` does."""
    try:
        sys.exit(main())
    except GRBenchError as error:
        sys.exit(f"error: {error}")
