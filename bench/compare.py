"""Paired comparisons of two methods from their stored rankings: per seed over the same users, and over seeds.

The study's claims are comparisons (PauseRec above SFT, above OneRec-Think; the pause ablations against the
default), and a difference between two leaderboard means says nothing about its noise. Here both methods' stored
top-10 lists are scored by :mod:`bench.evaluate` again, user by user, and the difference A - B gets:

- per seed: the paired bootstrap over the users both methods ranked (:func:`bench.evaluate.paired_bootstrap`);
- over seeds: each user's metric averaged over the seeds both methods ran, then the same paired bootstrap over
  users, and how many seeds A won. Seeds are few (3 in the study), so the spread between them is shown as the
  per-seed differences rather than summarised by an interval of its own.

Only records of the same dataset split, profile and device are paired; the rankings files are the source, so a
comparison can be recomputed from ``results/`` alone (``python -m bench compare``, and ``comparisons.md`` beside
the leaderboards for the study's pairs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tabulate import tabulate

from bench.errors import GRBenchError
from bench.evaluate import METRICS, PairedComparison, paired_bootstrap, per_user_metrics
from bench.leaderboard import REDUCED_MARK
from bench.results import ResultKey, read_rankings, record_device

REDUCED_NOTE = (f"{REDUCED_MARK} reduced schedule (CPU profile) on either side: a pipeline check, not evidence for "
                "or against a claim.")

# (A, B) pairs of the study, compared wherever both have rankings; every ``pauserec:<options>`` ablation row is
# also compared with ``pauserec`` (see study_pairs)
STUDY_PAIRS = (("pauserec", "sft"), ("pauserec", "onerec_think"))


@dataclass
class Comparison:
    """A - B on one dataset split, profile and device."""

    a: str
    b: str
    dataset: str
    profile: str
    device: str
    seeds: list[int]
    users: int
    reduced: bool  # either side trained on a reduced CPU schedule: a pipeline check, not evidence for a claim
    per_seed: dict[str, list[float]] = field(default_factory=dict)  # metric -> A - B of each seed, in seed order
    pooled: dict[str, PairedComparison] = field(default_factory=dict)  # metric -> over seeds, paired over users
    per_seed_tests: dict[str, list[PairedComparison]] = field(default_factory=dict)


def user_metrics(results_folder: Path, record: dict) -> dict[str, dict[str, float]]:
    """``{user: {metric: value}}`` of one record, scored again from its rankings file."""
    if not record.get("rankings"):
        raise GRBenchError(f"record {record.get('id')} has no rankings file, so it cannot be paired")
    rows = read_rankings(Path(results_folder) / record["rankings"])
    if not rows:
        return {}
    vectors = per_user_metrics(np.array([row["target"] for row in rows], dtype=object),
                               np.array([row["topk"] for row in rows], dtype=object))
    return {row["user"]: {name: float(vectors[name][n]) for name in METRICS} for n, row in enumerate(rows)}


def compare_records(results_folder: Path, a_records: Iterable[dict], b_records: Iterable[dict]) -> Comparison:
    """Pairs the records of A and B by seed (one dataset split, profile and device) and compares them."""
    by_seed_a = {r["seed"]: r for r in a_records}
    by_seed_b = {r["seed"]: r for r in b_records}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    if not seeds:
        raise GRBenchError(f"the two methods share no seed (A has seeds {sorted(by_seed_a)}, B {sorted(by_seed_b)}); "
                           "nothing to pair")
    first = by_seed_a[seeds[0]]
    keys = {(ResultKey.of(r).dataset, r["split_fingerprint"], r["profile"], record_device(r))
            for s in seeds for r in (by_seed_a[s], by_seed_b[s])}
    if len(keys) != 1:
        raise GRBenchError(f"records of different splits, profiles or devices cannot be paired: {sorted(keys)}")
    a_users = [user_metrics(results_folder, by_seed_a[s]) for s in seeds]
    b_users = [user_metrics(results_folder, by_seed_b[s]) for s in seeds]
    common = sorted(set.intersection(*(set(u) for u in a_users + b_users)))
    if not common:
        raise GRBenchError("the two methods ranked no user in common")
    reduced = any(r.get("reduced_schedule") for s in seeds for r in (by_seed_a[s], by_seed_b[s]))
    result = Comparison(first["method"], by_seed_b[seeds[0]]["method"], first["dataset"], first["profile"],
                        record_device(first), seeds, len(common), reduced)
    for metric in METRICS:
        a = np.array([[users[u][metric] for u in common] for users in a_users])  # (seeds, users)
        b = np.array([[users[u][metric] for u in common] for users in b_users])
        result.per_seed[metric] = [float(x) for x in (a - b).mean(axis=1)]
        result.per_seed_tests[metric] = [paired_bootstrap(a[n], b[n]) for n in range(len(seeds))]
        result.pooled[metric] = paired_bootstrap(a.mean(axis=0), b.mean(axis=0))
    return result


def _groups(records: Iterable[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """{(dataset, split, profile, device): {method spec: [records]}}."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for record in records:
        groups[(record["dataset"], record["split_fingerprint"], record["profile"], record_device(record))][
            record["method"]].append(record)
    return groups


