"""benchmarks/history_masking.py: a finished run's metrics with and without the user's history items."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cli import main as bench_main
from bench.errors import GRBenchError
from bench.results import ResultStore
from benchmarks.history_masking import drop_history
from benchmarks.history_masking import main as masking_main


def test_history_items_are_dropped_and_the_next_ones_move_up():
    ranked = np.array([[5, 1, 7, 2, 9], [3, 4, 6, 8, 1]])
    histories = [np.array([1, 5]), np.array([8])]
    assert drop_history(ranked, histories, 3).tolist() == [[7, 2, 9], [3, 4, 6]]
    with pytest.raises(ValueError, match="row 0: only 3 items"):
        drop_history(ranked, histories, 4)


def test_a_run_that_never_trained_is_refused_before_any_work():
    with pytest.raises(GRBenchError, match="no epoch checkpoint"):
        masking_main(["--method", "gru4rec", "--dataset", "synthetic", "--profile", "smoke"])


def test_a_beam_search_method_is_refused_with_the_reason():
    with pytest.raises(GRBenchError, match="tiger is a generative method"):
        masking_main(["--method", "tiger", "--dataset", "synthetic", "--profile", "smoke"])


def test_our_protocol_row_reproduces_the_stored_run_and_masking_removes_history(tmp_path, capsys):
    assert bench_main(["run", "--profile", "smoke", "--methods", "gru4rec", "--datasets", "synthetic",
                       "--out", str(tmp_path)]) == 0
    (record,) = ResultStore(tmp_path).load()
    capsys.readouterr()
    assert masking_main(["--method", "gru4rec", "--dataset", "synthetic", "--profile", "smoke",
                         "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    ours = next(line for line in printed.splitlines() if line.startswith("| ours"))
    masked = next(line for line in printed.splitlines() if line.startswith("| history masked"))
    stored = [record["metrics"][name]["mean"] for name in ("hit@5", "hit@10", "ndcg@5", "ndcg@10")]
    assert [float(cell) for cell in ours.split("|")[2:6]] == pytest.approx(stored, abs=5e-5)
    assert len(masked.split("|")) == len(ours.split("|"))
    assert "test targets are history items" in printed
    assert f"the 'ours' row equals the stored record {record['id']}" in printed


def test_a_cache_holding_another_run_than_the_stored_one_is_flagged(tmp_path, capsys):
    import json

    assert bench_main(["run", "--profile", "smoke", "--methods", "gru4rec", "--datasets", "synthetic",
                       "--out", str(tmp_path)]) == 0
    results = tmp_path / "results.jsonl"
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    record["metrics"]["ndcg@10"]["mean"] += 0.01  # as if the stored row came from another training run
    results.write_text(json.dumps(record) + "\n")
    capsys.readouterr()
    assert masking_main(["--method", "gru4rec", "--dataset", "synthetic", "--profile", "smoke",
                         "--out", str(tmp_path)]) == 0
    assert "WARNING: the 'ours' NDCG@10" in capsys.readouterr().out
