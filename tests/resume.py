"""The kill-and-resume check every trained method's tests run (see bench/training.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench.cli import main
from bench.results import ResultStore


def check_resume_after_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str,
                            module: ModuleType) -> tuple[dict, dict]:
    """Runs ``spec`` (smoke profile, 4 epochs) straight, then again killed after epoch 2 and rerun.

    The kill is a KeyboardInterrupt from the third call of ``module.validation_score`` (where the method
    looks it up): after epoch 2's checkpoint, before epoch 3's. Asserts that the resumed run has the straight
    run's history and metrics and counts the interrupted process's time; returns both records.
    """
    options = "epochs=4,patience=10"
    run = ["run", "--profile", "smoke", "--methods", f"{spec},{options}" if ":" in spec else f"{spec}:{options}"]
    monkeypatch.setenv("GRBENCH_CACHE", str(tmp_path / "cache-straight"))
    assert main([*run, "--out", str(tmp_path / "straight")]) == 0
    straight = ResultStore(tmp_path / "straight").load()[0]

    monkeypatch.setenv("GRBENCH_CACHE", str(tmp_path / "cache-resumed"))
    original = interrupt_in_epoch_three(monkeypatch, module)
    assert main([*run, "--out", str(tmp_path / "resumed")]) == 130
    assert not (tmp_path / "resumed" / "results.jsonl").exists()
    monkeypatch.setattr(module, "validation_score", original)
    assert main([*run, "--out", str(tmp_path / "resumed")]) == 0
    resumed = ResultStore(tmp_path / "resumed").load()[0]

    assert resumed["report"]["resumed_after_epochs"] == 2 and straight["report"]["resumed_after_epochs"] is None
    assert len(straight["report"]["history"]) == 4
    assert resumed["report"]["history"] == straight["report"]["history"]
    assert resumed["metrics"]["ndcg@10"]["mean"] == straight["metrics"]["ndcg@10"]["mean"]
    # the epochs of the interrupted process count in the cost of the run
    assert straight["train"]["carried_wall_s"] == 0 < resumed["train"]["carried_wall_s"] < resumed["train"]["wall_s"]
    return straight, resumed


def interrupt_in_epoch_three(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> Callable[..., float]:
    """Makes the third call of ``module.validation_score`` raise KeyboardInterrupt (after epoch 2's checkpoint,
    before epoch 3's, with one validation per epoch); returns the original function, to put back."""
    original = module.validation_score
    calls = []

    def killed_in_epoch_three(*args: Any, **kwargs: Any) -> float:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "validation_score", killed_in_epoch_three)
    return original
