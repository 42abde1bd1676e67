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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import finished_run  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from tabulate import tabulate

    from bench.runner import TOP_K, make_progress

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    finished_run.add_run_arguments(parser, None, "'ours'")
    args = parser.parse_args(argv)

    console = Console(stderr=True)
    with make_progress(console) as progress:
        finished = finished_run.load_finished_run(
            args.method, args.dataset, args.profile, args.seed, args.max_test_users, console, progress,
            "masking needs each user's ranking deeper than 10 + the history's length, which a beam search of "
            "width 10 does not give")
        method, split, users = finished.method, finished.split, finished.users
        histories = split.test_histories(users)
        targets = split.test_targets(users)
        ours = np.zeros((len(users), TOP_K), dtype=np.int64)
        masked = np.zeros_like(ours)
        task = progress.add_task(f"rank {finished.spec} / {split.dataset}", total=len(users))
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
        means[protocol] = finished_run.metric_means(targets, topk)
        rows.append([protocol, *(f"{value:.4f}" for value in means[protocol].values())])
    print(finished.heading(args.seed))
    print(tabulate(rows, headers=["protocol", *finished_run.METRICS.values()], tablefmt="github"))
    ours_ndcg = means["ours: history items are candidates"]["ndcg@10"]
    print(finished_run.stored_record_check(args.out, finished, args.seed, ours_ndcg, "ours"))
    print(f"our top {TOP_K} held history items for {int((in_history > 0).sum())} of {len(users)} users "
          f"({in_history.mean():.2f} a user on average); {target_in_history} test targets are history items")
    return 0


if __name__ == "__main__":
    finished_run.run_main(main)
