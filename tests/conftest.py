"""Shared fixtures: every test gets its own cache and data folders, never the user's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.data.base import Dataset, make_catalog, make_interactions

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014-s3rec"


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("GRBENCH_DATA", str(tmp_path_factory.mktemp("data")))


def tiny_dataset() -> Dataset:
    """Four users whose targets are checked by hand in the split tests.

    u1: a b c d e   (time order)      -> train a b c, valid d, test e
    u2: c a b       with a tie a/b    -> train c, valid a, test b (file order breaks the tie)
    u3: a b         too short         -> dropped
    u4: e d c b a   written out of time order in the file
    """
    rows = [
        ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "d", 4), ("u1", "e", 5),
        ("u2", "c", 1), ("u2", "a", 7), ("u2", "b", 7),
        ("u3", "a", 1), ("u3", "b", 2),
        ("u4", "a", 50), ("u4", "e", 10), ("u4", "c", 30), ("u4", "d", 20), ("u4", "b", 40),
    ]
    users, items, times = zip(*rows)
    catalog = make_catalog([{"item": i, "title": f"Item {i}", "categories": ["Cat", i.upper()]} for i in "abcde"])
    return Dataset("tiny", make_interactions(users, items, times), catalog, source="test")
