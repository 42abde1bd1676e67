"""Real kills: ``python -m bench run`` (and a result writer) SIGKILLed as a subprocess, then run again.

tests/resume.py interrupts a run in-process with KeyboardInterrupt, so ``finally`` blocks and exception handlers
still run. SIGKILL runs nothing: what a rerun finds is what was on disk at that instant. The rerun of the same
command must continue from the last epoch checkpoint or finished stage, store exactly one result line with the
metrics of an uninterrupted run, and no reader may accept a half-written file.
"""

from __future__ import annotations

import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from bench.cli import main
from bench.results import ResultKey, ResultStore, read_rankings
from tests import kill_writer

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 8
SASREC = f"sasrec:epochs={EPOCHS},patience={EPOCHS}"  # smoke: ~0.6 s an epoch on one core, time to kill between
LLM = "pauserec"  # smoke: tiny random Qwen3, stages cpt -> pause -> sft -> implicit_sft, ~12 s on one core
RUN_TIMEOUT_S = 300
POLL_S = 0.02
TEMPORARY = re.compile(r"^\..+\.[^.]+\.tmp$")  # write_atomically's mkstemp names: .<file>.<random>.tmp


# ------------------------------------------------------------------------------------------- subprocesses

def bench_run(method: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--profile", "smoke", "--methods", method, "--datasets", "synthetic",
            "--out", str(out)]


def start(command: list[str], cache: Path, log: Path, stdout: int | None = None) -> subprocess.Popen:
    """Starts ``command`` in its own session (so its whole process group can be killed), output to ``log``."""
    with log.open("ab") as stream:
        return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "GRBENCH_CACHE": str(cache)},
                                stdout=stream if stdout is None else stdout, stderr=stream, start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the process group of ``process`` (a no-op once it is gone), then reaps it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def run_to_end(command: list[str], cache: Path, log: Path) -> None:
    process = start(command, cache, log)
    try:
        code = process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        kill_group(process)
    assert code == 0, f"{' '.join(command)} exited with {code}:\n{tail(log)}"


def kill_when(command: list[str], cache: Path, log: Path, ready: Callable[[], bool],
              sent: signal.Signals = signal.SIGKILL, exit_status: int = -signal.SIGKILL) -> None:
    """Runs ``command`` and sends ``sent`` to its process group as soon as ``ready()`` holds; fails if it ends first
    or does not end with ``exit_status`` (negative: killed by that signal)."""
    process = start(command, cache, log)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not ready():
            assert process.poll() is None, f"ended ({process.returncode}) before the moment to kill it:\n{tail(log)}"
            assert time.monotonic() < deadline, f"no moment to kill it in {RUN_TIMEOUT_S} s:\n{tail(log)}"
            time.sleep(POLL_S)
        os.killpg(process.pid, sent)
        assert process.wait(timeout=30) == exit_status, f"not ended by {sent.name}:\n{tail(log)}"
    finally:
        kill_group(process)


def checkpoint_epochs(cache: Path) -> int:
    """Epochs in the epoch checkpoint under ``cache`` (0 when none). Loaded as written: a torn file raises."""
    paths = list(cache.glob("**/training-state.pt"))
    if not paths:
        return 0
    (path,) = paths
    return len(torch.load(path, map_location="cpu", weights_only=False)["state"]["history"])


def finished_stages(cache: Path) -> dict[str, Path]:
    """LLM stage name -> folder, for the stages whose ``DONE`` marker is written."""
    return {folder.name.rsplit("-", 1)[0]: folder for folder in cache.glob("*/*/llm-stages/*")
            if (folder / "DONE").is_file()}


def result_lines(out: Path) -> list[str]:
    path = out / "results.jsonl"
    return path.read_text().splitlines() if path.exists() else []


# ------------------------------------------------------------------------------------------- bench run killed

