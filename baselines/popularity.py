"""Popularity floor: the K items bought most often in the training sequences, the same for every user.

Counts come from training sequences only (validation and test targets are never counted), so the
floor leaks nothing; ties go to the lower item id for determinism.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.registry import Method, RunContext, TrainingInputs, register_method
from bench.split import TrainData


def counted_sequences(data: TrainData) -> list[np.ndarray]:
    """The item sequences whose events popularity counts, one per user (shared with the leakage audit)."""
    return [np.asarray(seq, dtype=np.int64) for seq in data.train_sequences]


@register_method
class Popularity(Method):
    name = "pop"
    family = "baseline"
    description = "most popular training items (sanity floor)"
    has_training_schedule = False

    def fit(self, data: TrainData, context: RunContext) -> None:
        counts = np.bincount(np.concatenate(counted_sequences(data) + [np.zeros(0, dtype=np.int64)]),
                             minlength=data.n_items + 1).astype(float)
        counts[0] = -np.inf  # padding is never recommended
        self.ranking = np.argsort(-counts, kind="stable")[: data.n_items]

    def training_inputs(self, data: TrainData) -> TrainingInputs:
        return {"popularity counts": [(user, seq.tolist()) for user, seq in enumerate(counted_sequences(data))]}

    def recommend(self, histories: Sequence[np.ndarray], k: int, users: np.ndarray) -> np.ndarray:
        return np.tile(self.ranking[:k], (len(histories), 1))
