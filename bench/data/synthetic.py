"""``synthetic[:users=N,items=M,seed=S,min_len=A,max_len=B]``: a seeded dataset for tests and smoke runs.

Items live in a two-level category tree and have titles; each user prefers one leaf category and
mostly walks through it in item order, so that sequential methods have a pattern to learn and a
popularity floor is beatable. Some timestamps tie on purpose, to exercise the stable tie-break.
"""

from __future__ import annotations

import numpy as np

from bench.data import register_source
from bench.data.base import Dataset, make_catalog, make_interactions
from bench.errors import GRBenchError

DEFAULTS = {"users": 200, "items": 120, "seed": 0, "min_len": 3, "max_len": 15}
TOP_CATEGORIES = ["Home", "Garden", "Books", "Toys"]
SUB_CATEGORIES = ["Basics", "Premium", "Travel"]
ADJECTIVES = ["Red", "Compact", "Classic", "Soft", "Bright", "Quiet", "Swift", "Golden"]
NOUNS = ["Lamp", "Kettle", "Novel", "Puzzle", "Planter", "Blanket", "Brush", "Clock"]


def parse_options(argument: str | None) -> dict[str, int]:
    """Parses ``key=value,key=value`` into integers, rejecting unknown keys by name."""
    options = dict(DEFAULTS)
    for part in filter(None, (argument or "").split(",")):
        key, _, value = part.partition("=")
        if key not in DEFAULTS or not value.strip().lstrip("-").isdigit():
            raise GRBenchError(f"synthetic option {part!r}: expected key=integer with key in {sorted(DEFAULTS)}")
        options[key] = int(value)
    if options["users"] < 1 or options["items"] < 2 or not 1 <= options["min_len"] <= options["max_len"]:
        raise GRBenchError(f"synthetic options {options}: need users>=1, items>=2, 1<=min_len<=max_len")
    return options


@register_source("synthetic", "seeded data with titles and categories for tests; keys: "
                 "users, items, seed, min_len, max_len",
                 argument="<key=value,...>")
def load_synthetic(argument: str | None = None) -> Dataset:
    options = parse_options(argument)
    rng = np.random.default_rng(options["seed"])
    n_items = options["items"]
    leaves = [(top, sub) for top in TOP_CATEGORIES for sub in SUB_CATEGORIES]
    item_leaf = rng.integers(len(leaves), size=n_items)
    catalog = make_catalog(
        {
            "item": f"i{index}",
            "title": f"{ADJECTIVES[index % len(ADJECTIVES)]} {NOUNS[(index // 3) % len(NOUNS)]} {index}",
            "categories": list(leaves[leaf]),
            "brand": f"Brand{index % 7}",
        }
        for index, leaf in enumerate(item_leaf)
    )
    items_by_leaf = [np.flatnonzero(item_leaf == leaf) for leaf in range(len(leaves))]
    popularity = rng.zipf(1.6, size=n_items).astype(float)
    users, items, timestamps = [], [], []
    for user in range(options["users"]):
        preferred = rng.integers(len(leaves))
        while len(items_by_leaf[preferred]) == 0:
            preferred = rng.integers(len(leaves))
        length = int(rng.integers(options["min_len"], options["max_len"] + 1))
        pool = items_by_leaf[preferred]
        position = int(rng.integers(len(pool)))
        clock = 1_000_000 + int(rng.integers(100_000))
        for _ in range(length):
            if rng.random() < 0.75:
                position = (position + 1) % len(pool)
                item = pool[position]
            else:
                item = rng.choice(n_items, p=popularity / popularity.sum())
            users.append(f"u{user}")
            items.append(f"i{item}")
            timestamps.append(clock)
            clock += int(rng.integers(0, 3))  # 0 makes ties
    return Dataset("synthetic" if not argument else f"synthetic:{argument}",
                   make_interactions(users, items, timestamps), catalog, source=f"synthetic {options}")