def study_pairs(methods: Iterable[str]) -> list[tuple[str, str]]:
    """The study's pairs present among ``methods``, then every pauserec ablation against pauserec."""
    present = set(methods)
    pairs = [(a, b) for a, b in STUDY_PAIRS if a in present and b in present]
    if "pauserec" in present:
        pairs += [(m, "pauserec") for m in sorted(present) if m.startswith("pauserec:")]
    return pairs


def study_comparisons(results_folder: Path, records: list[dict]) -> list[Comparison]:
    """Every study pair wherever both methods have records with rankings for a common seed."""
    comparisons = []
    for _, by_method in sorted(_groups(records).items()):
        for a, b in study_pairs(by_method):
            try:
                comparisons.append(compare_records(results_folder, by_method[a], by_method[b]))
            except GRBenchError:
                continue  # no common seed, or no rankings: nothing to say about this pair here
    return comparisons


def _cell(test: PairedComparison) -> str:
    return f"{test.mean_difference:+.4f} [{test.ci_low:+.4f}, {test.ci_high:+.4f}], p={test.p_value:.3f}"


def comparison_table(comparisons: list[Comparison], metrics: Iterable[str] = METRICS) -> str:
    """One row per (comparison, metric): pooled difference with its interval, seeds won, per-seed differences."""
    rows = []
    for c in comparisons:
        for metric in metrics:
            won = sum(d > 0 for d in c.per_seed[metric])
            mark = f" {REDUCED_MARK}" if c.reduced else ""
            rows.append([c.dataset, f"{c.profile}, {c.device}{mark}", f"{c.a} - {c.b}", metric, _cell(c.pooled[metric]),
                         f"{won} of {len(c.seeds)}", ", ".join(f"{d:+.4f}" for d in c.per_seed[metric]),
                         ", ".join(map(str, c.seeds)), c.users])
    if not rows:
        return "No pair of the study has results for a common seed yet.\n"
    headers = ["Dataset", "Profile, device", "A - B", "Metric", "Mean A - B [95% CI], p (users, seeds averaged)",
               "Seeds A > B", "A - B per seed", "Seeds", "Users"]
    note = f"\n{REDUCED_NOTE}\n" if any(c.reduced for c in comparisons) else ""
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n" + note


COMPARISONS_LEGEND = (
    "Paired comparisons of the study's claims, recomputed from the stored rankings: PauseRec against SFT and "
    "OneRec-Think, and every PauseRec ablation row against the default PauseRec, on the same users, dataset "
    "split, profile and device. Each user's metric is averaged over the seeds both methods ran; the interval "
    "and the two-sided p-value are a paired bootstrap over users (1,000 resamples). 'A - B per seed' shows "
    "the spread between seeds. Generated by `python -m bench leaderboard`: do not edit by hand.")
