"""``python -m bench list-stats``: adds the lists' coverage and history share to records stored before runs
computed them (:func:`bench.evaluate.list_stats`).

Why: the two facts come from each run's top-10 lists and its users' histories, both of which a record already
has: the lists in its stored rankings, the histories in its dataset's split. So they are computed from those, not
by running anything again. The split must be the record's (same fingerprint), and every ranking row's target
must be its user's test target; a record whose dataset cannot be loaded here (a ``seq:`` file that is not on
this machine) is skipped and named. The record says where its numbers came from (``list_stats_source``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.data import dataset_name, load_dataset
from bench.errors import DataError, GRBenchError
from bench.evaluate import list_stats
from bench.rerun import dataset_spec
from bench.results import ResultStore, read_rankings
from bench.split import Split, leave_last_out

SOURCE = "stored rankings and the split's test histories (python -m bench list-stats)"


def stats_from_rankings(split: Split, rankings: list[dict], where: Path) -> dict[str, float]:
    """:func:`list_stats` of stored ranking rows (source ids) on ``split``."""
    user_index = {str(user): index for index, user in enumerate(split.user_ids)}
    item_index = {str(item): index for index, item in enumerate(split.item_ids)}
    try:
        users = np.array([user_index[row["user"]] for row in rankings], dtype=np.int64)
        topk = np.array([[item_index[item] for item in row["topk"]] for row in rankings], dtype=np.int64)
        targets = np.array([item_index[row["target"]] for row in rankings], dtype=np.int64)
    except KeyError as error:
        raise DataError(where, f"id {error} is not in the split of {split.dataset}") from None
    if not np.array_equal(targets, split.test_targets(users)):
        raise DataError(where, f"its targets are not the test targets of {split.dataset}'s split")
    return list_stats(topk, split.test_histories(users), split.n_items)


def backfill_list_stats(store: ResultStore, datasets: Sequence[str] = (),
                        log: Callable[[str], None] = print) -> tuple[int, list[str]]:
    """Fills ``list_stats`` in every record of ``store`` that lacks it; returns (records filled, skipped ids with
    why). ``datasets``: specs to load instead of those in the records' commands, matched by dataset name
    (``seq:<path>`` is named ``seq:<file stem>``), e.g. where a GPU run read the files from another folder.
    Takes the store's lock itself (reentrant), so a run cannot add a record in between."""
    given = {dataset_name(spec): spec for spec in datasets}
    splits: dict[str, Split | str] = {}  # dataset spec -> its split, or why it could not be loaded
    filled, skipped = 0, []
    with store.locked():
        for record in store.load():
            if "list_stats" in record:
                continue
            try:
                spec = given.get(record["dataset"]) or dataset_spec(record)
                if spec not in splits:
                    try:
                        splits[spec] = leave_last_out(load_dataset(spec))
                    except (GRBenchError, OSError) as error:
                        splits[spec] = str(error)
                split = splits[spec]
                if isinstance(split, str):
                    raise GRBenchError(split)
                if split.fingerprint != record["split_fingerprint"]:
                    raise GRBenchError(f"the split here has fingerprint {split.fingerprint}, the record's "
                                       f"{record['split_fingerprint']}")
                if not record.get("rankings"):
                    raise GRBenchError("the record has no stored rankings")
                path = store.folder / record["rankings"]
                stats = stats_from_rankings(split, read_rankings(path), path)
            except GRBenchError as error:
                skipped.append(f"{record['id']}: {error}")
                continue
            store.add({**record, "list_stats": stats, "list_stats_source": SOURCE})
            filled += 1
            log(f"{record['id']}: " + ", ".join(f"{name} {value:.3f}" for name, value in stats.items()))
    return filled, skipped
