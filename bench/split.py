"""The one leave-last-out split every method is trained and scored on.

Per user, events in time order (ties kept in source order): train on ``items[:-2]``, validate on
``items[-2]`` given ``items[:-2]``, test on ``items[-1]`` given ``items[:-1]``. Users with fewer than
3 events are dropped and counted. Items are remapped to dense ids ``1..n_items`` (0 is padding, as
RecBole and most sequential models expect). The fingerprint hashes the exact train/valid/test
content in the source's ids, so results from different splits never share a leaderboard row.

Methods never see the test targets while training: :meth:`Split.train_view` hands them a
:class:`TrainData` that holds only training sequences and validation targets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.data.base import Dataset, normalize_catalog
from bench.errors import GRBenchError

MIN_EVENTS = 3
PADDING_ITEM = 0
EVAL_SUBSET_SEED = 20240601  # fixed, so every method and every run seed scores the same user subset


def _sorted_ids(ids: pd.Series) -> np.ndarray:
    """Unique ids in a deterministic order: numeric order when all ids are integers, else text order."""
    unique = pd.unique(ids)
    if all(str(value).lstrip("-").isdigit() for value in unique):
        return np.array(sorted(unique, key=int), dtype=object)
    return np.array(sorted(unique), dtype=object)


def catalog_has_text(catalog: pd.DataFrame) -> bool:
    """Whether any item of a split's catalog has a title (row 0 is the padding item)."""
    return bool(catalog["title"].iloc[1:].notna().any())


@dataclass(frozen=True)
class TrainData:
    """What a method may learn from: training sequences, validation targets and item metadata."""

    dataset: str
    fingerprint: str
    n_items: int
    user_ids: np.ndarray  # original user id per dense user index
    item_ids: np.ndarray  # original item id per dense item id (index 0 is padding)
    train_sequences: list[np.ndarray]  # dense item ids, time order, items[:-2]
    valid_targets: np.ndarray  # dense item id items[-2] per user
    catalog: pd.DataFrame  # one row per dense item id (row 0 is padding), standard catalog columns

    @property
    def n_users(self) -> int:
        return len(self.train_sequences)

    @property
    def has_text(self) -> bool:
        return catalog_has_text(self.catalog)

    def valid_histories(self) -> list[np.ndarray]:
        """The history given when predicting the validation target: the training sequence."""
        return self.train_sequences


@dataclass(frozen=True)
class Split:
    """A fingerprinted leave-last-out split of one dataset."""

    dataset: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    sequences: list[np.ndarray]  # full dense sequences; test target last
    catalog: pd.DataFrame
    fingerprint: str
    stats: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def has_text(self) -> bool:
        """As the training view's (the catalog is the same), without building that view's sequences."""
        return catalog_has_text(self.catalog)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    def train_view(self) -> TrainData:
        """Training sequences and validation targets, without any test target."""
        return TrainData(
            dataset=self.dataset,
            fingerprint=self.fingerprint,
            n_items=self.n_items,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            train_sequences=[seq[:-2] for seq in self.sequences],
            valid_targets=np.array([seq[-2] for seq in self.sequences], dtype=np.int64),
            catalog=self.catalog,
        )

    def test_histories(self, users: np.ndarray | None = None) -> list[np.ndarray]:
        """``items[:-1]`` per user: everything up to and including the validation target."""
        chosen = range(self.n_users) if users is None else users
        return [self.sequences[u][:-1] for u in chosen]

    def test_targets(self, users: np.ndarray | None = None) -> np.ndarray:
        chosen = range(self.n_users) if users is None else users
        return np.array([self.sequences[u][-1] for u in chosen], dtype=np.int64)

    def evaluation_users(self, max_users: int | None) -> np.ndarray:
        """The test users to score: all, or a fixed-seed subset shared by every method and run seed."""
        return fixed_subset(self.n_users, max_users, EVAL_SUBSET_SEED)

    def original_items(self, dense: np.ndarray) -> np.ndarray:
        """Maps dense item ids back to the source's ids."""
        return self.item_ids[np.asarray(dense)]


def fixed_subset(n: int, size: int | None, seed: int) -> np.ndarray:
    """``size`` of ``range(n)``, sorted, drawn with a fixed seed (all of them when ``size`` is None or >= n):
    the same users in every run, whatever the run's own seed."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def fingerprint_sequences(dataset: str, user_ids: np.ndarray, item_ids: np.ndarray,
                          sequences: list[np.ndarray]) -> str:
    """sha256 of every user's train/valid/test content in the source's ids (first 16 hex digits)."""
    digest = hashlib.sha256(f"leave-last-out v1\n{dataset}\n".encode())
    for user, seq in zip(user_ids, sequences):
        original = item_ids[seq]
        line = f"{user}\t{' '.join(original[:-2])}\t{original[-2]}\t{original[-1]}\n"
        digest.update(line.encode())
    return digest.hexdigest()[:16]


def leave_last_out(dataset: Dataset) -> Split:
    """Builds the split; raises a clear error when no user has enough events."""
    frame = dataset.interactions
    if frame["timestamp"].isna().any():
        row = int(np.flatnonzero(frame["timestamp"].isna().to_numpy())[0])
        raise GRBenchError(f"dataset {dataset.name}: interaction row {row} has no timestamp")
    ordered = frame.sort_values("timestamp", kind="stable")  # stable: ties keep source order
    lengths = ordered.groupby("user", sort=False).size()
    kept_users = lengths.index[lengths >= MIN_EVENTS]
    ordered = ordered[ordered["user"].isin(kept_users)]
    if ordered.empty:
        raise GRBenchError(
            f"dataset {dataset.name}: no user has at least {MIN_EVENTS} interactions "
            f"({len(lengths)} users before filtering); leave-last-out needs train, validation and test events"
        )
    user_ids = _sorted_ids(ordered["user"])
    item_ids = np.concatenate([np.array([""], dtype=object), _sorted_ids(ordered["item"])])
    item_index = pd.Series(np.arange(len(item_ids)), index=item_ids)
    dense_items = item_index.loc[ordered["item"].to_numpy()].to_numpy(dtype=np.int64)
    by_user = pd.Series(dense_items).groupby(ordered["user"].to_numpy(), sort=False)
    sequence_of = {user: group.to_numpy() for user, group in by_user}
    sequences = [sequence_of[user] for user in user_ids]

    catalog = dataset.catalog.drop_duplicates("item").set_index("item")
    catalog = normalize_catalog(catalog.reindex(item_ids[1:]))
    padding = pd.DataFrame([{c: None for c in catalog.columns}], index=[""])
    padding.at["", "categories"] = []
    catalog = pd.concat([padding, catalog]).rename_axis("item").reset_index()

    stats = {
        "users_raw": int(len(lengths)),
        "users_dropped_lt3": int((lengths < MIN_EVENTS).sum()),
        "users": len(user_ids),
        "items": len(item_ids) - 1,
        "interactions": int(len(dense_items)),
        "items_without_text": int(catalog["title"].iloc[1:].isna().sum()),
    }
    if "form" in dataset.info:  # which files of a source with several (the Amazon data: S3-Rec or McAuley)
        stats["form"] = dataset.info["form"]
    fingerprint = fingerprint_sequences(dataset.name, user_ids, item_ids, sequences)
    return Split(dataset.name, user_ids, item_ids, sequences, catalog, fingerprint, stats)
