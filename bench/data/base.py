"""The two objects every dataset source returns: interactions and an item catalog.

Ids are kept as the source's original strings here; the split remaps them densely, so that
rankings can always be written back in the source's own ids.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

INTERACTION_COLUMNS = ("user", "item", "timestamp")
CATALOG_COLUMNS = ("item", "title", "categories", "brand")
ID_FORMAT = "a non-empty id without whitespace or control characters"
NOT_IN_IDS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")  # whitespace and control characters


def id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a user or item id, or None when it can.

    Ids are non-empty strings (integers are taken as their decimal text) without whitespace or control
    characters: ``""`` is the split's padding item, and ids are written space- and tab-separated into
    the split's fingerprint.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"id {value!r} is a {type(value).__name__}"
    return _text_id_problem(str(value))


@functools.lru_cache(maxsize=1 << 18)  # loaders check every event's ids; most ids repeat
def _text_id_problem(text: str) -> str | None:
    if not text:
        return "empty id"
    bad = NOT_IN_IDS.search(text)
    if bad:
        return f"id {text!r} contains {bad[0]!r}"
    return None


@dataclass
class Dataset:
    """A loaded dataset.

    interactions: one row per event, columns ``user`` (str), ``item`` (str), ``timestamp`` (float).
        Row order is the tie-break for equal timestamps (stable), so a source must emit rows in
        the order it wants ties resolved (the file order).
    catalog: one row per known item, columns ``item`` (str), ``title`` (str or None),
        ``categories`` (list of str, a category path or genres; may be empty), ``brand`` (str or None),
        and optionally ``attributes`` (list of int attribute ids) for sources without text.
    """

    name: str
    interactions: pd.DataFrame
    catalog: pd.DataFrame
    source: str
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in INTERACTION_COLUMNS if c not in self.interactions.columns]
        if missing:
            raise ValueError(f"interactions of {self.name} lack columns {missing}")
        missing = [c for c in CATALOG_COLUMNS if c not in self.catalog.columns]
        if missing:
            raise ValueError(f"catalog of {self.name} lacks columns {missing}")

    @property
    def has_text(self) -> bool:
        """Whether any item has a title (LLM and text-SID methods need it)."""
        return bool(self.catalog["title"].notna().any()) if len(self.catalog) else False


def make_catalog(rows: Sequence[dict]) -> pd.DataFrame:
    """Builds a catalog frame with the standard columns from dicts (missing keys become None/[])."""
    frame = pd.DataFrame(list(rows), columns=None)
    for column in CATALOG_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    frame["item"] = frame["item"].astype(str)
    return normalize_catalog(frame).reset_index(drop=True)


def normalize_catalog(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing text becomes None (not NaN) and missing categories an empty list, in place."""
    for column in ("title", "brand"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame["categories"] = [list(c) if isinstance(c, (list, tuple)) else [] for c in frame["categories"]]
    return frame


def make_interactions(users: Sequence, items: Sequence, timestamps: Sequence) -> pd.DataFrame:
    """Builds an interactions frame with string ids and float timestamps, keeping row order."""
    return pd.DataFrame(
        {
            "user": pd.Series(users, dtype=str),
            "item": pd.Series(items, dtype=str),
            "timestamp": pd.Series(timestamps, dtype="float64"),
        }
    )


@dataclass(frozen=True)
class SourceInfo:
    """A registered dataset source: how to name it, what it is, how to load it."""

    name: str
    description: str
    loader: Callable[[str | None], Dataset]
    argument: str | None = None  # what may follow "name:", e.g. "<path>" for seq:<path>
    argument_required: bool = False
    # The files loading would download first (none once they are here), so that `bench run --dry-run` can say
    # so instead of downloading; None for sources that never download.
    pending_downloads: Callable[[str | None], list[Path]] | None = None
    title: str | None = None  # how tables and pages name its dataset (the study's "Beauty"); None: the name
