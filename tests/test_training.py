"""``bench.training.train_with_early_stopping``, the epoch loop every trained method shares, on scripted validation
scores: when it stops, which weights it keeps, what it validates and what its log lines say."""

from __future__ import annotations

import pytest
import torch

from bench.progress import continue_action
from bench.registry import RunContext
from bench.runner import MethodRun
from bench.training import last_epoch_without_gain, train_with_early_stopping


def run_loop(tmp_path, scores: list[float], *, epochs: int, patience: int, validate_every: int = 1
             ) -> tuple[dict, torch.nn.Module, list[str], list[int]]:
    """The loop over a one-weight model whose weight after epoch ``e`` (0-based) is ``e``; ``scores`` are the
    validation scores in the order ``validate`` is called. Returns the report, the model, the log lines and the
    epochs that were validated."""
    lines: list[str] = []
    context = RunContext(seed=0, profile="smoke", device="cpu", cache_dir=tmp_path / "cache", log=lines.append)
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    validated: list[int] = []
    current = {"epoch": -1}

    def train_epoch(epoch: int) -> float:
        current["epoch"] = epoch
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        return 1.0 / (epoch + 1)

    def validate() -> float:
        validated.append(current["epoch"])
        return scores[len(validated) - 1]

    report = train_with_early_stopping(context, name="toy", key={"scores": scores}, model=model, optimizer=optimizer,
                                       epochs=epochs, patience=patience, train_epoch=train_epoch, validate=validate,
                                       validate_every=validate_every)
    return report, model, lines, validated


def test_it_stops_once_the_patience_is_used_up_and_keeps_the_best_weights(tmp_path):
    scores = [0.1, 0.3, 0.2, 0.25, 0.29, 0.28, 0.9]  # best at epoch 2; epochs 3-5 never beat it
    report, model, lines, _ = run_loop(tmp_path, scores, epochs=20, patience=3)
    assert report["epochs_run"] == 5 and report["best_epoch"] == 1  # epoch 5 (1-based) uses up the patience
    assert report["best_valid_ndcg@10"] == 0.3
    assert model.weight.item() == 1.0  # the weights after the best epoch, not the last
    assert lines[1].endswith("(best 0.3000 at epoch 2; ends after epoch 5 without a better one)")
    assert lines[2].endswith("(best 0.3000 at epoch 2; ends after epoch 5 without a better one)")
    assert lines[-1].endswith("(best 0.3000 at epoch 2; stops here)")
    assert last_epoch_without_gain(report["best_epoch"], 3, 20) == 5


def test_a_new_best_moves_the_end_and_the_last_epoch_caps_it(tmp_path):
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    report, model, lines, _ = run_loop(tmp_path, scores, epochs=6, patience=3)
    assert report["epochs_run"] == 6 and report["best_epoch"] == 5 and model.weight.item() == 5.0
    assert lines[0].endswith("(best 0.1000 at epoch 1; ends after epoch 4 without a better one)")
    assert lines[1].endswith("(best 0.2000 at epoch 2; ends after epoch 5 without a better one)")
    assert lines[2].endswith("(best 0.3000 at epoch 3)")  # epoch 6, the last, comes first: nothing to announce


@pytest.mark.parametrize("validate_every, validated", [(1, [0, 1, 2, 3, 4]), (2, [0, 1, 3, 4])])
def test_costly_validation_runs_after_the_first_every_nth_and_the_last_epoch(tmp_path, validate_every, validated):
    report, _, lines, seen = run_loop(tmp_path, [0.1, 0.2, 0.3, 0.4, 0.5], epochs=5, patience=10,
                                      validate_every=validate_every)
    assert seen == validated and report["validated_epochs"] == validated
    assert [entry["ndcg@10"] for entry in report["history"]][2] == (0.3 if validate_every == 1 else 0.2)
    assert ("not validated this epoch" in lines[2]) == (validate_every == 2)


def counting_loop(cache, folder: str, *, epochs: int, validate_every: int = 1, lr: float = 0.1
                  ) -> tuple[dict, torch.nn.Module, list[str]]:
    """The loop with the epoch limit among its settings, over a one-weight model that each epoch adds a random
    draw to (so a continued run matches a fresh one only if weights and generators were carried), in the cell
    folder ``folder`` (a method spec such as ``toy-epochs=2``) under ``cache``; validation scores the weight."""
    lines: list[str] = []
    context = RunContext(seed=0, profile="smoke", device="cpu", cache_dir=cache / "data" / "fp" / folder / "smoke"
                         / "seed0", log=lines.append)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def train_epoch(epoch: int) -> float:
        with torch.no_grad():
            model.weight.add_(torch.rand(1))
        return 0.0

    settings = {"epochs": epochs, "lr": lr, "every": validate_every}
    report = train_with_early_stopping(
        context, name="toy", key={"settings": settings, "split": "fp", "seed": 0}, model=model, optimizer=optimizer,
        epochs=epochs, patience=10, train_epoch=train_epoch, validate=lambda: float(model.weight.item()),
        validate_every=validate_every, extends_shorter_runs=True)
    return report, model, lines


