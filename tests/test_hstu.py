from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines import sequential
from baselines.hstu import HSTU, HSTUEncoder, HSTULayer
from baselines.sequential import next_item_examples
from bench.cli import main
from bench.data import load_dataset
from bench.data.base import Dataset
from bench.registry import RunContext, methods
from bench.split import leave_last_out
from tests.id_based import (
    check_learns_successor,
    check_smoke_cli_run,
    check_training_batches_hold_training_items_only,
    context,
    fit_smoke,
)
from tests.resume import check_resume_after_kill


def fitted(tmp_path: Path, dataset: Dataset, **options: str) -> tuple[HSTU, RunContext]:
    return fit_smoke(HSTU, tmp_path, dataset, **options)


def test_hstu_is_an_id_based_method():
    assert methods()["hstu"] is HSTU and HSTU.family == "id-based"
    assert HSTU.variant(HSTU.settings_for("quick", {})) == "loss sampled softmax, 128 negatives"
    assert HSTU.variant(HSTU.settings_for("quick", {"loss": "ce"})) == "loss CE"


def slow_hstu_layer(layer: HSTULayer, x: torch.Tensor) -> torch.Tensor:
    """The paper's equations (1)-(3) written out position by position, for one (L, D) sequence."""
    length, dim = x.shape
    heads, width = layer.heads, dim // layer.heads
    out = torch.zeros_like(x)
    projected = []
    for i in range(length):
        normed = (x[i] - x[i].mean()) / torch.sqrt(x[i].var(unbiased=False) + 1e-6)
        projected.append(F.silu(normed @ layer.f1))
    for i in range(length):
        u_i = projected[i][:dim]
        attended = torch.zeros(dim)
        for h in range(heads):
            block = slice(h * width, (h + 1) * width)
            q_i = projected[i][2 * dim:3 * dim][block]
            for j in range(i + 1):  # causal: keys up to the query's own position
                k_j = projected[j][3 * dim:][block]
                v_j = projected[j][dim:2 * dim][block]
                weight = F.silu(q_i @ k_j + layer.position_bias[i - j]) / layer.max_len  # pointwise, not softmax
                attended[block] += weight * v_j
        normed = (attended - attended.mean()) / torch.sqrt(attended.var(unbiased=False) + 1e-6)
        out[i] = x[i] + layer.f2.weight @ (normed * u_i) + layer.f2.bias
    return out


def test_hstu_layer_computes_the_papers_equations_causally():
    torch.manual_seed(0)
    layer = HSTULayer(dim=6, heads=2, max_len=7, dropout=0.3).eval()
    with torch.no_grad():
        layer.position_bias.normal_(0.0, 1.0)  # make the relative position bias matter
        layer.f1.normal_(0.0, 0.5)
    x = torch.randn(2, 5, 6)
    out = layer(x)
    for row in range(2):
        torch.testing.assert_close(out[row], slow_hstu_layer(layer, x[row]), rtol=1e-5, atol=1e-5)

    changed = x.clone()
    changed[:, 3] = torch.randn(2, 6)  # a later event
    out_changed = layer(changed)
    assert torch.equal(out_changed[:, :3], out[:, :3])  # earlier positions never see it
    assert not torch.allclose(out_changed[:, 3:], out[:, 3:])


def test_encoder_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    encoder = HSTUEncoder(n_items=30, dim=8, layers=2, heads=2, max_len=12, dropout=0.5).eval()
    items = torch.tensor([[5, 9, 2, 17, 4]])
    hidden = encoder(items)
    later_changed = encoder(torch.tensor([[5, 9, 2, 30, 1]]))
    torch.testing.assert_close(later_changed[:, :3], hidden[:, :3], rtol=0, atol=1e-6)
    assert not torch.allclose(later_changed[:, 3], hidden[:, 3])
    padded = encoder(torch.tensor([[5, 9, 2, 17, 4, 0, 0, 0, 0, 0, 0, 0]]))  # right padding to max_len
    torch.testing.assert_close(padded[:, :5], hidden, rtol=0, atol=1e-6)
    assert torch.allclose(hidden.norm(dim=-1), torch.ones(1, 5))  # L2-normalised states


