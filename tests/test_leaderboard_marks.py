"""Leaderboard marks: a row cut short at its epoch limit while still improving is marked, a converged one not."""

from __future__ import annotations

import copy

from bench.cli import main
from bench.leaderboard import REDUCED_MARK, UNCONVERGED_MARK, render_dataset_tables, still_improving
from bench.results import ResultStore


def with_training(record: dict, method: str, epochs: int, best_epoch: int, epochs_run: int) -> dict:
    """A copy of ``record`` as a trained method's record: its epoch limit and its training history."""
    trained = copy.deepcopy(record)
    history = [{"epoch": e, "loss": 1.0, "ndcg@10": 0.01 * (e + 1)} for e in range(epochs_run)]
    trained.update(method=method, reduced_schedule=False, settings={"epochs": epochs},
                   report={"best_epoch": best_epoch, "epochs_run": epochs_run, "history": history})
    return trained


def test_only_a_row_still_improving_at_its_epoch_limit_is_marked(tmp_path):
    assert main(["run", "--profile", "smoke", "--methods", "pop", "--out", str(tmp_path)]) == 0
    pop = ResultStore(tmp_path).load()[0]
    cut = with_training(pop, "tiger:epochs=6", epochs=6, best_epoch=5, epochs_run=6)
    converged = with_training(pop, "sasrec", epochs=200, best_epoch=30, epochs_run=51)  # stopped by patience
    peaked = with_training(pop, "hstu", epochs=6, best_epoch=3, epochs_run=6)  # at its limit, but past its best
    assert [still_improving(r) for r in (cut, converged, peaked, pop)] == [True, False, False, False]

    table = render_dataset_tables([pop, cut, converged, peaked])
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert f"tiger:epochs=6 {UNCONVERGED_MARK}" in rows and "sasrec" in rows and "hstu" in rows
    assert f"{UNCONVERGED_MARK} training ended at its epoch limit" in table
    assert REDUCED_MARK not in table

    reduced = {**cut, "reduced_schedule": True}  # a CPU-profile row: † already says more, so no ‡
    table = render_dataset_tables([pop, reduced])
    assert f"tiger:epochs=6 {REDUCED_MARK}" in table and UNCONVERGED_MARK not in table
