"""What each of a finished ReaRec run's reasoning steps ranks on its own, next to the run's own ranking.

Why: ReaRec's claim is that thinking ``K`` latent steps after the last item ranks better than SASRec's single
state. A trained ReaRec model holds both: step 0 is the SASRec state of the same encoder, steps ``1..K`` are
its thoughts, and the run ranks with their mean (ERL) or the last one (PRL). Ranking the test users with each
state alone shows whether the thoughts add to step 0 or merely repeat it, which a leaderboard row cannot; for
ERL, the mean of all steps but one shows what each step adds to the ensemble. It
does not replace a control trained without reasoning (``rearec:reasoning_steps=0``): step 0 here was trained
beside the thoughts. It reads the model from the run's epoch checkpoint (it never trains) and writes nothing.

    GRBENCH_CACHE=/path/to/cache python benchmarks/rearec_steps.py \\
        --dataset seq:../shared/data/amazon2014-s3rec/Beauty.txt --profile small

Prints Hit@5/10 and NDCG@5/10 for each state (and, for ERL, each leave-one-step-out mean), how many of each
state's top 10 items step 0's top 10 shares on average, and checks the run's own row against its stored record.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.errors import GRBenchError  # noqa: E402
from benchmarks import finished_run  # noqa: E402

BATCH = 256


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from tabulate import tabulate

    from bench.runner import TOP_K, make_progress

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    finished_run.add_run_arguments(parser, "rearec", "run's own")
    args = parser.parse_args(argv)
    if args.method.split(":")[0] != "rearec":
        raise GRBenchError(f"{args.method}: this script ranks with ReaRec's reasoning steps; give a rearec spec")

    console = Console(stderr=True)
    with make_progress(console) as progress:
        finished = finished_run.load_finished_run(args.method, args.dataset, args.profile, args.seed,
                                                  args.max_test_users, console, progress)
        method, split, users = finished.method, finished.split, finished.users
        encoder = method.encoder
        own = "mean of all steps (ERL)" if encoder.combine == "mean" else "last step (PRL)"
        every_step = range(encoder.steps + 1)
        states: dict[str, str | tuple[int, ...]] = {f"step {k}" + (" (SASRec state)" if k == 0 else ""): (k,)
                                                    for k in every_step}
        if encoder.combine == "mean" and encoder.steps > 0:  # what each step adds to ERL's ensemble
            states |= {f"mean without step {k}": tuple(j for j in every_step if j != k) for k in every_step}
        states[f"{own}: the run's ranking"] = encoder.combine
        histories, targets = split.test_histories(users), split.test_targets(users)
        rankings = {}
        task = progress.add_task(f"rank {finished.spec} / {split.dataset}", total=len(states) * len(users))
        for label, combine in states.items():
            encoder.combine = combine
            rankings[label] = np.zeros((len(users), TOP_K), dtype=np.int64)
            for start in range(0, len(users), BATCH):
                window = slice(start, min(start + BATCH, len(users)))
                rankings[label][window] = method.recommend(histories[window], TOP_K, users[window])
                progress.advance(task, window.stop - window.start)

    rows, means = [], {}
    first = rankings[next(iter(states))]
    for label, topk in rankings.items():
        means[label] = finished_run.metric_means(targets, topk)
        shared = np.mean([len(np.intersect1d(a, b)) for a, b in zip(topk, first)])
        rows.append([label, *(f"{value:.4f}" for value in means[label].values()), f"{shared:.2f}"])
    print(finished.heading(args.seed))
    headers = ["ranked with", *finished_run.METRICS.values(), f"items shared with step 0's top {TOP_K}"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    own_label = list(states)[-1]
    own_ndcg = means[own_label]["ndcg@10"]
    print(finished_run.stored_record_check(args.out, finished, args.seed, own_ndcg, own_label.split(":")[0]))
    return 0


if __name__ == "__main__":
    finished_run.run_main(main)
