from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.data import load_dataset
from bench.data.base import Dataset, make_interactions
from bench.errors import GRBenchError
from bench.split import TrainData, leave_last_out
from tests.conftest import tiny_dataset


def original(split, dense) -> list[str]:
    return list(split.original_items(dense))


def test_hand_checked_targets_and_dropped_users():
    split = leave_last_out(tiny_dataset())
    assert list(split.user_ids) == ["u1", "u2", "u4"]
    assert split.stats["users_dropped_lt3"] == 1 and split.stats["users_raw"] == 4
    data = split.train_view()
    by_user = dict(zip(split.user_ids, range(split.n_users)))
    u1, u2, u4 = by_user["u1"], by_user["u2"], by_user["u4"]
    assert original(split, data.train_sequences[u1]) == ["a", "b", "c"]
    assert original(split, [data.valid_targets[u1]]) == ["d"]
    assert original(split, split.test_targets([u1])) == ["e"]
    assert original(split, split.test_histories([u1])[0]) == ["a", "b", "c", "d"]
    # tie at t=7 between a and b: file order (a first) decides
    assert original(split, data.train_sequences[u2]) == ["c"]
    assert original(split, [data.valid_targets[u2]]) == ["a"]
    assert original(split, split.test_targets([u2])) == ["b"]
    # u4 is sorted by time, not by file order
    assert original(split, data.train_sequences[u4]) == ["e", "d", "c"]
    assert original(split, split.test_targets([u4])) == ["a"]


def test_items_are_dense_with_padding_zero():
    split = leave_last_out(tiny_dataset())
    assert split.item_ids[0] == "" and list(split.item_ids[1:]) == ["a", "b", "c", "d", "e"]
    assert split.catalog.loc[1, "title"] == "Item a" and split.catalog.loc[0, "title"] is None
    assert all(1 <= item <= split.n_items for seq in split.sequences for item in seq)


@pytest.mark.parametrize("spec", ["synthetic", "synthetic:users=50,items=30,seed=3,max_len=6"])
def test_no_validation_or_test_event_in_training(spec):
    split = leave_last_out(load_dataset(spec))
    data = split.train_view()
    for user in range(split.n_users):
        full = split.sequences[user]
        train = data.train_sequences[user]
        assert len(train) == len(full) - 2
        np.testing.assert_array_equal(train, full[:-2])  # training stops before the validation event
        np.testing.assert_array_equal(split.test_histories([user])[0], full[:-1])  # history ends at the test
        assert data.valid_targets[user] == full[-2]


def test_train_view_cannot_reach_test_targets():
    """fit() receives a TrainData: no field of it holds full sequences or test targets."""
    field_names = {f.name for f in dataclasses.fields(TrainData)}
    assert field_names == {"dataset", "fingerprint", "n_items", "user_ids", "item_ids", "train_sequences",
                           "valid_targets", "catalog"}
    split = leave_last_out(tiny_dataset())
    data = split.train_view()
    assert all(len(t) == len(s) - 2 for t, s in zip(data.train_sequences, split.sequences))


def test_a_target_unique_to_the_test_position_never_reaches_training():
    """An item seen only as some user's test target appears nowhere in what fit() receives."""
    dataset = tiny_dataset()
    frame = dataset.interactions
    frame = frame[~((frame.user == "u1") & (frame.item == "e"))]
    rows = list(zip(frame.user, frame.item, frame.timestamp)) + [("u1", "zz-test-only", 99.0)]
    split = leave_last_out(Dataset("t", make_interactions(*zip(*rows)), dataset.catalog, "test"))
    data = split.train_view()
    secret = int(np.flatnonzero(split.item_ids == "zz-test-only")[0])
    assert all(secret not in seq for seq in data.train_sequences)
    assert secret not in data.valid_targets
    assert secret in split.test_targets()


def test_fingerprint_is_stable_and_content_sensitive():
    first = leave_last_out(tiny_dataset()).fingerprint
    assert first == leave_last_out(tiny_dataset()).fingerprint
    dataset = tiny_dataset()
    dataset.interactions.loc[0, "item"] = "e"
    assert leave_last_out(dataset).fingerprint != first


def test_empty_after_filtering_is_a_clear_error():
    dataset = Dataset("short", make_interactions(["u", "u", "v"], ["a", "b", "a"], [1, 2, 3]),
                      tiny_dataset().catalog, "test")
    with pytest.raises(GRBenchError, match="no user has at least 3 interactions"):
        leave_last_out(dataset)


def test_missing_timestamp_is_a_clear_error():
    dataset = tiny_dataset()
    dataset.interactions.loc[2, "timestamp"] = float("nan")
    with pytest.raises(GRBenchError, match="row 2 has no timestamp"):
        leave_last_out(dataset)


def test_evaluation_subset_is_fixed_and_shared():
    split = leave_last_out(load_dataset("synthetic"))
    subset = split.evaluation_users(50)
    assert len(subset) == 50 and len(set(subset)) == 50
    np.testing.assert_array_equal(subset, split.evaluation_users(50))
    np.testing.assert_array_equal(split.evaluation_users(None), np.arange(split.n_users))