def test_a_run_killed_mid_training_continues_from_its_last_epoch(tmp_path):
    run_to_end(bench_run(SASREC, tmp_path / "straight"), tmp_path / "cache-straight", tmp_path / "straight.log")
    [straight] = ResultStore(tmp_path / "straight").load()

    out, cache, log = tmp_path / "out", tmp_path / "cache", tmp_path / "run.log"
    command = bench_run(SASREC, out)
    kill_when(command, cache, log, lambda: checkpoint_epochs(cache) >= 1)
    epochs = checkpoint_epochs(cache)
    assert 1 <= epochs < EPOCHS, f"killed after {epochs} epochs: not in the middle of training"
    assert result_lines(out) == []

    run_to_end(command, cache, log)
    assert len(result_lines(out)) == 1
    [resumed] = ResultStore(out).load()
    assert straight["report"]["resumed_after_epochs"] is None
    assert resumed["report"]["resumed_after_epochs"] == epochs
    assert resumed["report"]["history"] == straight["report"]["history"]
    assert resumed["metrics"] == straight["metrics"]
    assert read_rankings(out / resumed["rankings"]) == read_rankings(tmp_path / "straight" / straight["rankings"])
    assert 0 < resumed["train"]["carried_wall_s"] < resumed["train"]["wall_s"]  # the killed process's epochs count

    before = (out / "results.jsonl").read_bytes()
    run_to_end(command, cache, log)  # the same command once more: the cell is done, nothing is added
    assert (out / "results.jsonl").read_bytes() == before


def test_sigterm_stops_a_run_as_ctrl_c_does_and_the_rerun_continues(tmp_path):
    """SIGTERM (kill, a batch system's time limit) mid-training: the run says it was terminated and how to go on,
    exits with 143, leaves no temporary file and no result; the same command then resumes after the epochs its
    checkpoint holds."""
    out, cache, log = tmp_path / "out", tmp_path / "cache", tmp_path / "run.log"
    command = bench_run(SASREC, out)
    kill_when(command, cache, log, lambda: checkpoint_epochs(cache) >= 1, signal.SIGTERM, 128 + signal.SIGTERM)
    assert "terminated (SIGTERM): finished results are kept; rerun the same command to continue" in tail(log)
    assert "Traceback" not in tail(log)
    epochs = checkpoint_epochs(cache)
    assert 1 <= epochs < EPOCHS and result_lines(out) == []
    assert not [path for path in tmp_path.rglob("*") if TEMPORARY.match(path.name)]

    run_to_end(command, cache, log)
    [resumed] = ResultStore(out).load()
    assert resumed["report"]["resumed_after_epochs"] == epochs