def test_a_higher_epoch_limit_continues_the_cut_run_as_if_it_had_run_from_the_start(tmp_path):
    fresh, fresh_model, _ = counting_loop(tmp_path / "fresh", "toy", epochs=5)
    cut, _, _ = counting_loop(tmp_path / "cache", "toy-epochs=2", epochs=2)
    assert cut["epochs_run"] == 2
    longer, longer_model, lines = counting_loop(tmp_path / "cache", "toy-epochs=5", epochs=5)
    assert longer["resumed_after_epochs"] == 2 and longer["continued_from_cell"] == "toy-epochs=2"
    assert "continues the 2 epochs of cell toy-epochs=2" in lines[0]
    assert longer["history"] == fresh["history"] and longer_model.weight.item() == fresh_model.weight.item()
    again, _, _ = counting_loop(tmp_path / "cache", "toy-epochs=5", epochs=5)  # its own checkpoint now
    assert again["resumed_after_epochs"] == 5 and "continued_from_cell" not in again


def test_each_epoch_names_the_commit_that_trained_it_across_a_continuation(tmp_path, monkeypatch):
    monkeypatch.setattr("bench.training.process_commit", lambda: "aaa")
    counting_loop(tmp_path, "toy-epochs=2", epochs=2)
    monkeypatch.setattr("bench.training.process_commit", lambda: "bbb")
    longer, _, _ = counting_loop(tmp_path, "toy-epochs=4", epochs=4)
    assert [entry["git_commit"] for entry in longer["history"]] == ["aaa", "aaa", "bbb", "bbb"]


def test_a_cut_run_is_not_continued_under_other_settings_or_other_validated_epochs(tmp_path):
    counting_loop(tmp_path, "toy-epochs=2", epochs=2)
    other_lr, _, _ = counting_loop(tmp_path, "toy-epochs=5-lr=0.2", epochs=5, lr=0.2)
    assert other_lr["resumed_after_epochs"] is None
    odd = tmp_path / "odd"
    counting_loop(odd, "toy-epochs=3", epochs=3, validate_every=2)  # validated epoch 3 only as its last
    longer, _, _ = counting_loop(odd, "toy-epochs=6", epochs=6, validate_every=2)
    assert longer["resumed_after_epochs"] is None


class Toy:
    """What a plan reads of a method class (bench.registry.Method) that extends shorter runs."""

    name = "toy"
    extends_shorter_runs = True

    @classmethod
    def validate_every(cls, settings: dict) -> int:
        return settings["every"]


def test_a_dry_run_names_the_cut_run_a_cell_would_continue(tmp_path):
    counting_loop(tmp_path, "toy-epochs=2", epochs=2)
    cell = tmp_path / "data" / "fp" / "toy-epochs=5" / "smoke" / "seed0"

    def action(settings: dict, fingerprint: str = "fp", seed: int = 0, method: type = Toy) -> str | None:
        return continue_action(MethodRun("toy:epochs=5", method, settings, {}), cell, fingerprint, seed)

    assert action({"epochs": 5, "lr": 0.1, "every": 1}) == (
        "continue cell toy-epochs=2 after its 2 epochs (best valid ndcg@10 "
        f"{counting_loop(tmp_path / 'again', 'toy', epochs=2)[0]['best_valid_ndcg@10']:.4f}), train up to 5, rank")
    assert action({"epochs": 5, "lr": 0.2, "every": 1}) is None  # other settings
    assert action({"epochs": 5, "lr": 0.1, "every": 1}, fingerprint="other") is None  # another split
    assert action({"epochs": 5, "lr": 0.1, "every": 1}, seed=1) is None
    assert action({"epochs": 1, "lr": 0.1, "every": 1}) is None  # it holds more epochs than the new limit

    class Fixed(Toy):
        extends_shorter_runs = False

    assert action({"epochs": 5, "lr": 0.1, "every": 1}, method=Fixed) is None
