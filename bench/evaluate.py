"""The only place metrics are computed: Hit@K and NDCG@K from per-user ranked lists.

One target per user (leave-last-out), so Hit@K is 1 when the target is in the top K and
NDCG@K is ``1 / log2(rank + 1)`` at its 1-based rank (the ideal DCG is 1). Per-user vectors are
kept so that confidence intervals and method comparisons can be paired over users.

Beside them, two facts about the lists themselves (:func:`list_stats`), not about hits: how much of the
catalogue the lists cover, and how much of each list the user's own history takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CUTOFFS = (5, 10)
METRICS = tuple(f"{name}@{k}" for name in ("hit", "ndcg") for k in CUTOFFS)
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0


def target_ranks(targets: np.ndarray, topk: np.ndarray) -> np.ndarray:
    """1-based rank of each user's target in its list, 0 where it is absent."""
    targets = np.asarray(targets)
    topk = np.asarray(topk)
    if topk.ndim != 2 or len(topk) != len(targets):
        raise ValueError(f"topk must be (users, K) for {len(targets)} users, got shape {topk.shape}")
    hits = topk == targets[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)


def per_user_metrics(targets: np.ndarray, topk: np.ndarray, cutoffs: Sequence[int] = CUTOFFS
                     ) -> dict[str, np.ndarray]:
    """``{"hit@5": vector, "ndcg@5": vector, ...}`` with one value per user."""
    topk = np.asarray(topk)
    if topk.shape[1] < max(cutoffs):
        raise ValueError(f"ranked lists hold {topk.shape[1]} items, metrics need {max(cutoffs)}")
    ranks = target_ranks(targets, topk)
    found = ranks > 0
    gain = np.zeros(len(ranks))
    gain[found] = 1.0 / np.log2(ranks[found] + 1.0)
    hit = {k: found & (ranks <= k) for k in cutoffs}
    vectors = {f"hit@{k}": hit[k].astype(float) for k in cutoffs}
    vectors.update({f"ndcg@{k}": np.where(hit[k], gain, 0.0) for k in cutoffs})
    return vectors


def bootstrap_ci(values: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over users."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    index = rng.integers(len(values), size=(samples, len(values)))
    means = values[index].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """Mean difference a - b over the same users, its bootstrap interval and a two-sided p-value."""

    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                     level: float = 0.95) -> PairedComparison:
    """Paired bootstrap over users of two methods' per-user metric vectors (same users, same order)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired vectors differ in shape: {a.shape} vs {b.shape}")
    difference = a - b
    rng = np.random.default_rng(seed)
    index = rng.integers(len(difference), size=(samples, len(difference)))
    means = difference[index].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    # Two-sided p-value: how often the resampled difference falls on the other side of zero.
    p_value = min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean()))
    return PairedComparison(float(difference.mean()), float(low), float(high), float(p_value))


def summarize(vectors: dict[str, np.ndarray], bootstrap_samples: int = BOOTSTRAP_SAMPLES) -> dict[str, dict]:
    """Mean and 95% bootstrap interval of each metric: ``{"ndcg@10": {"mean", "ci_low", "ci_high"}}``."""
    summary = {}
    for name, values in vectors.items():
        low, high = bootstrap_ci(values, samples=bootstrap_samples) if bootstrap_samples else (None, None)
        summary[name] = {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high}
    return summary


def check_rankings(topk: np.ndarray, n_users: int, k: int, n_items: int, method: str) -> np.ndarray:
    """Validates a method's output: (users, k) distinct dense item ids in ``1..n_items``."""
    topk = np.asarray(topk)
    if topk.shape != (n_users, k):
        raise ValueError(f"{method}.recommend returned shape {topk.shape}, expected ({n_users}, {k})")
    if not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"{method}.recommend returned dtype {topk.dtype}, expected integer item ids")
    if len(topk) and (topk.min() < 1 or topk.max() > n_items):
        raise ValueError(f"{method}.recommend returned item ids outside 1..{n_items}")
    sorted_rows = np.sort(topk, axis=1)
    if k > 1 and (sorted_rows[:, 1:] == sorted_rows[:, :-1]).any():
        raise ValueError(f"{method}.recommend returned a list with a repeated item")
    return topk.astype(np.int64)


def list_stats(topk: np.ndarray, histories: Sequence[np.ndarray], n_items: int) -> dict[str, float]:
    """``coverage@K``: the share of the catalogue's ``n_items`` items in at least one user's top K; near 0 when a
    model collapses onto a few items whatever the user (LLM SFT on ml-100k did). ``history@K``: the mean share of
    a top K taken by items already in that user's history; the evaluator keeps them as candidates, so on data
    without repeat purchases (the Amazon files, ml-100k) every such slot is a wasted one."""
    topk = np.asarray(topk)
    if topk.ndim != 2 or len(topk) != len(histories):
        raise ValueError(f"topk must be (users, K) for {len(histories)} users, got shape {topk.shape}")
    k = topk.shape[1]
    in_history = [np.isin(row, history).mean() for row, history in zip(topk, histories)]
    return {f"coverage@{k}": len(np.unique(topk)) / n_items,
            f"history@{k}": float(np.mean(in_history)) if in_history else 0.0}
