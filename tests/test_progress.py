"""``python -m bench progress``: what the cache's checkpoints say about runs interrupted, stopped or finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from baselines import sequential
from bench.checkpoint import CHECKPOINT_VERSION
from bench.cli import main
from bench.paths import cache_dir
from bench.progress import training_progress
from bench.results import ResultKey, ResultStore
from bench.runner import cell_lock
from methods.llm.stages import DONE, STAGE_FILE, TRAINER_DIR
from tests.resume import interrupt_in_epoch_three


def test_an_interrupted_run_shows_its_epochs_best_score_and_patience_then_finished(tmp_path, monkeypatch, capsys):
    run = ["run", "--profile", "smoke", "--methods", "hstu:epochs=4,patience=3", "--out", str(tmp_path / "out")]
    original = interrupt_in_epoch_three(monkeypatch, sequential)
    assert main(run) == 130
    [row] = training_progress(cache_dir())
    assert row.method == "hstu" and row.done == "2/4 epochs" and row.folder.endswith("smoke/seed0")
    assert row.status.startswith("resumable, ") and row.status.endswith(" epochs of patience left")
    patience_left = int(row.status.split(", ")[1].split()[0])
    best_epoch = int(row.best.split("(epoch ")[1].rstrip(")"))
    assert patience_left == 3 - (2 - best_epoch)  # epochs since the best one count against the patience
    assert row.latest.endswith("(epoch 2)") and row.hours is not None and row.hours > 0
    assert row.epoch_minutes == pytest.approx(row.hours * 60 / 2)

    monkeypatch.setattr(sequential, "validation_score", original)
    capsys.readouterr()
    assert main(run) == 0
    [record] = ResultStore(tmp_path / "out").load()
    [row] = training_progress(cache_dir())
    assert row.done == "4/4 epochs" and row.status == "finished"
    report = record["report"]
    assert row.best == f"{report['best_valid_ndcg@10']:.4f} (epoch {report['best_epoch'] + 1})"
    assert main(["progress"]) == 0
    out = capsys.readouterr().out
    assert f"training checkpoints under {cache_dir()}" in out and "| 4/4 epochs" in out and "finished" in out


def test_an_unreadable_checkpoint_and_llm_stages_get_their_own_rows(tmp_path, capsys):
    cache = tmp_path / "cache"
    broken = cache / "ml-100k" / "f" / "tiger" / "small" / "seed0"
    broken.mkdir(parents=True)
    (broken / "training-state.pt").write_bytes(b"not a checkpoint")
    older = cache / "ml-100k" / "f" / "hstu" / "small" / "seed0"
    older.mkdir(parents=True)
    torch.save({"version": CHECKPOINT_VERSION - 1, "key": json.dumps({"method": "hstu"}), "state": {"epochs": []}},
               older / "training-state.pt")
    stages = cache / "ml-100k" / "f" / "llm-stages"
    finished, running, fresh = stages / "sft-0123", stages / "cpt-4567", stages / "isft-89ab"
    for folder in (finished, running / TRAINER_DIR / "checkpoint-10", running / TRAINER_DIR / "checkpoint-40",
                   fresh):
        folder.mkdir(parents=True)
    (finished / STAGE_FILE).write_text(json.dumps({"cost": {"wall_s": 7200.0}, "report": {"steps": 120}}))
    (finished / DONE).write_text("0123")
    for step in (10, 40):
        state = running / TRAINER_DIR / f"checkpoint-{step}" / "trainer_state.json"
        state.write_text(json.dumps({"global_step": step, "max_steps": 90}))

    rows = {row.folder.split("/")[-1] if "llm-stages" in row.folder else row.folder.split("/")[2]: row
            for row in training_progress(cache)}
    assert rows["tiger"].status.startswith("unreadable") and "starts over" in rows["tiger"].status
    assert rows["hstu"].method == "hstu"
    assert rows["hstu"].status.startswith(f"checkpoint version {CHECKPOINT_VERSION - 1}")
    assert (rows["sft-0123"].method, rows["sft-0123"].done, rows["sft-0123"].status) == ("LLM stage sft", "120 steps",
                                                                                         "finished")
    assert rows["sft-0123"].hours == 2.0
    assert rows["cpt-4567"].done == "40/90 steps" and rows["cpt-4567"].status.startswith("resumable")
    assert "starts over" in rows["isft-89ab"].status

    assert main(["progress", "--cache", str(tmp_path / "empty")]) == 2
    assert "no such cache folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["progress", "--cache", str(tmp_path / "empty")]) == 0
    assert "no training checkpoints under" in capsys.readouterr().out


@pytest.mark.parametrize("epochs, stopped, ends", [
    (200, False, "epoch 45, about 2.5 h more"),  # best at epoch 25, patience 20: no gain by epoch 45 ends it
    (32, False, "epoch 32, about 0.3 h more"),  # the last epoch comes first
    (200, True, ""),  # nothing left to run
])
def test_a_resumable_run_says_when_early_stopping_ends_it_without_a_new_best(tmp_path, epochs, stopped, ends):
    write_tiger_checkpoint(tmp_path / "cache", epochs, stopped)
    [row] = training_progress(tmp_path / "cache")
    assert row.done == f"30/{epochs} epochs" and row.epoch_minutes == 10.0
    assert row.ends_without_gain == ends
    assert row.status == ("stopped early (no gain in 20 epochs)" if stopped else
                          "resumable, 15 epochs of patience left")


def write_tiger_checkpoint(cache: Path, epochs: int, stopped: bool) -> Path:
    """An epoch checkpoint of 30 epochs done (10 minutes each), the best at epoch 25, patience 20; its folder."""
    folder = cache / "seq-Beauty" / "f" / "tiger" / "small" / "seed0"
    folder.mkdir(parents=True)
    history = [{"epoch": epoch, "loss": 1.0, "ndcg@10": 0.01 + 0.001 * min(epoch, 24)} for epoch in range(30)]
    state = {"history": history, "validated_epochs": list(range(0, 30, 2)), "best_epoch": 24,
             "best_score": history[24]["ndcg@10"], "stopped": stopped, "wall_s": 30 * 600.0}
    torch.save({"version": CHECKPOINT_VERSION, "state": state,
                "key": json.dumps({"method": "tiger", "settings": {"epochs": epochs, "patience": 20}})},
               folder / "training-state.pt")
    return folder


def test_runs_and_stages_another_process_holds_show_as_training_now(tmp_path):
    """The cell lock of ``bench run`` and the stage lock of LLM stages, held by another process (here: another
    file handle), turn "resumable" into "training now"; a lock file left by a finished or killed process does not."""
    cache = tmp_path / "cache"
    cell = write_tiger_checkpoint(cache, 200, False)
    stage = cache / "ml-100k" / "f" / "llm-stages" / "cpt-4567"
    (stage / TRAINER_DIR / "checkpoint-10").mkdir(parents=True)
    (stage / TRAINER_DIR / "checkpoint-10" / "trainer_state.json").write_text(
        json.dumps({"global_step": 10, "max_steps": 90}))
    locks = [FileLock(str(folder.with_name(folder.name + ".lock"))) for folder in (cell, stage)]

    def statuses() -> list[str]:
        return sorted(row.status for row in training_progress(cache))

    assert statuses() == ["resumable from its Trainer checkpoint", "resumable, 15 epochs of patience left"]
    for lock in locks:
        lock.acquire()
    assert statuses() == ["training now", "training now, 15 epochs of patience left"]
    for lock in locks:
        lock.release()
    assert all(Path(lock.lock_file).is_file() for lock in locks)  # left behind, as after a run
    assert statuses() == ["resumable from its Trainer checkpoint", "resumable, 15 epochs of patience left"]


def test_dry_run_says_what_a_run_would_do_with_each_cell_and_runs_nothing(tmp_path, monkeypatch, capsys):
    """Stored, interrupted (with its epoch checkpoint), running in another process, never run, and needing text
    the dataset lacks: each cell gets its own line, and the dry run trains, stores and writes nothing."""
    out = tmp_path / "out"
    smoke = ["run", "--profile", "smoke", "--out", str(out)]
    assert main([*smoke, "--methods", "pop"]) == 0
    original = interrupt_in_epoch_three(monkeypatch, sequential)
    assert main([*smoke, "--methods", "hstu:epochs=4"]) == 130
    monkeypatch.setattr(sequential, "validation_score", original)
    [record] = ResultStore(out).load()
    held = ResultKey("random", record["dataset"], "smoke", 1, record["split_fingerprint"])
    capsys.readouterr()

    with cell_lock(held):  # its lock file is the one thing made here
        stored_before, cache_before = (out / "results.jsonl").read_bytes(), sorted(cache_dir().rglob("*"))
        assert main([*smoke, "--methods", "pop,hstu:epochs=4,random,sft", "--seeds", "0,1", "--dry-run",
                     "--datasets", "synthetic,synthetic:users=40,items=30,seed=3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    actions = {tuple(cell.strip() for cell in line.strip("|").split("|"))[:3]: line.split("|")[4].strip()
               for line in lines[1:]}
    synthetic = record["dataset"]
    assert actions[("pop", synthetic, "0")] == f"skip: stored in {out} (--force reruns it)"
    assert actions[("pop", synthetic, "1")] == "rank"
    assert actions[("hstu:epochs=4", synthetic, "0")].startswith("resume after 2/4 epochs; best valid ndcg@10 so far")
    assert actions[("hstu:epochs=4", synthetic, "1")] == "train and rank"
    assert actions[("random", synthetic, "1")] == "skip: another process is running it"
    assert actions[("sft", synthetic, "0")] == "train and rank"  # synthetic items have titles
    assert len(actions) == 2 * 4 * 2
    assert (out / "results.jsonl").read_bytes() == stored_before
    assert sorted(cache_dir().rglob("*")) == cache_before  # no cell folder made, no SIDs built