@pytest.mark.parametrize("after", ["cpt", pytest.param("sft", marks=pytest.mark.slow)])
def test_a_run_killed_between_llm_stages_reuses_the_finished_ones(tmp_path, after):
    run_to_end(bench_run(LLM, tmp_path / "straight"), tmp_path / "cache-straight", tmp_path / "straight.log")
    [straight] = ResultStore(tmp_path / "straight").load()

    out, cache, log = tmp_path / "out", tmp_path / "cache", tmp_path / "run.log"
    shutil.copytree(tmp_path / "cache-straight" / "sids", cache / "sids")  # SIDs are not what this is about: ~5 s
    command = bench_run(LLM, out)
    kill_when(command, cache, log, lambda: after in finished_stages(cache))
    finished = finished_stages(cache)
    assert "implicit_sft" not in finished and result_lines(out) == [], f"killed too late: {sorted(finished)} done"
    written = {name: {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
               for name, folder in finished.items()}

    run_to_end(command, cache, log)
    assert len(result_lines(out)) == 1
    [resumed] = ResultStore(out).load()
    # every stage is in the cost record, the finished ones (and the copied SIDs) reused with what they cost
    costs = {stage["name"]: stage for stage in resumed["stages"]}
    assert set(costs) == {stage["name"] for stage in straight["stages"]} == {"sids", "cpt", "pause", "sft",
                                                                             "implicit_sft"}
    assert not any(stage["extra"]["cached"] for stage in straight["stages"])
    for name, stage in costs.items():
        assert stage["extra"]["cached"] == (name in finished or name == "sids"), name
    for name in finished:
        assert costs[name]["carried_wall_s"] > 0, name
    for name, report in resumed["report"]["stages"].items():  # the stage reports say the same
        assert report["cached"] == (name in finished), name
    for name, folder in finished.items():  # not trained again, not even rewritten
        assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == written[name], name
    assert resumed["metrics"] == straight["metrics"]
    assert read_rankings(out / resumed["rankings"]) == read_rankings(tmp_path / "straight" / straight["rankings"])


@pytest.mark.slow
def test_a_run_killed_mid_llm_stage_continues_from_the_trainers_last_epoch(tmp_path):
    spec = "sft:checkpoint_epochs=true,sft_epochs=3,sft_max_steps=0"  # as profiles small and paper: epoch checkpoints
    run_to_end(bench_run(spec, tmp_path / "straight"), tmp_path / "cache-straight", tmp_path / "straight.log")
    [straight] = ResultStore(tmp_path / "straight").load()

    out, cache, log = tmp_path / "out", tmp_path / "cache", tmp_path / "run.log"
    shutil.copytree(tmp_path / "cache-straight" / "sids", cache / "sids")
    command = bench_run(spec, out)
    # the Trainer's checkpoint of an epoch is complete once GRBench's elapsed-time file is in it (written last)
    epoch_saved = "*/*/llm-stages/sft-*/trainer/checkpoint-*/grbench-elapsed.json"
    kill_when(command, cache, log, lambda: any(cache.glob(epoch_saved)))
    assert "sft" not in finished_stages(cache) and result_lines(out) == []

    run_to_end(command, cache, log)
    assert len(result_lines(out)) == 1
    [resumed] = ResultStore(out).load()
    sft, plain = resumed["report"]["stages"]["sft"], straight["report"]["stages"]["sft"]
    assert plain["resumed_from"] is None and sft["resumed_from"].startswith("checkpoint-"), sft
    assert sft["steps"] == plain["steps"] and sft["carried"]["wall_s"] > 0
    assert resumed["metrics"] == straight["metrics"]


def test_a_torn_epoch_checkpoint_is_ignored_and_training_starts_over(tmp_path, monkeypatch):
    monkeypatch.setenv("GRBENCH_CACHE", str(tmp_path / "cache"))
    run = ["run", "--profile", "smoke", "--methods", "hstu:epochs=4,patience=10", "--datasets", "synthetic"]

    def record(out: str) -> dict:
        assert main([*run, "--out", str(tmp_path / out)]) == 0
        [stored] = ResultStore(tmp_path / out).load()
        return stored

    first = record("first")
    [checkpoint] = (tmp_path / "cache").glob("**/training-state.pt")
    whole = checkpoint.read_bytes()
    assert record("intact")["report"]["resumed_after_epochs"] == 4  # whole, the checkpoint is used

    for torn in (whole[:len(whole) // 2], whole[:-1], b""):
        checkpoint.write_bytes(torn)
        again = record(f"torn-{len(torn)}")
        assert again["report"]["resumed_after_epochs"] is None and again["train"]["carried_wall_s"] == 0
        assert again["report"]["history"] == first["report"]["history"] and again["metrics"] == first["metrics"]
        assert checkpoint.read_bytes() != torn  # replaced by the new run's own checkpoint
        assert checkpoint_epochs(tmp_path / "cache") == 4


# ------------------------------------------------------------------------------------------- writer killed

def wait_for_line(process: subprocess.Popen, expected: str, log: Path, timeout: float = 60) -> None:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no {expected!r} from the writer in {timeout} s:\n{tail(log)}"
    line = process.stdout.readline().decode().strip()
    assert line == expected, f"{line!r} instead of {expected!r}:\n{tail(log)}"


def temporary_files(out: Path) -> set[Path]:
    return {path for path in out.rglob(".*") if path.is_file() and TEMPORARY.match(path.name)}


def check_store(out: Path) -> list[dict]:
    """What a reader finds after a kill: every record whole and once, every rankings file whole, no lock held."""
    store = ResultStore(out)
    with FileLock(str(store.path) + ".lock", timeout=10):  # the killed writer's lock died with it
        pass
    records = store.load()
    keys = [ResultKey.of(record) for record in records]
    assert len(set(keys)) == len(keys), "a key stored twice"
    for record in records:
        expected = {**kill_writer.record_of(record["round"]), "complete": True,
                    "rankings": str(store.rankings_path(ResultKey.of(record)).relative_to(out))}
        assert record == expected, f"record of round {record['round']} is not the one written"
        # the record names rankings written before it: complete, from its round or a later one
        rows = read_rankings(out / record["rankings"])
        assert rows and len(rows) == rows[0]["of"] and rows[0]["round"] >= record["round"], record["rankings"]
    for path in (out / "rankings").rglob("*.gz") if (out / "rankings").exists() else ():
        rows = read_rankings(path)  # an empty gzip file reads as no rows, without an error
        assert rows and len(rows) == rows[0]["of"] == kill_writer.rankings_size(rows[0]["round"]), path
    # besides the store's own files there are only temporary files, which nothing above read
    names = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    names -= {path.relative_to(out).as_posix() for path in temporary_files(out)}
    allowed = {"results.jsonl", "results.jsonl.lock",
               *(f"rankings/d/writer-smoke-seed{seed}.jsonl.gz" for seed in range(kill_writer.SEEDS))}
    assert names <= allowed, names - allowed
    return records


def test_results_survive_sigkill_at_random_moments_of_writing(tmp_path):
    out, log = tmp_path / "out", tmp_path / "writer.log"
    randomness = random.Random(0)
    next_round, rounds_seen, left = 0, 0, set()
    stored: dict[ResultKey, int] = {}  # key -> the latest round seen stored: a kill never loses or reverts one
    for _ in range(20):
        process = start([sys.executable, "-m", "tests.kill_writer", str(out), str(next_round)], tmp_path / "cache",
                        log, stdout=subprocess.PIPE)
        try:
            wait_for_line(process, "ready", log)
            time.sleep(randomness.uniform(0.05, 0.4))
            assert process.poll() is None, f"the writer stopped by itself:\n{tail(log)}"
            os.killpg(process.pid, signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
        finally:
            kill_group(process)
            process.stdout.close()
        records = check_store(out)
        now = {ResultKey.of(record): record["round"] for record in records}
        lost = {key.id: round_ for key, round_ in stored.items() if now.get(key, -1) < round_}
        assert not lost, f"stored records lost or set back by a kill: {lost}"
        stored = now
        if records:
            next_round = max(record["round"] for record in records) + 1
            rounds_seen = max(rounds_seen, next_round)
        left |= temporary_files(out)
    assert rounds_seen > 20, "the writer barely wrote: the kills tested nothing"
    assert left, "no kill landed in the middle of a write (each leaves a temporary file): the kills tested nothing"

    # a writer after all those kills: the leftover temporary files (and a decoy) change nothing it reads or writes
    decoy = out / ".results.jsonl.decoy.tmp"
    decoy.write_text('{"method": "decoy", "dataset": "d", "profile": "smoke", "seed": 0, "split_fingerprint": "f"}\n')
    before = temporary_files(out)
    process = start([sys.executable, "-m", "tests.kill_writer", str(out), str(next_round), str(kill_writer.SEEDS)],
                    tmp_path / "cache", log, stdout=subprocess.DEVNULL)
    try:
        assert process.wait(timeout=120) == 0, tail(log)
    finally:
        kill_group(process)
    records = check_store(out)
    assert sorted(record["round"] for record in records) == list(range(next_round, next_round + kill_writer.SEEDS))
    assert temporary_files(out) <= before  # a clean run leaves none of its own
    print(f"{rounds_seen} rounds, {len(left)} temporary files left by 20 kills "
          f"({sum(p.stat().st_size for p in left if p.exists())} bytes)")
