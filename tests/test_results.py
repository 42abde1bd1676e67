from __future__ import annotations

import multiprocessing

import pytest

from bench.errors import DataError, GRBenchError
from bench.results import ResultKey, ResultStore, check_writable, read_rankings


def record(method: str = "pop", seed: int = 0, value: float = 0.1) -> dict:
    return {"method": method, "dataset": "d", "profile": "smoke", "seed": seed, "split_fingerprint": "f" * 16,
            "metrics": {"ndcg@10": {"mean": value}}}


def test_add_replaces_same_key_and_keeps_others(tmp_path):
    store = ResultStore(tmp_path)
    store.add(record("pop", 0, 0.1))
    store.add(record("pop", 1, 0.2))
    store.add(record("pop", 0, 0.3))
    records = store.load()
    assert len(records) == 2
    assert {(r["seed"], r["metrics"]["ndcg@10"]["mean"]) for r in records} == {(0, 0.3), (1, 0.2)}
    assert ResultKey.of(record("pop", 1)) in store.finished()
    assert not list(tmp_path.glob(".results.jsonl.*.tmp"))  # no temporary file left behind


def test_a_corrupt_line_is_reported_with_its_number(tmp_path):
    store = ResultStore(tmp_path)
    store.add(record())
    with store.path.open("a") as handle:
        handle.write('{"method": "half-writ')
    with pytest.raises(DataError, match=r"results.jsonl, line 2: not a result record"):
        store.load()


def _writer(folder: str, worker: int) -> None:
    store = ResultStore(folder)
    for seed in range(12):
        store.add(record(f"m{worker}", seed))


def test_concurrent_writers_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), w)) for w in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    records = ResultStore(tmp_path).load()
    assert len(records) == 24 and len({ResultKey.of(r) for r in records}) == 24


def test_rankings_round_trip_and_are_reproducible(tmp_path):
    store = ResultStore(tmp_path)
    key = ResultKey.of(record())
    rows = [{"user": "u1", "target": "a", "topk": ["a", "b"]}]
    path = store.write_rankings(key, rows)
    first = path.read_bytes()
    assert read_rankings(path) == rows
    store.write_rankings(key, rows)
    assert path.read_bytes() == first  # gzip without a timestamp: identical bytes
    path.write_bytes(first[:10])
    with pytest.raises(DataError, match="unreadable rankings file"):
        read_rankings(path)
    assert read_rankings(store.write_rankings(key, [])) == []  # no users: still a gzip file
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty rankings file"):
        read_rankings(path)


def test_adding_a_record_removes_temporary_files_of_killed_writers(tmp_path):
    store = ResultStore(tmp_path)
    store.add(record("m0", 0))
    stale = tmp_path / ".results.jsonl.abc123.tmp"
    stale.write_text('{"half": ')
    other = tmp_path / ".other.jsonl.abc123.tmp"  # not results.jsonl's: left alone
    other.write_text("x")
    store.add(record("m1", 0))
    assert not stale.exists() and other.exists()
    assert len(store.load()) == 2


def test_unwritable_output_fails_early(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(GRBenchError, match=f"cannot write results to {blocker / 'out'}"):
        check_writable(blocker / "out")


def test_atomic_writes_get_the_usual_file_mode_not_mkstemps_private_one(tmp_path):
    import os

    from bench.results import _UMASK, write_atomically

    write_atomically(tmp_path / "f.json", b"{}")
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o666 & ~_UMASK
    assert os.listdir(tmp_path) == ["f.json"]


def test_withdrawn_results_leave_the_leaderboards_and_are_kept_with_the_reason(tmp_path, capsys):
    import json

    from bench.cli import main

    assert main(["run", "--profile", "smoke", "--methods", "pop,random", "--out", str(tmp_path)]) == 0
    store = ResultStore(tmp_path)
    (pop,) = [r for r in store.load() if r["method"] == "pop"]
    rankings = tmp_path / pop["rankings"]
    assert rankings.is_file() and "| pop " in (tmp_path / "leaderboards" / "synthetic.md").read_text()
    before = store.path.read_bytes()
    assert main(["withdraw", "synthetic--pop--smoke--seed9--x", "--why", "bug", "--out", str(tmp_path)]) == 2
    assert "holds no record synthetic--pop--smoke--seed9--x; stored ids like it: " in capsys.readouterr().err
    assert store.path.read_bytes() == before  # an unknown id changes nothing

    assert main(["withdraw", pop["id"], "--why", "trained on shifted ids", "--out", str(tmp_path)]) == 0
    assert [r["method"] for r in store.load()] == ["random"]
    assert not rankings.exists()
    (kept,) = [json.loads(line) for line in (tmp_path / "withdrawn.jsonl").read_text().splitlines()]
    assert kept["withdrawn"]["reason"] == "trained on shifted ids" and kept["metrics"] == pop["metrics"]
    board = (tmp_path / "leaderboards" / "synthetic.md").read_text()
    assert "| pop " not in board and "| random " in board


def test_list_stats_are_recorded_shown_and_backfilled_from_the_rankings(tmp_path, capsys):
    """A run records coverage@10 and history@10; ``list-stats`` recomputes the same numbers for a record
    stored without them from its rankings and split, and skips a record whose dataset is not here."""
    import json

    from bench.cli import main

    assert main(["run", "--profile", "smoke", "--methods", "pop,random", "--out", str(tmp_path)]) == 0
    store = ResultStore(tmp_path)
    recorded = {r["method"]: r["list_stats"] for r in store.load()}
    assert set(recorded["pop"]) == {"coverage@10", "history@10"}
    assert recorded["pop"]["coverage@10"] < recorded["random"]["coverage@10"]  # pop gives everyone the same 10
    assert 0 < recorded["pop"]["history@10"] <= 1
    header = next(line for line in (tmp_path / "leaderboards" / "synthetic.md").read_text().splitlines()
                  if line.startswith("| Method"))
    assert "Coverage@10" in header and "History@10" in header

    stripped = []
    for record in store.load():
        record.pop("list_stats")
        stripped.append(record)
    elsewhere = {**stripped[0], "dataset": "seq:Gone", "command": "python -m bench run --datasets seq:/no/Gone.txt"}
    elsewhere["id"] = elsewhere["id"].replace("synthetic", "seq-Gone")
    store.path.write_text("".join(json.dumps(r) + "\n" for r in [*stripped, elsewhere]))
    capsys.readouterr()
    assert main(["list-stats", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "filled 2 records, skipped 1" in err and "skipped seq-Gone" in err
    backfilled = {r["method"]: r for r in store.load() if r["dataset"] == "synthetic"}
    for method, stats in recorded.items():
        assert backfilled[method]["list_stats"] == pytest.approx(stats)
        assert "stored rankings" in backfilled[method]["list_stats_source"]
    # --datasets loads another file for that name: here one whose split is not the record's, which is refused
    (tmp_path / "Gone.txt").write_text("u1 a b c d\nu2 b c d e\n")
    assert main(["list-stats", "--out", str(tmp_path), "--datasets", f"seq:{tmp_path / 'Gone.txt'}"]) == 0
    err = capsys.readouterr().err
    assert "filled 0 records, skipped 1" in err and "the split here has fingerprint" in err
