"""``python -m bench rename-dataset OLD NEW``: move stored results to another name of the same data, unretrained.

Why: rows are keyed by dataset name and split fingerprint, and the fingerprint hashes the name too. The Amazon
rows were trained on the S3-Rec files as ``seq:Beauty`` (hours of CPU each) before the same files became the
``beauty`` source; retraining them only to rename them would waste those hours. A record moves only when its
split is the same: the new source's split, fingerprinted under the old name, must give the record's stored
fingerprint, so every user's train, validation and test items are proven identical. Records of another split
under the old name stay where they are.

A moved record keeps what it was (``moved_from``: old name, fingerprint, id and dataset facts) and gets the new
name, fingerprint, id and dataset facts; its rankings move with it. Settings that a method resolved from the
data (``sid_source=auto``, which picks text SIDs where items have titles) are pinned to what they resolved to, in
the method spec too: under a name whose items have text, ``tiger`` means text SIDs, and a row that ran on
attribute SIDs must not pass for it, nor be rerun as it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.data import load_dataset
from bench.errors import GRBenchError
from bench.provenance import process_commit
from bench.results import ResultKey, ResultStore
from bench.split import fingerprint_sequences, leave_last_out


@dataclass
class Renamed:
    """What :func:`rename_dataset` did: the (old id, new id) pairs moved and the ids left (another split)."""

    moved: list[tuple[str, str]] = field(default_factory=list)
    other_split: list[str] = field(default_factory=list)


def pinned_spec(record: dict) -> tuple[str, dict, dict]:
    """The record's method spec, options and settings with a data-resolved SID source written out."""
    settings, options = dict(record.get("settings") or {}), dict(record.get("options") or {})
    sids = (record.get("report") or {}).get("sids")
    source = sids.get("source") if isinstance(sids, dict) else None
    if settings.get("sid_source") != "auto" or not source or "sid_source" in options:
        return record["method"], options, settings
    settings["sid_source"] = options["sid_source"] = source
    name = record["method"].partition(":")[0]
    return f"{name}:{','.join(f'{key}={value}' for key, value in options.items())}", options, settings


def rename_dataset(store: ResultStore, old_name: str, new_spec: str, when: str) -> Renamed:
    """Moves ``old_name``'s records whose split equals that of dataset ``new_spec`` (see the module docstring)."""
    split = leave_last_out(load_dataset(new_spec))
    if split.dataset == old_name:
        raise GRBenchError(f"dataset {new_spec!r} is named {old_name!r} already")
    same_split = fingerprint_sequences(old_name, split.user_ids, split.item_ids, split.sequences)
    outcome = Renamed()
    with store.locked():
        records = store.load()
        stored = {ResultKey.of(r) for r in records}
        if not any(r["dataset"] == old_name for r in records):
            names = sorted({r["dataset"] for r in records})
            raise GRBenchError(f"{store.path} holds no results of dataset {old_name!r}; stored: {', '.join(names)}")
        kept, old_rankings = [], []
        for record in records:
            if record["dataset"] != old_name or record["split_fingerprint"] != same_split:
                if record["dataset"] == old_name:
                    outcome.other_split.append(ResultKey.of(record).id)
                kept.append(record)
                continue
            method, options, settings = pinned_spec(record)
            moved = {**record, "method": method, "options": options, "settings": settings, "dataset": split.dataset,
                     "split_fingerprint": split.fingerprint,
                     "dataset_info": {**split.stats, "has_text": split.has_text},
                     "moved_from": {"dataset": old_name, "split_fingerprint": record["split_fingerprint"],
                                    "id": ResultKey.of(record).id, "method": record["method"],
                                    "dataset_info": record.get("dataset_info"), "at": when,
                                    "git_commit": process_commit()}}
            key = ResultKey.of(moved)
            if key in stored:
                raise GRBenchError(f"{store.path} already holds {key.id}; moving {ResultKey.of(record).id} there "
                                   "would replace it. Nothing was moved")
            moved["id"] = key.id
            if record.get("rankings"):  # written before the records that name them, as every store write is
                source = store.folder / record["rankings"]
                moved["rankings"] = store.copy_rankings(source, key)
                old_rankings.append(source)
            kept.append(moved)
            outcome.moved.append((ResultKey.of(record).id, key.id))
        store.replace_all(kept)
        for path in old_rankings:
            path.unlink(missing_ok=True)
    return outcome
