"""Leaderboard marks: a row cut short at its epoch limit while still improving is marked, a converged one not; a
row names the SIDs it ran on."""

from __future__ import annotations

import copy

from bench.cli import main
from bench.leaderboard import REDUCED_MARK, UNCONVERGED_MARK, render_dataset_tables, row_variant, still_improving
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


def test_a_row_names_the_sid_source_its_record_used():
    def record(variant: str, source: str | None) -> dict:
        return {"variant": variant, "report": {"sids": {"source": source}} if source else {}}

    assert row_variant(record("rqvae SIDs", "collaborative")) == "rqvae SIDs from collaborative"
    assert row_variant(record("rqvae SIDs", "text:all-MiniLM-L6-v2")) == "rqvae SIDs from text:all-MiniLM-L6-v2"
    assert row_variant(record("SmolLM2-135M", "text:all-MiniLM-L6-v2")) == (
        "SmolLM2-135M, SIDs from text:all-MiniLM-L6-v2")
    assert row_variant(record("", "attributes+collaborative")) == "SIDs from attributes+collaborative"
    assert row_variant(record("loss CE", None)) == "loss CE"  # a method without SIDs is unchanged
    assert row_variant({"variant": "loss CE"}) == "loss CE"  # records stored without a report too


def test_two_tiger_rows_on_different_sids_read_differently_in_the_table(tmp_path):
    assert main(["run", "--profile", "smoke", "--methods", "pop", "--out", str(tmp_path)]) == 0
    pop = ResultStore(tmp_path).load()[0]
    rows = []
    for spec, source in (("tiger", "text:all-MiniLM-L6-v2"), ("tiger:sid_source=collaborative", "collaborative")):
        trained = with_training(pop, spec, epochs=200, best_epoch=3, epochs_run=10)
        trained["variant"] = "rqvae SIDs"
        trained["report"]["sids"] = {"source": source}
        rows.append(trained)
    table = render_dataset_tables([pop, *rows])
    assert "| tiger (rqvae SIDs from text:all-MiniLM-L6-v2)" in table
    assert "| tiger:sid_source=collaborative (rqvae SIDs from collaborative)" in table
