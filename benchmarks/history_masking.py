"""A finished run's test metrics under two protocols: ours (history items stay candidates) and history masked.

Why: GRBench ranks every item, the user's own history included. Much of the sequential-recommendation
literature removes each user's history items before taking the top K instead (the S3-Rec code and the many
papers built on it do). A published number measured that way is not comparable to ours, and the size of the
difference depends on how often a model puts items the user already has at the top. This script measures that
difference for one trained model, so that a gap to a reference can be put down to the protocol or ruled out.
It reads the model from the run's epoch checkpoint (it never trains) and writes nothing; the leaderboards keep
our protocol.

    GRBENCH_CACHE=/path/to/cache python benchmarks/history_masking.py --method "sasrec:loss=bce-all,rows=users" \\
        --dataset seq:../shared/data/amazon2014-s3rec/Beauty.txt --profile small

The row "ours" must equal the run's leaderboard row (same model, users and evaluator); the script prints
both protocols' Hit@5/10 and NDCG@5/10, how many users' top 10 held history items, and how many test targets
are history items (masking can only hurt those users).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.errors import GRBenchError  # noqa: E402

BATCH = 256


def drop_history(ranked: np.ndarray, histories: Sequence[np.ndarray], k: int) -> np.ndarray:
    """The first ``k`` items of each row of ``ranked`` that are not in that row's history.

    ``ranked`` must be deep enough (``k`` plus the history's length suffices); a row that runs out raises.
    """
    masked = np.zeros((len(ranked), k), dtype=np.int64)
    for row, (items, history) in enumerate(zip(ranked, histories)):
        kept = items[~np.isin(items, history)][:k]
        if len(kept) < k:
            raise ValueError(f"row {row}: only {len(kept)} items outside the history in a ranking of {len(items)}")
        masked[row] = kept
    return masked


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


def stored_record_check(out: Path, spec: str, split: Any, profile: str, seed: int, n_users: int,
                        ndcg_at_10: float) -> str:
    """Whether the 'ours' row equals a stored record of the same cell in ``out`` (a cache may hold another
    training run of it than the one in the leaderboard, e.g. an older one)."""
    from bench.results import ResultStore

    records = [r for r in ResultStore(out).load()
               if (r["method"], r["dataset"], r["profile"], r["seed"], r["split_fingerprint"], r["eval_users"])
               == (spec, split.dataset, profile, seed, split.fingerprint, n_users)]
    if not records:
        return f"no stored record of this cell in {out} to check the 'ours' row against"
    # a cell may be stored twice (a CPU and a GPU run): the cache holds one of them
    equal = [r for r in records if abs(r["metrics"]["ndcg@10"]["mean"] - ndcg_at_10) <= 1e-9]
    if equal:
        return f"the 'ours' row equals the stored record {equal[0]['id']} ({out})"
    stored = ", ".join(f"{r['id']} ({r['device']}) {r['metrics']['ndcg@10']['mean']:.4f}" for r in records)
    return (f"WARNING: the 'ours' NDCG@10 {ndcg_at_10:.4f} differs from every stored record of this cell "
            f"({stored}): this cache holds another training run of it than the ones stored")


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from tabulate import tabulate

    from bench.data import load_dataset
    from bench.evaluate import per_user_metrics, summarize
    from bench.profiles import get_profile
    from bench.runner import TOP_K, make_method, make_progress, resolve_methods
    from bench.split import leave_last_out

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, help="method spec, as given to `python -m bench run`")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--profile", default="quick", help="as for `python -m bench run` (default quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"),
                        help="results folder whose record of this run the 'ours' row is checked against")
    parser.add_argument("--max-test-users", type=int, default=None,
                        help="as for `python -m bench run` (default: the profile's, so the run's own users)")
    args = parser.parse_args(argv)

    console = Console(stderr=True)
    profile = get_profile(args.profile)
    (run,) = resolve_methods([args.method], profile)
    if run.method.family != "id-based":
        raise GRBenchError(f"{run.spec} is a {run.method.family} method: masking needs each user's ranking "
                           "deeper than 10 + the history's length, which a beam search of width 10 does not give; "
                           "this script takes ID-based methods (full ranking over item scores)")
    split = leave_last_out(load_dataset(args.dataset))
    users = split.evaluation_users(args.max_test_users if args.max_test_users is not None
                                   else profile.max_test_users)
    with make_progress(console) as progress:
        method, context = make_method(split, run, profile, args.seed, progress)
        checkpoint = context.cache_dir / "training-state.pt"
        state = finished_checkpoint(checkpoint, run.settings.get("epochs"))
        console.print(f"{run.spec}: best validation NDCG@10 {state['best_score']:.4f} at epoch "
                      f"{state['best_epoch'] + 1} of {len(state['history'])} ({checkpoint})")
        method.fit(split.train_view(), context)  # loads the best weights; trains nothing, since it finished

        histories = split.test_histories(users)
        targets = split.test_targets(users)
        ours = np.zeros((len(users), TOP_K), dtype=np.int64)
        masked = np.zeros_like(ours)
        task = progress.add_task(f"rank {run.spec} / {split.dataset}", total=len(users))
        for start in range(0, len(users), BATCH):
            window = slice(start, min(start + BATCH, len(users)))
            depth = min(split.n_items, TOP_K + max(len(h) for h in histories[window]))
            ranked = np.asarray(method.recommend(histories[window], depth, users[window]))
            ours[window] = ranked[:, :TOP_K]
            masked[window] = drop_history(ranked, histories[window], TOP_K)
            progress.advance(task, window.stop - window.start)

    in_history = np.array([np.isin(top, h).sum() for top, h in zip(ours, histories)])
    target_in_history = sum(int(t in h) for t, h in zip(targets, histories))
    rows, means = [], {}
    for protocol, topk in (("ours: history items are candidates", ours), ("history masked", masked)):
        means[protocol] = {name: summary["mean"] for name, summary in
                           summarize(per_user_metrics(targets, topk), bootstrap_samples=0).items()}
        rows.append([protocol, *(f"{means[protocol][name]:.4f}" for name in ("hit@5", "hit@10", "ndcg@5",
                                                                              "ndcg@10"))])
    print(f"{run.spec} / {split.dataset} / profile {profile.name} / seed {args.seed}: {len(users)} test users")
    print(tabulate(rows, headers=["protocol", "Hit@5", "Hit@10", "NDCG@5", "NDCG@10"], tablefmt="github"))
    print(stored_record_check(args.out, run.spec, split, profile.name, args.seed, len(users),
                              means["ours: history items are candidates"]["ndcg@10"]))
    print(f"our top {TOP_K} held history items for {int((in_history > 0).sum())} of {len(users)} users "
          f"({in_history.mean():.2f} a user on average); {target_in_history} test targets are history items")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GRBenchError as error:
        sys.exit(f"error: {error}")
