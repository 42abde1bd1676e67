"""The epoch loop every trained method shares: early stopping on validation NDCG@10, and resume.

Methods differ in how they train an epoch and how they rank; they do not differ in how a run is
stopped, checkpointed and resumed, so that lives here once. :func:`train_with_early_stopping` runs
``train_epoch`` and ``validate`` alternately, keeps the best weights, stops after ``patience`` epochs
without improvement, and saves the whole state after every epoch (:mod:`bench.checkpoint`), so that a
killed run continues at the next epoch with the same weights, optimizer, data order and random draws.

A method whose training does not depend on its epoch limit (no schedule sized to the total step count) may
also let a run with a higher limit continue the checkpoint of the same run cut at a lower one
(``extends_shorter_runs``): ``tiger:epochs=6`` picks up where ``tiger:epochs=2`` ended, and trains, validates
and keeps what a fresh 6-epoch run would have.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.checkpoint import EPOCH_CHECKPOINT, EpochCheckpoint, readable_checkpoint, restore_rng, rng_state
from bench.costs import cpu_info, devices_in_use
from bench.evaluate import per_user_metrics
from bench.provenance import process_commit
from bench.registry import RunContext
from bench.split import TrainData

VALID_METRIC = "ndcg@10"
VALID_TOP_K = 10
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def native_bf16(device: Any) -> bool:
    """Whether ``device`` (a torch.device) multiplies bf16 matrices in hardware: a CUDA GPU with bf16, or a CPU
    whose flags include AVX512-BF16 or AMX-BF16. Elsewhere bf16 autocast is emulated, slower than float32, so
    methods that train in bf16 where they can train in float32 there.

    The CPU check reads the flags of ``/proc/cpuinfo`` (:func:`bench.costs.cpu_info`): torch 2.13 has no public
    test for it, and oneDNN's (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also says yes on AVX512 CPUs that
    only emulate bf16. Without that file (not Linux) the answer is no.
    """
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and bool(set((cpu_info("flags") or "").split()) & NATIVE_BF16_CPU_FLAGS)


def validation_score(recommend: Callable[[Sequence[np.ndarray], int, np.ndarray], np.ndarray], data: TrainData,
                     batch_size: int, users: np.ndarray | None = None) -> float:
    """Mean validation NDCG@10 of ``recommend`` (history ``items[:-2]``, target ``items[-2]``) over ``users``
    (all when None; a subset where ranking is costly, e.g. beam search)."""
    users = np.arange(data.n_users) if users is None else np.asarray(users)
    every_history = data.valid_histories()
    histories = [every_history[u] for u in users]
    topk = np.concatenate([
        recommend(histories[start:start + batch_size], VALID_TOP_K, users[start:start + batch_size])
        for start in range(0, len(users), batch_size)
    ])
    return float(per_user_metrics(data.valid_targets[users], topk)[VALID_METRIC].mean())


def last_epoch_without_gain(best_epoch: int, patience: int, epochs: int) -> int:
    """The epoch (1-based) after which :func:`train_with_early_stopping` stops if no epoch beats ``best_epoch``
    (0-based): the one that uses up the patience, or the last."""
    return min(epochs, best_epoch + patience + 1)


def is_validated(epoch: int, epochs: int, validate_every: int) -> bool:
    """Whether :func:`train_with_early_stopping` validates after ``epoch`` (0-based) of ``epochs``."""
    return epoch == 0 or (epoch + 1) % validate_every == 0 or epoch + 1 == epochs


def key_without_epoch_limit(key: dict[str, Any]) -> str:
    """A checkpoint key less ``settings["epochs"]``, as comparable JSON text: what must match for one run to
    continue another."""
    settings = {name: value for name, value in key.get("settings", {}).items() if name != "epochs"}
    return json.dumps({**key, "settings": settings}, sort_keys=True, default=str)


def shorter_run_state(cell: Path, method: str, matches: Callable[[dict[str, Any]], bool], epochs: int,
                      validate_every: int) -> tuple[str, dict[str, Any]] | None:
    """The epoch checkpoint of the same run under another epoch limit that a run of ``epochs`` epochs in cache
    folder ``cell`` can continue as if it had made it, with the name of the cell folder it lies in; None when
    there is none.

    It is looked for in the sibling folders of the same method (``<method>`` or ``<method>-<options>``) with
    the same profile and seed. Its key must have an epoch limit and satisfy ``matches``; it must hold no more
    epochs than ``epochs`` and have validated exactly the epochs this run validates (a run cut at epoch 3
    validated its last epoch, which a longer run with ``validate_every`` 2 would not have). Of several, the one
    with most epochs.
    """
    best: tuple[str, dict[str, Any]] | None = None
    for path in sorted(cell.parent.parent.parent.glob(f"*/{cell.parent.name}/{cell.name}/{EPOCH_CHECKPOINT}")):
        folder = path.parent.parent.parent.name
        if path.parent == cell or not (folder == method or folder.startswith(f"{method}-")):
            continue
        saved = readable_checkpoint(path)
        if saved is None:
            continue
        try:
            found = json.loads(saved["key"])
            if "epochs" not in found.get("settings", {}) or not matches(found):
                continue
        except Exception:  # noqa: BLE001 - a checkpoint with a malformed key is simply not a candidate
            continue
        state = saved["state"]
        done = len(state["history"])
        if done > epochs or state["validated_epochs"] != [e for e in range(done)
                                                          if is_validated(e, epochs, validate_every)]:
            continue
        if best is None or done > len(best[1]["history"]):
            best = (folder, state)
    return best


def train_with_early_stopping(
    context: RunContext,
    *,
    name: str,
    key: dict[str, Any],
    model: Any,
    optimizer: Any,
    epochs: int,
    patience: int,
    train_epoch: Callable[[int], float],
    validate: Callable[[], float],
    extra_state: tuple[Callable[[], Any], Callable[[Any], None]] | None = None,
    validate_every: int = 1,
    extends_shorter_runs: bool = False,
) -> dict[str, Any]:
    """Trains ``model`` (a torch module) for up to ``epochs`` epochs and leaves its best weights loaded.

    ``train_epoch(epoch)`` returns the epoch's training loss; ``validate()`` the validation score (higher is
    better). ``key`` describes the run (settings, split, seed): a checkpoint saved under another key is not
    resumed. ``extra_state`` is a (get, set) pair for state beyond the model, optimizer and global random
    generators that a resume must restore (e.g. a data loader's own generator). Where validation is costly,
    ``validate_every`` > 1 validates after the first epoch, every ``validate_every`` epochs and after the last
    one; the epochs between repeat the last measured score, so the best weights only change when measured.
    ``extends_shorter_runs`` (for methods whose training ignores the epoch limit, with ``key["settings"]
    ["epochs"] == epochs``): without a checkpoint of its own, the run continues the one of the same run under
    another limit (:func:`shorter_run_state`). Returns the training report stored with the result: best epoch
    and score, epochs run, the per-epoch history (loss, validation score and the commit that trained the epoch),
    the validated epochs, where it resumed and from which cell.
    """
    full_key = {"method": name, **key}
    checkpoint = EpochCheckpoint(context.cache_dir / EPOCH_CHECKPOINT, full_key)
    state = checkpoint.load()
    continued_from = None
    if state is None and extends_shorter_runs:
        if key["settings"]["epochs"] != epochs:
            raise ValueError(f"{name}: extends_shorter_runs needs settings['epochs'] == epochs ({epochs})")
        wanted = key_without_epoch_limit(full_key)
        shorter = shorter_run_state(context.cache_dir, name, lambda found: key_without_epoch_limit(found) == wanted,
                                    epochs, validate_every)
        if shorter is not None:
            continued_from, state = shorter
            context.log(f"{name}: continues the {len(state['history'])} epochs of cell {continued_from} (the same "
                        f"run with another epoch limit)")
    state = state or {"best_score": float("-inf"), "best_epoch": -1, "best_state": None, "history": [],
                      "validated_epochs": [], "stopped": False, "wall_s": 0.0, "gpu_hours": 0.0}
    history: list[dict[str, Any]] = state["history"]
    resumed_after = len(history)
    if resumed_after:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        if extra_state is not None:
            extra_state[1](state["extra"])
        context.carry_over(state["wall_s"], state["gpu_hours"])
    started = time.perf_counter()
    remaining = range(resumed_after, epochs) if not state["stopped"] else range(0)
    for epoch in context.progress(remaining, f"{name} epochs", total=len(remaining)):
        loss = train_epoch(epoch)
        validated = is_validated(epoch, epochs, validate_every)
        if validated:
            score = validate()
            state["validated_epochs"].append(epoch)
        else:
            score = history[-1][VALID_METRIC]
        # the commit per epoch: a resumed or continued run's epochs may come from several commits, and its
        # record names only the one it started at
        history.append({"epoch": epoch, "loss": float(loss), VALID_METRIC: score, "git_commit": process_commit()})
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch, best_state=copy.deepcopy(model.state_dict()))
        measured = f"valid {VALID_METRIC} {score:.4f}" if validated else "not validated this epoch"
        state["stopped"] = epoch - state["best_epoch"] >= patience
        last_epoch = last_epoch_without_gain(state["best_epoch"], patience, epochs)
        ends = ""
        if state["stopped"]:
            ends = "; stops here"
        elif last_epoch < epochs:
            ends = f"; ends after epoch {last_epoch} without a better one"
        context.log(f"{name} epoch {epoch + 1}/{epochs}: loss {float(loss):.4g}, {measured} "
                    f"(best {state['best_score']:.4f} at epoch {state['best_epoch'] + 1}{ends})")
        elapsed = time.perf_counter() - started
        checkpoint.save({**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "rng": rng_state(), "extra": extra_state[0]() if extra_state is not None else None,
                         "wall_s": state["wall_s"] + elapsed,
                         "gpu_hours": state["gpu_hours"] + elapsed * devices_in_use() / 3600})
        if state["stopped"]:
            break
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    return {"best_epoch": state["best_epoch"], f"best_valid_{VALID_METRIC}": state["best_score"] if history else None,
            "epochs_run": len(history), "history": history, "validated_epochs": state["validated_epochs"],
            "resumed_after_epochs": resumed_after or None,
            **({"continued_from_cell": continued_from} if continued_from else {})}
