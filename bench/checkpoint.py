"""Epoch checkpoints, so that a killed training run continues where it stopped instead of starting over.

A method saves its whole training state after every epoch (weights, optimizer, best-so-far, history,
random-number generators, elapsed time) with :meth:`EpochCheckpoint.save`; on the next run of the same
cell, :meth:`EpochCheckpoint.load` hands it back and the method picks up at the next epoch. The file is
written atomically (a killed write leaves the previous checkpoint intact) and carries a key (settings,
split fingerprint, seed): a checkpoint made under other settings is ignored, never silently reused.

Training time spent before the interruption is carried into the run's cost record
(:meth:`bench.registry.RunContext.carry_over`), so a resumed run reports what the whole run cost.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import write_atomically

CHECKPOINT_VERSION = 1
EPOCH_CHECKPOINT = "training-state.pt"  # the file name in a cell's cache folder


def rng_state() -> dict[str, Any]:
    """The state of every global random-number generator that training draws from."""
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Puts the generators back as :func:`rng_state` found them (a resumed run draws what it would have)."""
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The whole saved file, as :meth:`EpochCheckpoint.save` wrote it: ``version``, ``key`` (JSON text) and
    ``state``. Raises whatever torch raises on a file it cannot read."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def readable_checkpoint(path: Path) -> dict[str, Any] | None:
    """The whole saved file (:func:`read_checkpoint`) when it is one this code reads, else None: no file, an
    unreadable one, or another checkpoint version (a run then trains from the start)."""
    if not path.is_file():
        return None
    try:
        saved = read_checkpoint(path)
    except Exception:  # noqa: BLE001 - any unreadable checkpoint means: train from the start
        return None
    return saved if isinstance(saved, dict) and saved.get("version") == CHECKPOINT_VERSION else None


class EpochCheckpoint:
    """One training run's latest state, at ``path``, valid only for the run described by ``key``."""

    def __init__(self, path: Path, key: dict[str, Any]) -> None:
        self.path = Path(path)
        # JSON text: compared exactly, and readable in the file when someone wonders why it was ignored
        self.key = json.dumps(key, sort_keys=True, default=str)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none, it belongs to another run, or it cannot be read."""
        saved = readable_checkpoint(self.path)
        if saved is None or saved.get("key") != self.key:
            return None
        return saved["state"]

    def save(self, state: dict[str, Any]) -> None:
        """Writes ``state`` atomically: readers find the previous checkpoint or this one, never a torn file."""
        import torch

        buffer = io.BytesIO()
        torch.save({"version": CHECKPOINT_VERSION, "key": self.key, "state": state}, buffer)
        write_atomically(self.path, buffer.getvalue())
