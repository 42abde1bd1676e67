"""Checks every trained ID-based sequential method's tests share (HSTU, ReaRec): tiny datasets given as item
sequences, the leakage check of the training batches, the "learns a successor pattern" check and the smoke run
through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.popularity import Popularity
from bench.cli import main
from bench.data.base import Dataset, make_catalog, make_interactions
from bench.registry import Method, RunContext, seed_everything
from bench.results import ResultStore
from bench.split import leave_last_out
from bench.training import validation_score


def context(tmp_path: Path, seed: int = 0) -> RunContext:
    return RunContext(seed=seed, profile="smoke", device="cpu", cache_dir=tmp_path / "cache")


def fit_smoke(method_class: type[Method], tmp_path: Path, dataset: Dataset,
              **options: str) -> tuple[Method, RunContext]:
    """``method_class`` trained with the smoke settings (plus ``options``) on ``dataset``, as the harness would."""
    seed_everything(0)
    run = context(tmp_path)
    method = method_class(method_class.settings_for("smoke", options), run)
    method.fit(leave_last_out(dataset).train_view(), run)
    return method, run


def sequences_dataset(name: str, sequences: list[list[int]]) -> Dataset:
    """One user per sequence, events in list order."""
    users, items, times = [], [], []
    for user, seq in enumerate(sequences):
        users += [f"u{user}"] * len(seq)
        items += [str(item) for item in seq]
        times += list(range(len(seq)))
    catalog = make_catalog([{"item": str(item), "title": None} for item in sorted(set(items), key=int)])
    return Dataset(name, make_interactions(users, items, times), catalog, source="test")


def check_training_batches_hold_training_items_only(method_class: type[Method], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, **options: str) -> None:
    """Validation and test targets are items that occur nowhere else: no batch that ``method_class.loss`` sees may
    contain one, and its rows are exactly each user's last ``max_len + 1 = 11`` training items, the targets being
    the inputs shifted by one and padded on the right."""
    rng = np.random.default_rng(0)
    sequences = []
    for user in range(30):
        length = int(rng.integers(2, 25))  # several longer than max_len + 1 = 11
        sequences.append([*rng.integers(1, 21, size=length).tolist(), 100 + user, 200 + user])
    split = leave_last_out(sequences_dataset("held-out-targets", sequences))
    data = split.train_view()
    held_out = set(data.valid_targets.tolist()) | set(split.test_targets().tolist())
    assert len(held_out) == 60

    batches = []
    original = method_class.loss

    def recording_loss(self, inputs, targets):
        batches.append((inputs.clone(), targets.clone()))
        return original(self, inputs, targets)

    monkeypatch.setattr(method_class, "loss", recording_loss)
    run = context(tmp_path)
    method_class(method_class.settings_for("smoke", {"epochs": "1", **options}), run).fit(data, run)

    seen = torch.cat([torch.cat([i.flatten(), t.flatten()]) for i, t in batches])
    assert seen.numel() and not set(seen.tolist()) & held_out
    windows = []
    for inputs, targets in batches:
        for row_in, row_target in zip(inputs.tolist(), targets.tolist()):
            n = sum(1 for item in row_target if item)
            assert row_in[1:n] == row_target[:n - 1]  # targets are the inputs shifted by one
            assert not any(row_in[n:]) and not any(row_target[n:])  # padding on the right only
            windows.append(tuple(row_in[:n] + row_target[n - 1:n]))
    # one example per user with 2+ training items: its last max_len + 1 = 11 training items
    expected = [tuple(seq[-11:].tolist()) for seq in data.train_sequences if len(seq) >= 2]
    assert sorted(windows) == sorted(expected)


def check_learns_successor(method_class: type[Method], tmp_path: Path, **options: str) -> None:
    """Next item = previous + 1 (mod 30): popularity cannot rank it, a sequential model must. Asserts validation
    NDCG@10 above 0.6 and four times popularity's, and that the method kept its best epoch's weights."""
    rng = np.random.default_rng(0)
    sequences = []
    for _ in range(150):
        start, length = int(rng.integers(30)), int(rng.integers(6, 12))
        sequences.append([(start + step) % 30 + 1 for step in range(length)])
    dataset = sequences_dataset("successor", sequences)
    method, run = fit_smoke(method_class, tmp_path, dataset, epochs="8", patience="8", learning_rate="0.01",
                            **options)
    data = leave_last_out(dataset).train_view()
    floor = Popularity({}, run)
    floor.fit(data, run)
    pop_ndcg = validation_score(floor.recommend, data, 512)
    ndcg = method.report()["best_valid_ndcg@10"]
    assert ndcg == pytest.approx(validation_score(method.recommend, data, 512))  # best weights kept
    assert ndcg > 0.6 and ndcg > 4 * pop_ndcg, (ndcg, pop_ndcg)


def check_smoke_cli_run(tmp_path: Path, board_rows: dict[str, str]) -> None:
    """``bench run --profile smoke`` of the specs ``board_rows`` names: each trains two finite-loss epochs, lands
    finite metrics as an ID-based method, and shows in the synthetic leaderboard as its row label."""
    assert main(["run", "--profile", "smoke", "--methods", ",".join(board_rows), "--out", str(tmp_path)]) == 0
    records = {r["method"]: r for r in ResultStore(tmp_path).load()}
    assert set(records) == set(board_rows)
    for record in records.values():
        assert record["family"] == "id-based" and record["report"]["epochs_run"] == 2
        assert all(math.isfinite(epoch["loss"]) for epoch in record["report"]["history"])
        assert all(math.isfinite(record["metrics"][m]["mean"]) for m in ("hit@10", "ndcg@10"))
    board = (tmp_path / "leaderboards" / "synthetic.md").read_text()
    for label in board_rows.values():
        assert f"| {label}" in board, label
