"""``python -m bench rerun``: a stored smoke result, rebuilt from its record alone, reproduces bit for bit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.results import ResultKey, ResultStore
from bench.runner import cell_lock

SMOKE = ["run", "--profile", "smoke", "--max-test-users", "50"]


def run_cli(*args: object) -> int:
    return main([str(a) for a in args])


def edit_record(out: Path, result_id: str, edit) -> None:
    """Rewrites ``result_id``'s line of ``out/results.jsonl`` through ``edit(record)``."""
    path = out / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        if record["id"] == result_id:
            edit(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def pop_result(tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "out"
    assert run_cli(*SMOKE, "--methods", "pop", "--out", out) == 0
    return out, ResultStore(out).load()[0]["id"]


def test_rerun_from_an_empty_cache_is_bit_identical(tmp_path, monkeypatch, capsys):
    from baselines.hstu import HSTU

    out = tmp_path / "out"
    assert run_cli(*SMOKE, "--methods", "pop,hstu:loss=ce", "--out", out) == 0
    stored = {r["id"]: r for r in ResultStore(out).load()}
    assert {r["method"]: r["options"] for r in stored.values()} == {"pop": {}, "hstu:loss=ce": {"loss": "ce"}}
    before = (out / "results.jsonl").read_bytes()
    monkeypatch.setenv("GRBENCH_CACHE", str(tmp_path / "empty-cache"))  # retrain, not reload a checkpoint
    # a profile default changed since: the rerun still trains with the record's settings (2 epochs), and says so
    monkeypatch.setitem(HSTU.profiles, "smoke", {**HSTU.profiles["smoke"], "epochs": 1})
    for result_id, record in stored.items():
        capsys.readouterr()
        assert run_cli("rerun", result_id, "--out", out) == 0
        printed, err = capsys.readouterr()
        assert ("epochs 2 -> 1" in err) == record["method"].startswith("hstu")
        assert "identical: every metric is bit-identical" in printed and "rankings: identical for the 50" in printed
        [rerun] = ResultStore(out / "reruns" / result_id).load()
        assert rerun["id"] == result_id and rerun["options"] == record["options"] and rerun["eval_users"] == 50
        assert rerun["metrics"] == record["metrics"]
    assert (out / "results.jsonl").read_bytes() == before  # the stored results are never touched


def test_a_cell_another_process_is_running_is_not_rerun(pop_result, capsys):
    """The rerun trains in the cell's cache folder, so it waits for no one and never trains beside a run of it."""
    out, result_id = pop_result
    [record] = ResultStore(out).load()
    with cell_lock(ResultKey.of(record)) as ours:
        assert ours
        assert run_cli("rerun", result_id, "--out", out) == 2
    assert f"another process is running the cell of {result_id}" in capsys.readouterr().err
    assert not (out / "reruns").exists()
    assert run_cli("rerun", result_id, "--out", out) == 0


def test_unknown_id_lists_close_ids(pop_result, capsys):
    out, result_id = pop_result
    assert run_cli("rerun", result_id.replace("pop", "pob"), "--out", out) == 2
    err = capsys.readouterr().err
    assert f"no result {result_id.replace('pop', 'pob')!r} in {out / 'results.jsonl'}" in err
    assert f"close ids: {result_id}" in err and "Traceback" not in err


def test_changed_split_fingerprint_is_refused_before_training(pop_result, capsys):
    out, result_id = pop_result
    edit_record(out, result_id, lambda record: record.update(split_fingerprint="0" * 16))
    assert run_cli("rerun", result_id, "--out", out) == 2
    err = capsys.readouterr().err
    assert "the data changed" in err and "0000000000000000" in err
    assert not (out / "reruns").exists()


def test_changed_seq_file_is_refused_and_its_path_comes_from_the_command(tmp_path, monkeypatch, capsys):
    data = tmp_path / "Shop.txt"
    data.write_text("".join(f"u{u} " + " ".join(f"i{(u * 7 + k) % 30}" for k in range(6)) + "\n" for u in range(40)))
    out = tmp_path / "out"
    argv = ["run", "--profile", "smoke", "--methods", "pop", f"--datasets=synthetic,seq:{data}", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["bench", *argv])  # the record stores the command line it was run with
    assert run_cli(*argv) == 0
    result_id = next(r["id"] for r in ResultStore(out).load() if r["dataset"] == "seq:Shop")
    assert run_cli("rerun", result_id, "--out", out) == 0
    assert "identical" in capsys.readouterr().out
    data.write_text(data.read_text().replace("i3 ", "i4 ", 1))
    assert run_cli("rerun", result_id, "--out", out) == 2
    assert "the data changed: dataset 'seq:Shop'" in capsys.readouterr().err


@pytest.mark.parametrize("where, status, verdict", [
    ("outside", 1, "DIFFERENT: a stored or rerun mean lies outside the stored 95% CI"),
    ("inside", 0, "note: the metrics differ, but every stored and rerun mean lies within the stored 95% CI"),
])
def test_tampered_stored_metric_is_judged_against_its_ci(pop_result, capsys, where, status, verdict):
    out, result_id = pop_result

    def tamper(record: dict) -> None:
        ndcg = record["metrics"]["ndcg@10"]
        assert ndcg["ci_low"] < ndcg["mean"] < ndcg["ci_high"]
        ndcg["mean"] = ndcg["ci_high"] + 0.5 if where == "outside" else (ndcg["mean"] + ndcg["ci_high"]) / 2
        record.update(git_commit="0" * 40, versions={**record["versions"], "numpy": "0.0.1"})

    edit_record(out, result_id, tamper)
    assert run_cli("rerun", result_id, "--out", out) == status
    captured = capsys.readouterr()
    assert verdict in captured.out and "identical: every metric" not in captured.out
    assert "warning: git commit differs: stored " + "0" * 40 in captured.err
    assert "package versions differ: numpy 0.0.1 ->" in captured.err
