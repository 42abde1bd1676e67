"""Random floor: K distinct items drawn uniformly per user from the run's seeded generator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.registry import Method, RunContext, TrainingInputs, register_method
from bench.split import TrainData


@register_method
class RandomItems(Method):
    name = "random"
    family = "baseline"
    description = "uniformly random items (chance floor)"
    has_training_schedule = False

    def fit(self, data: TrainData, context: RunContext) -> None:
        self.n_items = data.n_items

    def training_inputs(self, data: TrainData) -> TrainingInputs:
        return {}  # it learns the catalog size only, from no user's events

    def recommend(self, histories: Sequence[np.ndarray], k: int, users: np.ndarray) -> np.ndarray:
        if k > self.n_items:
            raise ValueError(f"cannot draw {k} distinct items from {self.n_items}")
        # argpartition of uniform keys = k distinct items per row without a Python loop
        keys = self.rng.random((len(histories), self.n_items))
        picks = np.argpartition(keys, k - 1, axis=1)[:, :k]
        return picks + 1
