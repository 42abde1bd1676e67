"""Paired comparisons of two methods from their stored rankings: per seed over the same users, and over seeds.

The study's claims are comparisons (PauseRec above SFT, above OneRec-Think; the pause ablations against the
default), and a difference between two leaderboard means says nothing about its noise. Here both methods' stored
top-10 lists are scored by :mod:`bench.evaluate` again, user by user, and the difference A - B gets:

- per seed: the paired bootstrap over the users both methods ranked (:func:`bench.evaluate.paired_bootstrap`);
- over seeds: each user's metric averaged over every seed compared on each side (see below), then the same
  paired bootstrap over users, and how many seeds A won. Seeds are few (3 in the study), so the spread between
  them is shown as the per-seed differences rather than summarised by an interval of its own.

When both methods ran the same seeds, seed s of A is set against seed s of B. When they did not (five ReaRec
seeds against one SASRec run), each seed of A is set against B's mean over its seeds: pairing only the seeds
both happen to share would drop runs, and seed s of two different models shares nothing but its number. The
exception is seeds whose models were built from the same trained parts (:func:`trained_parts`: the same SID
table, or a cached stage both reused): a PauseRec ablation starts from the SFT checkpoint of default PauseRec's
seed 0, so the ablation's seed 0 is compared with that seed alone, and the other seeds of either side are left
out (and named): against a mean over seeds, the ablation's difference would mix the effect of its option with
the spread between SFT checkpoints.

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

# (A, B) pairs compared wherever both have rankings: the study's claims (PauseRec above SFT and OneRec-Think),
# then ReaRec's (its latent reasoning above SASRec, and above its own encoder without reasoning steps, for both
# of its learning schemes, ERL and PRL; then PRL against ERL); every ``pauserec:<options>`` ablation row is also
# compared with ``pauserec`` (see study_pairs)
STUDY_PAIRS = (("pauserec", "sft"), ("pauserec", "onerec_think"),
               ("rearec", "sasrec"), ("rearec", "rearec:reasoning_steps=0"),
               ("rearec:scheme=prl", "sasrec"), ("rearec:scheme=prl", "rearec"))


@dataclass
class Comparison:
    """A - B on one dataset split, profile and device."""

    a: str
    b: str
    dataset: str
    profile: str
    device: str
    a_seeds: list[int]
    b_seeds: list[int]
    users: int
    reduced: bool  # either side trained on a reduced CPU schedule: a pipeline check, not evidence for a claim
    # seeds left out because the others were paired on the trained parts they share (see the module docstring)
    a_left_out: list[int] = field(default_factory=list)
    b_left_out: list[int] = field(default_factory=list)
    # metric -> A - B of each seed of A, in seed order (against B's same seed when matched, else B's seed mean)
    per_seed: dict[str, list[float]] = field(default_factory=dict)
    pooled: dict[str, PairedComparison] = field(default_factory=dict)  # metric -> over seeds, paired over users
    per_seed_tests: dict[str, list[PairedComparison]] = field(default_factory=dict)

    @property
    def matched(self) -> bool:
        """Both methods ran the same seeds, so seed s of A is paired with seed s of B."""
        return self.a_seeds == self.b_seeds

    def seeds_text(self) -> str:
        seeds = lambda ss: ", ".join(map(str, ss))  # noqa: E731
        if self.matched and (self.a_left_out or self.b_left_out):
            left_out = "; ".join(f"{side} {seeds(left)}" for side, left in (("A", self.a_left_out),
                                                                             ("B", self.b_left_out)) if left)
            return f"{seeds(self.a_seeds)} (built from shared trained parts; left out: {left_out})"
        if self.matched:
            return seeds(self.a_seeds)
        return f"A {seeds(self.a_seeds)}; B {seeds(self.b_seeds)} (each A seed against B's mean)"


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


def trained_parts(record: dict) -> set[str]:
    """What a record's model was built from that another record's can share: its SID table (by fingerprint) and
    the cached training stages its report names (by folder, which is the stage's key)."""
    report = record.get("report") or {}
    parts = {f"sids-{fingerprint}"} if (fingerprint := (report.get("sids") or {}).get("fingerprint")) else set()
    stages = report.get("stages") or {}
    return parts | {Path(stage["folder"]).name for stage in stages.values()
                    if isinstance(stage, dict) and stage.get("folder")}


def seeds_sharing_trained_parts(by_seed_a: dict[int, dict], by_seed_b: dict[int, dict]) -> list[int]:
    """The seeds both ran whose two models share a trained part (:func:`trained_parts`)."""
    return [seed for seed in sorted(by_seed_a) if seed in by_seed_b
            and trained_parts(by_seed_a[seed]) & trained_parts(by_seed_b[seed])]


def compare_records(results_folder: Path, a_records: Iterable[dict], b_records: Iterable[dict]) -> Comparison:
    """Compares every seed of A with every seed of B (one dataset split, profile and device), paired over users;
    where the two ran different seeds but some of them share trained parts, only those seeds, seed with seed."""
    by_seed_a = {r["seed"]: r for r in a_records}
    by_seed_b = {r["seed"]: r for r in b_records}
    if not by_seed_a or not by_seed_b:
        raise GRBenchError(f"nothing to pair: A has {len(by_seed_a)} records, B {len(by_seed_b)}")
    a_seeds, b_seeds = sorted(by_seed_a), sorted(by_seed_b)
    a_left_out: list[int] = []
    b_left_out: list[int] = []
    if a_seeds != b_seeds and (shared := seeds_sharing_trained_parts(by_seed_a, by_seed_b)):
        a_left_out, b_left_out = [s for s in a_seeds if s not in shared], [s for s in b_seeds if s not in shared]
        a_seeds = b_seeds = shared
    records = [by_seed_a[s] for s in a_seeds] + [by_seed_b[s] for s in b_seeds]
    keys = {(ResultKey.of(r).dataset, r["split_fingerprint"], r["profile"], record_device(r)) for r in records}
    if len(keys) != 1:
        raise GRBenchError(f"records of different splits, profiles or devices cannot be paired: {sorted(keys)}")
    a_users = [user_metrics(results_folder, by_seed_a[s]) for s in a_seeds]
    b_users = [user_metrics(results_folder, by_seed_b[s]) for s in b_seeds]
    common = sorted(set.intersection(*(set(u) for u in a_users + b_users)))
    if not common:
        raise GRBenchError("the two methods ranked no user in common")
    first = records[0]
    result = Comparison(first["method"], by_seed_b[b_seeds[0]]["method"], first["dataset"], first["profile"],
                        record_device(first), a_seeds, b_seeds, len(common),
                        reduced=any(r.get("reduced_schedule") for r in records), a_left_out=a_left_out,
                        b_left_out=b_left_out)
    for metric in METRICS:
        a = np.array([[users[u][metric] for u in common] for users in a_users])  # (A's seeds, users)
        b = np.array([[users[u][metric] for u in common] for users in b_users])  # (B's seeds, users)
        against = b if result.matched else np.broadcast_to(b.mean(axis=0), a.shape)
        result.per_seed[metric] = [float(x) for x in (a - against).mean(axis=1)]
        result.per_seed_tests[metric] = [paired_bootstrap(a[n], against[n]) for n in range(len(a_seeds))]
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
    """The pairs of :data:`STUDY_PAIRS` present among ``methods``, then every pauserec ablation against pauserec."""
    present = set(methods)
    pairs = [(a, b) for a, b in STUDY_PAIRS if a in present and b in present]
    if "pauserec" in present:
        pairs += [(m, "pauserec") for m in sorted(present) if m.startswith("pauserec:")]
    return pairs


def study_comparisons(results_folder: Path, records: list[dict]) -> list[Comparison]:
    """Every study pair wherever both methods have records with rankings on one split, profile and device."""
    comparisons = []
    for _, by_method in sorted(_groups(records).items()):
        for a, b in study_pairs(by_method):
            try:
                comparisons.append(compare_records(results_folder, by_method[a], by_method[b]))
            except GRBenchError:
                continue  # no rankings, or no user in common: nothing to say about this pair here
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
                         f"{won} of {len(c.a_seeds)}", ", ".join(f"{d:+.4f}" for d in c.per_seed[metric]),
                         c.seeds_text(), c.users])
    if not rows:
        return "No pair of the study has results on one split, profile and device yet.\n"
    headers = ["Dataset", "Profile, device", "A - B", "Metric", "Mean A - B [95% CI], p (users, seeds averaged)",
               "Seeds A > B", "A - B per seed", "Seeds", "Users"]
    note = f"\n{REDUCED_NOTE}\n" if any(c.reduced for c in comparisons) else ""
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n" + note


COMPARISONS_LEGEND = (
    "Paired comparisons of the claims under test, recomputed from the stored rankings: PauseRec against SFT and "
    "OneRec-Think, ReaRec (ERL and PRL) against SASRec, ERL against its own encoder without reasoning steps, PRL "
    "against ERL, and every PauseRec ablation row against the default PauseRec, on the same users, dataset split, "
    "profile and device. Each "
    "user's metric is averaged over the seeds compared on each side; the interval and the two-sided p-value are a "
    "paired bootstrap over users (1,000 resamples). 'A - B per seed' shows the spread between seeds: seed "
    "against seed where both ran the same seeds, else each seed of A against B's mean; but where the two ran "
    "different seeds and some seeds' models share trained parts (the same SID table or cached stage, as a "
    "PauseRec ablation shares the SFT checkpoint of PauseRec's seed 0), only those seeds, seed against seed, and "
    "the Seeds column names the seeds left out. Generated by "
    "`python -m bench leaderboard`: do not edit by hand.")