def test_scores_of_a_history_do_not_depend_on_its_batch(tmp_path):
    method, _ = fitted(tmp_path, load_dataset("synthetic:users=60,items=40"), epochs="1")
    short = np.array([3, 7, 1])
    long = np.arange(1, 31)  # longer than max_len (10): cut to its last 10 items
    alone = method.scores([short])
    together = method.scores([long, short, np.array([2])])  # the short one padded to width 10 here
    torch.testing.assert_close(together[1], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(method.scores([long[-10:]])[0], together[0], rtol=0, atol=1e-5)
    assert torch.isneginf(together[:, 0]).all()  # padding is never a candidate


def test_training_batches_hold_training_items_only(tmp_path, monkeypatch):
    check_training_batches_hold_training_items_only(HSTU, tmp_path, monkeypatch)


def test_next_item_examples_are_left_aligned_windows():
    rows, inputs, targets = next_item_examples([np.array([1, 2, 3, 4, 5]), np.array([7]), np.array([8, 9])],
                                               max_len=3)
    assert rows.tolist() == [0, 2]  # the sequence each example row comes from
    assert inputs.tolist() == [[2, 3, 4], [8, 0, 0]]
    assert targets.tolist() == [[3, 4, 5], [9, 0, 0]]


def test_recommend_returns_distinct_items_never_padding(tmp_path):
    method, _ = fitted(tmp_path, load_dataset("synthetic:users=60,items=40"), epochs="1")
    n_items = method.encoder.n_items
    histories = [np.array([1]), np.arange(1, 41), np.array([5, 5, 5])]
    everything = method.recommend(histories, n_items, np.arange(3))
    assert everything.dtype == np.int64 and everything.shape == (3, n_items)
    for row in everything:
        assert sorted(row.tolist()) == list(range(1, n_items + 1))  # every item once, never 0
    assert method.recommend(histories, 10, np.arange(3)).tolist() == everything[:, :10].tolist()


@pytest.mark.parametrize("spec, message", [
    ("hstu:loss=focal", "hstu: loss 'focal' unknown"),
    ("hstu:dim=10,heads=3", "dim divisible by heads"),
    ("hstu:negatives=0", "negatives must be at least 1"),
])
def test_bad_settings_fail_before_any_work(tmp_path, capsys, spec, message):
    assert main(["run", "--profile", "smoke", "--methods", spec, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_smoke_runs_through_the_cli(tmp_path):
    check_smoke_cli_run(tmp_path, {"hstu": "hstu (loss sampled softmax, 16 negatives)",
                                   "hstu:loss=ce": "hstu:loss=ce (loss CE)"})


@pytest.mark.parametrize("loss", ["sampled", "ce"])
def test_hstu_learns_a_sequential_pattern(tmp_path, loss):
    check_learns_successor(HSTU, tmp_path, loss=loss)


def test_killed_training_resumes_at_the_next_epoch_with_identical_results(tmp_path, monkeypatch):
    """An interruption after epoch 2 of 4, then a rerun: same history and metrics as one straight run."""
    check_resume_after_kill(tmp_path, monkeypatch, "hstu", sequential)


@pytest.mark.parametrize("spec", ["hstu:loss=ce", "rearec", "rearec:scheme=prl,warmup=5", "rearec:diversity=paper"])
def test_a_batch_loss_from_its_length_groups_equals_the_whole_batch_loss(tmp_path, spec):
    """SequentialRecommender.batch_loss computes each length group at its own width and weights it by its
    positions: the same loss and gradient as the batch at full width (dropout off, so both are deterministic)."""
    from bench.registry import parse_method_spec

    method_class, options = parse_method_spec(spec)
    run = context(tmp_path)
    method = method_class(method_class.settings_for("smoke", options), run)
    data = leave_last_out(load_dataset("synthetic:users=80,items=40,seed=3")).train_view()
    method.device = torch.device("cpu")
    method.encoder = method.build_encoder(data.n_items).eval()
    _, inputs, targets = (torch.from_numpy(a) for a in next_item_examples(data.train_sequences, 10))
    widths = []
    original = method.loss

    def recording(batch_inputs, batch_targets):
        widths.append(batch_inputs.shape[1])
        return original(batch_inputs, batch_targets)

    def loss_and_gradients(loss_of):
        method.encoder.zero_grad()
        loss = loss_of(inputs, targets)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in method.encoder.parameters() if p.grad is not None]

    whole_loss, whole_gradients = loss_and_gradients(method.loss)
    method.loss = recording
    grouped_loss, grouped_gradients = loss_and_gradients(method.batch_loss)
    assert len(widths) > 1 and min(widths) < inputs.shape[1]  # several groups, narrower than the batch
    torch.testing.assert_close(grouped_loss, whole_loss, rtol=1e-5, atol=1e-6)
    assert len(grouped_gradients) == len(whole_gradients)
    for grouped, whole in zip(grouped_gradients, whole_gradients):
        torch.testing.assert_close(grouped, whole, rtol=1e-4, atol=1e-6)


def test_prl_with_its_contrastive_term_keeps_the_batch_whole(tmp_path):
    """PRL's contrastive negatives are the batch's other sequences: after the warm-up its batch is not split."""
    method_class = methods()["rearec"]
    method = method_class(method_class.settings_for("smoke", {"scheme": "prl"}), context(tmp_path))
    method.begin_epoch(0)
    assert method.loss_is_per_position()  # warm-up: the ranking term alone
    method.begin_epoch(method.settings["warmup"])
    assert not method.loss_is_per_position()


def test_on_a_gpu_a_batch_runs_whole_cut_to_its_longest_row(tmp_path, monkeypatch):
    """Length groups pay on a CPU only: on a GPU each group would be a forward and backward of its own, and a small
    model's step is bound by launching kernels. Off, one forward at the batch's longest row, the same loss."""
    from baselines.sequential import groups_pay_off, length_groups, mean_over_length_groups

    assert groups_pay_off("cpu") and not groups_pay_off("cuda") and not groups_pay_off(torch.device("cuda", 1))
    lengths = torch.tensor([1, 7, 3, 30, 0])
    assert len(length_groups(lengths)) > 1
    (whole,) = length_groups(lengths, grouped=False)
    torch.testing.assert_close(whole, torch.arange(5))
    (kept,) = length_groups(lengths, keep=lengths > 0, grouped=False)
    torch.testing.assert_close(kept, torch.tensor([0, 1, 2, 3]))
    calls = []
    assert mean_over_length_groups(lengths, lengths.float(), lambda rows: calls.append(rows) or torch.tensor(2.0),
                                   grouped=False) == 2.0 and len(calls) == 1

    method = HSTU(HSTU.settings_for("smoke", {"loss": "ce"}), context(tmp_path))  # no sampled negatives
    data = leave_last_out(load_dataset("synthetic:users=80,items=40,seed=3")).train_view()
    method.device = torch.device("cpu")
    method.encoder = method.build_encoder(data.n_items).eval()
    _, inputs, targets = (torch.from_numpy(a) for a in next_item_examples(data.train_sequences, 10))
    grouped_loss = method.batch_loss(inputs, targets)
    monkeypatch.setattr(sequential, "groups_pay_off", lambda device: False)  # as on a GPU
    widths = []
    original = method.loss
    method.loss = lambda i, t: widths.append(i.shape[1]) or original(i, t)
    torch.testing.assert_close(method.batch_loss(inputs, targets), grouped_loss, rtol=1e-5, atol=1e-6)
    assert widths == [int((targets != 0).sum(1).max())]
