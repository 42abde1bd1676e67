"""Reliability of the output folder and of large loads.

- Two ``python -m bench run`` processes sharing one ``--out`` at once lose nothing and corrupt nothing, and
  sharing one cache they never run the same cell at once: the second skips a cell the first is running.
- A read-only or full output folder fails early, with one clear line, and never damages earlier results.
- The Amazon loader streams its reviews file: peak memory stays far below the file's raw size.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench import runner
from bench.cli import main
from bench.data import load_dataset
from bench.errors import GRBenchError
from bench.evaluate import per_user_metrics
from bench.results import ResultKey, ResultStore, read_rankings, write_atomically

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["run", "--profile", "smoke", "--datasets", "synthetic"]
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


# ------------------------------------------------------------------------------------------- concurrency


def start_run(tmp_path: Path, out: Path, name: str, methods: str, seeds: str) -> tuple[subprocess.Popen, Path]:
    """Starts ``python -m bench run`` in a subprocess (its own stage cache in tmp_path); output goes to a log."""
    log = tmp_path / f"{name}.log"
    env = {**os.environ, "GRBENCH_CACHE": str(tmp_path / "cache"), "GRBENCH_DATA": str(tmp_path / "data"),
           "OMP_NUM_THREADS": "1"}
    with log.open("w") as stream:
        process = subprocess.Popen([sys.executable, "-m", "bench", *SMOKE, "--methods", methods, "--seeds", seeds,
                                    "--out", str(out)], cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
    return process, log


def run_at_once(tmp_path: Path, out: Path, *runs: tuple[str, str], statuses: tuple[int, ...] = (0,)) -> list[str]:
    """Runs every (methods, seeds) at the same time; each must exit with one of ``statuses``. Returns their logs."""
    started = [start_run(tmp_path, out, f"run{n}", methods, seeds) for n, (methods, seeds) in enumerate(runs)]
    logs = []
    for process, log in started:
        status = process.wait(timeout=600)
        text = log.read_text()
        assert status in statuses, text
        assert "Traceback" not in text
        logs.append(text)
    return logs


def assert_consistent(out: Path, expected: set[tuple[str, int]]) -> None:
    """Every expected record exactly once; each one's rankings readable and giving its stored metrics;
    no temporary file left; the leaderboards the runs wrote are the ones the stored results give."""
    lines = [line for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line a whole JSON record
    keys = [ResultKey.of(record) for record in records]
    assert len(keys) == len(set(keys)), "a record is stored twice"
    assert sorted((r["method"], r["seed"]) for r in records) == sorted(expected)
    assert records == ResultStore(out).load()
    for record in records:
        rows = read_rankings(out / record["rankings"])
        assert len(rows) == record["eval_users"]
        ids = {item: n for n, item in enumerate(sorted({i for r in rows for i in [r["target"], *r["topk"]]}))}
        targets = np.array([ids[r["target"]] for r in rows])
        topk = np.array([[ids[i] for i in r["topk"]] for r in rows])
        for metric, vector in per_user_metrics(targets, topk).items():
            assert vector.mean() == pytest.approx(record["metrics"][metric]["mean"]), (record["id"], metric)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".write-test-")]
    board = out / "leaderboards"
    written = {p.relative_to(board): p.read_bytes() for p in board.rglob("*.*")}
    shutil.rmtree(board)
    assert main(["leaderboard", "--out", str(out)]) == 0
    assert {p.relative_to(board): p.read_bytes() for p in board.rglob("*.*")} == written


def test_two_runs_of_different_cells_share_one_out(tmp_path):
    """Sixteen quick cells each, none shared: both processes add records within the same second or so, and
    without the lock in ResultStore.add some of them are lost (each add rewrites the whole file)."""
    out = tmp_path / "out"
    run_at_once(tmp_path, out, ("pop,random", "0,1,2,3,4,5,6,7"), ("random,pop", "8,9,10,11,12,13,14,15"))
    assert_consistent(out, {(m, s) for m in ("pop", "random") for s in range(16)})
    assert (out / "results.jsonl.lock").exists()  # the lock file stays; nothing reads it as a result


def test_two_runs_of_the_same_cells_compute_and_store_each_once(tmp_path):
    """The same command twice at once, sharing the cache: each cell is computed by one process only (the other
    skips it while it runs, under its cell lock, or finds it stored), and stored once; its record and its
    rankings file agree. A process that skipped a running cell exits with status 3."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl.lock").touch()  # as a killed run leaves it: an flock on it is released with its process
    logs = run_at_once(tmp_path, out, ("hstu,pop,random", "0,1"), ("hstu,pop,random", "0,1"), statuses=(0, 3))
    assert sum(log.count("done ") for log in logs) == 6
    assert_consistent(out, {(m, s) for m in ("hstu", "pop", "random") for s in (0, 1)})


