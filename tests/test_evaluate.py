from __future__ import annotations

import math

import numpy as np
import pytest

from bench.compat import import_recbole
from bench.evaluate import (
    bootstrap_ci,
    check_rankings,
    list_stats,
    paired_bootstrap,
    per_user_metrics,
    summarize,
    target_ranks,
)


def test_known_values_by_hand():
    targets = np.array([7, 3, 9, 4])
    topk = np.array([
        [7, 1, 2, 5, 6, 8, 10, 11, 12, 13],  # rank 1
        [1, 2, 3, 5, 6, 8, 10, 11, 12, 13],  # rank 3
        [1, 2, 3, 5, 6, 8, 10, 11, 12, 9],   # rank 10
        [1, 2, 3, 5, 6, 8, 10, 11, 12, 13],  # absent
    ])
    assert list(target_ranks(targets, topk)) == [1, 3, 10, 0]
    vectors = per_user_metrics(targets, topk)
    assert list(vectors["hit@5"]) == [1, 1, 0, 0]
    assert list(vectors["hit@10"]) == [1, 1, 1, 0]
    assert vectors["ndcg@5"] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert vectors["ndcg@10"] == pytest.approx([1.0, 0.5, 1 / math.log2(11), 0.0])
    assert list(vectors) == ["hit@5", "hit@10", "ndcg@5", "ndcg@10"]


def test_agrees_with_recbole_metrics_on_random_rankings():
    metrics = import_recbole("recbole.evaluator.metrics")
    rng = np.random.default_rng(0)
    n_users, n_items, k = 500, 40, 10
    topk = np.stack([rng.permutation(n_items)[:k] + 1 for _ in range(n_users)])
    targets = rng.integers(1, n_items + 1, size=n_users)
    ours = per_user_metrics(targets, topk)
    pos_index = topk == targets[:, None]  # RecBole's input: hit matrix of the ranked lists
    hit = metrics.Hit.metric_info(None, pos_index)
    ndcg = metrics.NDCG.metric_info(None, pos_index, np.ones(n_users, dtype=int))
    assert pos_index.any(axis=1).sum() > 50  # the check is not vacuous
    for cut in (5, 10):
        np.testing.assert_allclose(ours[f"hit@{cut}"], hit[:, cut - 1])
        np.testing.assert_allclose(ours[f"ndcg@{cut}"], ndcg[:, cut - 1])


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_users():
    rng = np.random.default_rng(1)
    small = (rng.random(100) < 0.3).astype(float)
    large = (rng.random(10_000) < 0.3).astype(float)
    low, high = bootstrap_ci(small)
    assert low < small.mean() < high
    large_low, large_high = bootstrap_ci(large)
    assert (large_high - large_low) < (high - low) / 3


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(2)
    a = (rng.random(2000) < 0.4).astype(float)
    b = np.where(rng.random(2000) < 0.5, 0.0, a)  # b loses half of a's hits
    better = paired_bootstrap(a, b)
    assert better.ci_low > 0 and better.p_value < 0.01
    same = paired_bootstrap(a, a.copy())
    assert same.mean_difference == 0 and same.p_value == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        paired_bootstrap(a, b[:10])


def test_summarize_reports_mean_and_interval():
    summary = summarize({"hit@10": np.array([1.0, 0.0, 1.0, 1.0])}, bootstrap_samples=200)
    assert summary["hit@10"]["mean"] == 0.75
    assert 0 <= summary["hit@10"]["ci_low"] <= 0.75 <= summary["hit@10"]["ci_high"] <= 1


@pytest.mark.parametrize(
    "topk, message",
    [
        (np.array([[1, 2, 3]]), r"shape \(1, 3\), expected \(1, 4\)"),
        (np.array([[1, 2, 2, 3]]), "repeated item"),
        (np.array([[0, 1, 2, 3]]), "outside 1..9"),
        (np.array([[1, 2, 3, 10]]), "outside 1..9"),
        (np.array([[1.0, 2, 3, 4]]), "integer item ids"),
    ],
)
def test_invalid_rankings_are_rejected(topk, message):
    with pytest.raises(ValueError, match=message):
        check_rankings(topk, n_users=1, k=4, n_items=9, method="m")


def test_list_stats_by_hand():
    """Coverage: items 1, 2, 3, 5 of 10 appear; history share: user 0 has 1 of its 2 slots, user 1 none."""
    topk = np.array([[1, 2], [3, 5]])
    stats = list_stats(topk, [np.array([2, 9]), np.array([4])], n_items=10)
    assert stats == {"coverage@2": pytest.approx(0.4), "history@2": pytest.approx(0.25)}
    collapsed = list_stats(np.array([[1, 2]] * 50), [np.array([7])] * 50, n_items=100)
    assert collapsed["coverage@2"] == pytest.approx(0.02) and collapsed["history@2"] == 0.0
    with pytest.raises(ValueError, match="for 3 users"):
        list_stats(topk, [np.array([1])] * 3, n_items=10)