def test_a_cell_another_process_is_running_is_skipped_and_named(tmp_path, capsys):
    """While another process holds a cell's lock, a run skips that cell (and only it), names it, and exits with
    status 3; once the lock is free, the same command runs the cell and exits 0."""
    out = tmp_path / "out"
    split = runner.leave_last_out(load_dataset("synthetic"))
    key = ResultKey("pop", split.dataset, "smoke", 0, split.fingerprint)
    command = [*SMOKE, "--methods", "pop,random", "--out", str(out)]
    with runner.cell_lock(key) as ours:
        assert ours
        assert main(command) == 3
    err = capsys.readouterr().err
    assert f"skip {key.id}: another process is running it" in err
    assert f"cell(s) left to the other processes running them: {key.id}" in err
    assert [r["method"] for r in ResultStore(out).load()] == ["random"]
    assert main(command) == 0
    assert sorted(r["method"] for r in ResultStore(out).load()) == ["pop", "random"]


# ------------------------------------------------------------------------------- unwritable and full disks


def _inside(path: str | os.PathLike, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(folder.resolve())


def fill_disk(monkeypatch: pytest.MonkeyPatch, folder: Path, which: Callable[[str], bool] = lambda name: True) -> None:
    """From now on the disk of ``folder`` is full: a file there whose name ``which`` accepts can still be created
    (as on a real full disk, where an inode is left), but opened for writing its descriptor is /dev/full's,
    where the kernel answers every write with ENOSPC. (``os.open`` is what ``tempfile`` creates files with.)"""
    real_open = os.open

    def open_on_a_full_disk(path, flags, mode=0o777, *, dir_fd=None):
        handle = real_open(path, flags, mode, dir_fd=dir_fd)
        name = os.path.basename(path)
        if flags & (os.O_WRONLY | os.O_RDWR) and _inside(path, folder) and not name.endswith(".lock") and which(name):
            os.close(handle)
            return real_open("/dev/full", os.O_WRONLY)
        return handle

    monkeypatch.setattr(os, "open", open_on_a_full_disk)


def make_read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 0o500; root ignores permissions, so there creating a file or folder in ``folder`` is made to fail as
    it would (``os.open`` is what ``tempfile`` creates files with)."""
    folder.chmod(0o500)
    if os.geteuid() != 0:
        return
    real_open, real_mkdir = os.open, os.mkdir

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def read_only_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _inside(path, folder):
            raise denied(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def read_only_mkdir(path, mode=0o777, *, dir_fd=None):
        if _inside(path, folder) and not os.path.exists(path):
            raise denied(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", read_only_open)
    monkeypatch.setattr(os, "mkdir", read_only_mkdir)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if a run gets as far as loading data or training."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the run loaded data or trained before finding it could not write its results")

    monkeypatch.setattr(runner, "load_dataset", forbidden)
    monkeypatch.setattr(runner, "run_cell", forbidden)


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("read_only", ["out", "leaderboards", "cache"])
def test_read_only_output_fails_before_any_training(tmp_path, monkeypatch, capsys, no_training, read_only):
    folders = {"out": tmp_path / "out", "leaderboards": tmp_path / "boards", "cache": tmp_path / "cache"}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setenv("GRBENCH_CACHE", str(folders["cache"]))
    make_read_only(folders[read_only], monkeypatch)
    try:
        status = main([*SMOKE, "--methods", "pop", "--out", str(folders["out"]),
                       "--leaderboards", str(folders["leaderboards"])])
    finally:
        folders[read_only].chmod(0o700)
    err = capsys.readouterr().err
    assert status == 2
    what = {"out": "results", "leaderboards": "leaderboards",
            "cache": "stage caches, checkpoints and cell locks (GRBENCH_CACHE)"}[read_only]
    assert err.strip().splitlines() == [f"error: cannot write {what} to {folders[read_only]}: Permission denied"]
    assert [list(folder.iterdir()) for folder in folders.values()] == [[], [], []]


@needs_dev_full
def test_a_full_disk_at_the_start_fails_before_any_training(tmp_path, monkeypatch, capsys, no_training):
    out = tmp_path / "out"
    fill_disk(monkeypatch, tmp_path)  # an empty file can still be created, as on a real full disk; data cannot
    assert main([*SMOKE, "--methods", "pop", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [f"error: cannot write results to {out}: {NO_SPACE}"]
    assert list(out.iterdir()) == []  # the probe file is gone


@pytest.mark.parametrize("where", [
    "create",  # no inode left: not even the temporary file can be made
    "write",  # the kernel refuses the data
    "fsync",  # some file systems (NFS, quotas) report it only when syncing
])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, where):
    path = tmp_path / "results.jsonl"
    write_atomically(path, b'{"old": 1}\n')
    real_open = os.open

    def no_inode_left(file, flags, *args, **kwargs):
        if flags & os.O_CREAT and _inside(file, tmp_path):
            raise OSError(errno.ENOSPC, NO_SPACE, str(file))
        return real_open(file, flags, *args, **kwargs)

    def fsync_fails(handle):
        raise OSError(errno.ENOSPC, NO_SPACE)

    if where == "create":
        monkeypatch.setattr(os, "open", no_inode_left)
    elif where == "write":
        if not os.path.exists("/dev/full"):
            pytest.skip("needs /dev/full (Linux)")
        fill_disk(monkeypatch, tmp_path)
    else:
        monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(GRBenchError) as raised:
        write_atomically(path, b'{"new": 2}\n' * 10_000)
    assert str(raised.value).startswith(f"cannot write {path}: {NO_SPACE}")
    assert path.read_bytes() == b'{"old": 1}\n'
    assert os.listdir(tmp_path) == ["results.jsonl"]


def record(method: str, seed: int = 0) -> dict:
    return {"method": method, "dataset": "d", "profile": "smoke", "seed": seed, "split_fingerprint": "f" * 16}


@needs_dev_full
def test_a_full_disk_during_add_keeps_every_earlier_record(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.add(record("pop"))
    store.add(record("random"))
    before = store.path.read_bytes()
    with monkeypatch.context() as full:
        fill_disk(full, tmp_path)
        with pytest.raises(GRBenchError, match=f"cannot write {store.path}: {NO_SPACE}"):
            store.add(record("pop", seed=1))
    assert store.path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["results.jsonl", "results.jsonl.lock"]
    store.add(record("pop", seed=1))  # space again: the lock was released, the store works
    assert len(store.load()) == 3


@needs_dev_full
def test_cli_disk_full_when_storing_a_record_is_one_clear_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main([*SMOKE, "--methods", "pop", "--out", str(out)]) == 0
    before = (out / "results.jsonl").read_bytes()
    capsys.readouterr()
    with monkeypatch.context() as full:
        fill_disk(full, tmp_path, lambda name: name.startswith(".results.jsonl."))  # full just after the rankings file
        assert main([*SMOKE, "--methods", "random", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and err.strip().endswith(lines[0])
    assert str(out / "results.jsonl") in lines[0] and "no space left" in lines[0].lower()
    assert (out / "results.jsonl").read_bytes() == before
    assert not list(out.rglob("*.tmp"))
    assert main([*SMOKE, "--methods", "random", "--out", str(out)]) == 0  # space again: the run completes
    assert sorted(r["method"] for r in ResultStore(out).load()) == ["pop", "random"]


# ---------------------------------------------------------------------------------------- streaming loads

REVIEW_TEXT = ("This serum is fine; it smells of nothing and the bottle lasts a month. " * 21)[:1500]


def write_large_amazon(folder: Path, users: int, per_user: int = 10) -> int:
    """A 5-core Amazon 2014 Beauty pair in the published formats, whose reviews carry long texts that the
    loader does not need. Returns the raw (decompressed) size of the reviews file in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    n_items = users // 5
    raw = 0
    with gzip.open(folder / "reviews_Beauty_5.json.gz", "wb", compresslevel=1) as stream:
        for user in range(users):
            for k in range(per_user):
                line = json.dumps({
                    "reviewerID": f"A{user:013d}", "asin": f"B{(user * 7 + k * 13) % n_items:09d}",
                    "reviewerName": f"Reviewer {user}", "helpful": [0, 0], "reviewText": REVIEW_TEXT,
                    "overall": 5.0, "summary": "ok", "unixReviewTime": 1_300_000_000 + user * per_user + k,
                    "reviewTime": "03 13, 2011"}) + "\n"
                raw += len(line)
                stream.write(line.encode())
    with gzip.open(folder / "meta_Beauty.json.gz", "wb") as stream:
        for item in range(n_items):
            stream.write(f"{{'asin': 'B{item:09d}', 'title': 'Item {item}', 'categories': [['Beauty']]}}\n".encode())
    return raw


def test_amazon_reviews_stream_without_holding_the_file(tmp_path, monkeypatch):
    """~34 MB of review JSON (20,000 lines of 1.7 KB): the loader must keep the ids and times only.

    Reading the whole file (or keeping its review texts) costs more than the file itself; what must be kept,
    three short values a review, costs about 160 bytes a review (hence long lines: with short ones, the ids
    alone would come near half of the file)."""
    monkeypatch.setenv("GRBENCH_DATA", str(tmp_path))
    raw = write_large_amazon(tmp_path / "amazon2014", users=2000)
    assert raw > 30e6
    started = time.perf_counter()
    tracemalloc.start()
    try:
        dataset = load_dataset("beauty")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - started
    assert dataset.info["interactions_after_core"] == 20_000 and dataset.info["items_without_meta"] == 0
    assert peak < 0.5 * raw, f"peak {peak / 1e6:.1f} MB while loading {raw / 1e6:.1f} MB of reviews"
    assert seconds < 60
