from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines import sequential
from bench.cli import main
from bench.data import load_dataset
from bench.data.base import Dataset
from bench.registry import RunContext, methods
from methods.rearec import ReaRec, ReaRecEncoder, erl_loss, prl_loss, reasoning_mask
from tests.id_based import (
    check_learns_successor,
    check_smoke_cli_run,
    check_training_batches_hold_training_items_only,
    context,
    fit_smoke,
)
from tests.resume import check_resume_after_kill


def fitted(tmp_path: Path, dataset: Dataset, **options: str) -> tuple[ReaRec, RunContext]:
    return fit_smoke(ReaRec, tmp_path, dataset, **options)


def untrained(n_items: int = 30, **options: str) -> ReaRec:
    """A ReaRec with a fresh network and smoke settings, for calling its loss directly. Its item vectors are
    and reasoning position embeddings are drawn large, so that the steps' distributions over items differ."""
    method = ReaRec(ReaRec.settings_for("smoke", options), RunContext(0, "smoke", "cpu", Path("unused")))
    method.device = torch.device("cpu")
    torch.manual_seed(0)
    method.encoder = method.build_encoder(n_items)
    with torch.no_grad():
        method.encoder.item_embedding.weight[1:].normal_(0.0, 0.5)
        method.encoder.reasoning_position_embedding.weight.normal_(0.0, 1.0)
    return method


def encoder(steps: int = 2, combine: str = "mean") -> ReaRecEncoder:
    torch.manual_seed(0)
    return ReaRecEncoder(n_items=30, dim=8, layers=2, heads=2, ffn=16, max_len=12, dropout=0.3, steps=steps,
                         combine=combine).eval()


# --- the network ------------------------------------------------------------------------------------------

def plain_sasrec(net: ReaRecEncoder, items: torch.Tensor) -> torch.Tensor:
    """SASRec written out with plain tensor operations (eval mode): post-norm causal attention, GELU FFN."""
    length = items.shape[1]
    x = net.input_norm(net.item_embedding(items) + net.position_embedding(torch.arange(length)))
    future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    for layer in net.layers:
        attention = layer.attention
        heads, width = attention.num_heads, x.shape[-1] // attention.num_heads
        q, k, v = (x @ attention.in_proj_weight.T + attention.in_proj_bias).chunk(3, dim=-1)
        split = [t.reshape(*t.shape[:2], heads, width).transpose(1, 2) for t in (q, k, v)]
        scores = (split[0] @ split[1].transpose(-1, -2) / math.sqrt(width)).masked_fill(future, float("-inf"))
        mixed = (scores.softmax(-1) @ split[2]).transpose(1, 2).reshape(x.shape)
        x = layer.attention_norm(x + attention.out_proj(mixed))
        inner, _, outer, _ = layer.feed_forward
        x = layer.output_norm(x + outer(F.gelu(inner(x))))
    return x


def slow_reasoning(net: ReaRecEncoder, row: torch.Tensor, perturb: list[torch.Tensor] | None = None,
                   thoughts: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's procedure, one prefix at a time: encode ``row[:t + 1]``, append the last state plus the
    step's reasoning position embedding as a new input token, encode again, K times. ``perturb[k][t]`` is
    added to step ``k + 1``'s input, which is built from ``thoughts`` (clean states) when given."""
    length, dim = len(row), net.item_embedding.embedding_dim
    out = torch.zeros(length, net.steps + 1, dim)
    for t in range(length):
        tokens = net.input_norm(net.item_embedding(row[:t + 1]) + net.position_embedding(torch.arange(t + 1)))
        for step in range(net.steps + 1):
            causal = torch.triu(torch.ones(len(tokens), len(tokens), dtype=torch.bool), diagonal=1)
            x = tokens[None]
            for layer in net.layers:  # the whole sequence again, self-attention only: no cache
                x = layer(x, x, causal)
            out[t, step] = x[0, -1]
            if step < net.steps:
                previous = out[t, step] if thoughts is None else thoughts[t, step]
                thought = previous + net.reasoning_position_embedding.weight[step]
                if perturb is not None:
                    thought = thought + perturb[step][t]
                tokens = torch.cat([tokens, net.input_norm(thought)[None]])
    return out


def test_rearec_is_an_id_based_method_with_two_schemes():
    assert methods()["rearec"] is ReaRec and ReaRec.family == "id-based"
    assert ReaRec.variant(ReaRec.settings_for("quick", {})) == "ERL, 2 reasoning steps"
    assert ReaRec.variant(ReaRec.settings_for("quick", {"scheme": "prl"})) == "PRL, 2 reasoning steps"
    paper = ReaRec.settings_for("paper", {})
    assert (paper["reasoning_steps"], paper["max_len"], paper["temperature"], paper["epochs"], paper["patience"]) \
        == (2, 50, 0.07, 200, 10)


def test_mask_lets_each_thought_see_its_prefix_and_its_own_earlier_thoughts():
    blocked = reasoning_mask(length=3, blocks=3)
    allowed = {(q, k) for q in range(9) for k in range(9) if not blocked[q, k]}
    # token index = block * 3 + position; block 0 = items, block k = reasoning step k
    assert {k for q, k in allowed if q == 1} == {0, 1}  # item 1: items 0..1
    assert {k for q, k in allowed if q == 4} == {0, 1, 4}  # step 1 of position 1: items 0..1, itself
    assert {k for q, k in allowed if q == 8} == {0, 1, 2, 5, 8}  # step 2 of position 2
    assert {k for q, k in allowed if q == 6} == {0, 3, 6}  # step 2 of position 0


def test_reasoning_equals_the_papers_procedure_prefix_by_prefix():
    net = encoder()
    with torch.no_grad():
        net.reasoning_position_embedding.weight.normal_(0.0, 1.0)
    items = torch.tensor([[5, 9, 2, 17, 4], [3, 3, 8, 0, 0]])
    states, noisy = net.reason(items)
    assert states.shape == (2, 5, 3, 8) and noisy is None
    torch.testing.assert_close(states[0], slow_reasoning(net, items[0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(states[1, :3], slow_reasoning(net, items[1, :3]), rtol=1e-5, atol=1e-5)


def test_noisy_view_perturbs_each_reasoning_input_of_the_clean_chain():
    net = encoder()
    items = torch.tensor([[5, 9, 2, 17], [1, 2, 3, 4]])
    torch.manual_seed(7)
    clean, noisy = net.reason(items, noise=0.3)
    torch.manual_seed(7)  # the noise is drawn first, (K, B, L, D)
    perturb = 0.3 * torch.randn(net.steps, 2, 4, 8)
    torch.testing.assert_close(clean, net.reason(items)[0])
    torch.testing.assert_close(noisy[:, :, 0], clean[:, :, 0])  # step 0 has no reasoning input
    assert not torch.allclose(noisy[:, :, 1:], clean[:, :, 1:], atol=1e-3)
    for row in range(2):
        expected = slow_reasoning(net, items[row], [p[row] for p in perturb], thoughts=clean[row].detach())
        torch.testing.assert_close(noisy[row], expected, rtol=1e-5, atol=1e-5)


def test_both_views_share_their_dropout_and_differ_by_the_noise_alone():
    net = encoder().train()
    items = torch.tensor([[5, 9, 2, 17], [1, 2, 3, 4]])
    clean, noisy = net.reason(items, noise=1e-9)
    torch.testing.assert_close(noisy, clean, rtol=0, atol=1e-5)
    again, _ = net.reason(items, noise=1e-9)
    assert not torch.allclose(again, clean, atol=1e-3)  # dropout is on: a new call draws new masks


def test_reasoning_is_causal_and_ignores_padding():
    net = encoder()
    states = net.reason(torch.tensor([[5, 9, 2, 17, 4]]))[0]
    changed = net.reason(torch.tensor([[5, 9, 2, 30, 1]]))[0]
    torch.testing.assert_close(changed[:, :3], states[:, :3], rtol=0, atol=1e-6)  # every step of earlier positions
    assert not torch.allclose(changed[:, 3], states[:, 3])
    padded = net.reason(torch.tensor([[5, 9, 2, 17, 4, 0, 0, 0, 0, 0, 0, 0]]))[0]
    torch.testing.assert_close(padded[:, :5], states, rtol=0, atol=1e-6)


def test_no_reasoning_is_plain_sasrec():
    items = torch.tensor([[5, 9, 2, 17, 4], [1, 1, 7, 0, 0]])
    for combine in ("mean", "last"):
        net = encoder(steps=0, combine=combine)
        torch.testing.assert_close(net(items), plain_sasrec(net, items), rtol=1e-5, atol=1e-5)
    for scheme in ("erl", "prl"):  # and the loss is SASRec's full-softmax CE at temperature tau
        method = untrained(reasoning_steps="0", scheme=scheme, temperature="0.5")
        method.encoder.eval()
        method.begin_epoch(5)  # after the warm-up: PRL has nothing to perturb without a reasoning step
        targets = torch.tensor([[9, 2, 17, 4, 6], [1, 7, 3, 0, 0]])
        real = targets != 0
        logits = plain_sasrec(method.encoder, items)[real] @ method.encoder.item_embedding.weight[1:].T / 0.5
        torch.testing.assert_close(method.loss(items, targets), F.cross_entropy(logits, targets[real] - 1))


def test_reasoning_steps_change_the_state_through_their_own_position_embeddings():
    net = encoder()
    items = torch.tensor([[5, 9, 2, 17, 4]])
    states = net.reason(items)[0]
    assert not torch.allclose(states[:, :, 1], states[:, :, 0], atol=1e-3)
    assert not torch.allclose(states[:, :, 2], states[:, :, 1], atol=1e-3)
    with torch.no_grad():
        net.reasoning_position_embedding.weight[1] += torch.randn(8)  # r_2: only the second step reads it
    second_changed = net.reason(items)[0]
    torch.testing.assert_close(second_changed[:, :, :2], states[:, :, :2], rtol=0, atol=1e-6)
    assert not torch.allclose(second_changed[:, :, 2], states[:, :, 2], atol=1e-3)
    with torch.no_grad():
        net.reasoning_position_embedding.weight[0] += torch.randn(8)  # r_1
    first_changed = net.reason(items)[0]
    torch.testing.assert_close(first_changed[:, :, 0], states[:, :, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(first_changed[:, :, 1], states[:, :, 1], atol=1e-3)


def test_erl_ranks_with_the_mean_of_the_steps_and_prl_with_the_last():
    items = torch.tensor([[5, 9, 2, 17, 4]])
    mean_net, last_net = encoder(combine="mean"), encoder(combine="last")
    states = mean_net.reason(items)[0]
    torch.testing.assert_close(mean_net(items), states.mean(2))
    torch.testing.assert_close(last_net(items), states[:, :, -1])
    assert untrained(scheme="prl").encoder.combine == "last" and untrained().encoder.combine == "mean"


# --- the losses, recomputed slowly ------------------------------------------------------------------------

BATCH = torch.tensor([[5, 9, 2, 17, 4], [3, 3, 8, 0, 0], [1, 30, 12, 6, 0]])
TARGETS = torch.tensor([[9, 2, 17, 4, 11], [3, 8, 20, 0, 0], [30, 12, 6, 7, 0]])


def log_softmax_of(scores: torch.Tensor) -> torch.Tensor:
    return scores - torch.log(torch.exp(scores).sum())


@pytest.mark.parametrize("form", ["paper", "official"])
def test_erl_loss_matches_the_papers_and_the_official_formula(form):
    method = untrained(diversity_weight="0.7", temperature="0.5", diversity=form)
    method.encoder.eval()
    loss = method.loss(BATCH, TARGETS)
    states = method.encoder.reason(BATCH)[0]
    items = method.encoder.item_embedding.weight[1:]
    total, positions = 0.0, 0
    for b, t in zip(*torch.nonzero(TARGETS).T.tolist()):
        log_p = [log_softmax_of(items @ states[b, t, k] / 0.5) for k in range(3)]
        supervision = -log_softmax_of(items @ states[b, t].mean(0) / 0.5)[TARGETS[b, t] - 1]  # the pooled state
        if form == "paper":  # Eq. 7: sum over i < j of KL(p_i || p_j)
            diversity = sum((log_p[i].exp() * (log_p[i] - log_p[j])).sum() for i, j in ((0, 1), (0, 2), (1, 2)))
        else:  # the official code: mean over ordered pairs of KL(p_j || p_i)
            pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
            diversity = sum((log_p[j].exp() * (log_p[j] - log_p[i])).sum() for i, j in pairs) / len(pairs)
        total, positions = total + supervision - 0.7 * diversity, positions + 1
    torch.testing.assert_close(loss, total / positions, rtol=1e-5, atol=1e-5)
    no_diversity = untrained(diversity_weight="0", temperature="0.5", diversity=form)
    no_diversity.encoder.eval()
    assert no_diversity.loss(BATCH, TARGETS) > loss + 1e-3  # the regulariser is in there, and rewards spread


def test_the_official_diversity_holds_the_other_step_fixed():
    log_probs = torch.log_softmax(torch.randn(2, 3, 7), -1).requires_grad_(True)
    from methods.rearec import erl_diversity

    erl_diversity(log_probs, "official").backward()
    official = log_probs.grad.clone()
    log_probs.grad = None
    erl_diversity(log_probs, "paper").backward()
    assert not torch.allclose(official, log_probs.grad)


def test_prl_loss_matches_the_papers_formula_with_warm_up():
    method = untrained(scheme="prl", temperature="2", temperature_decay="3", noise="0.5",
                       contrastive_weight="0.6", warmup="1")
    method.encoder.eval()
    items = method.encoder.item_embedding.weight[1:]
    real = TARGETS != 0

    def progressive(states: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for b, t in zip(*torch.nonzero(TARGETS).T.tolist()):
            for k, tau in enumerate((18.0, 6.0, 2.0)):  # tau * alpha^(K - k): softest first
                total = total - log_softmax_of(items @ states[b, t, k] / tau)[TARGETS[b, t] - 1]
        return total / real.sum()

    method.begin_epoch(0)  # warm-up: no noisy pass, no contrastive term
    torch.testing.assert_close(method.loss(BATCH, TARGETS), progressive(method.encoder.reason(BATCH)[0]))

    method.begin_epoch(1)
    torch.manual_seed(3)
    loss = method.loss(BATCH, TARGETS)
    torch.manual_seed(3)
    clean, noisy = method.encoder.reason(BATCH, noise=0.5)
    contrastive = 0.0
    for b, t in zip(*torch.nonzero(TARGETS).T.tolist()):
        others = torch.nonzero(real[:, t]).flatten().tolist()  # sequences with a real position t
        for k in (1, 2):
            similarity = torch.stack([noisy[b, t, k] @ clean[o, t, k] / 2.0 for o in others])
            contrastive = contrastive - log_softmax_of(similarity)[others.index(b)]
    expected = progressive(clean) + 0.6 * contrastive / real.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert abs(contrastive.item()) > 1e-3


def test_fit_tells_the_loss_which_epoch_it_is(tmp_path, monkeypatch):
    epochs = []
    original = ReaRec.begin_epoch

    def recording(self, epoch):
        epochs.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(ReaRec, "begin_epoch", recording)
    method, _ = fitted(tmp_path, load_dataset("synthetic:users=60,items=40"), scheme="prl", epochs="3",
                       patience="3")
    assert epochs == [0, 1, 2] and method.epoch == 2 and method.contrastive()  # smoke warm-up: 1 epoch
    method.begin_epoch(0)
    assert not method.contrastive()
    erl = ReaRec(ReaRec.settings_for("smoke", {}), context(tmp_path))
    erl.begin_epoch(5)
    assert not erl.contrastive()


# --- the method in the harness ----------------------------------------------------------------------------

def test_training_batches_hold_training_items_only(tmp_path, monkeypatch):
    check_training_batches_hold_training_items_only(ReaRec, tmp_path, monkeypatch, scheme="prl", warmup="0")


@pytest.mark.parametrize("scheme", ["erl", "prl"])
def test_recommend_returns_distinct_items_never_padding(tmp_path, scheme):
    method, _ = fitted(tmp_path, load_dataset("synthetic:users=60,items=40"), epochs="1", scheme=scheme)
    n_items = method.encoder.n_items
    histories = [np.array([1]), np.arange(1, 41), np.array([5, 5, 5])]
    everything = method.recommend(histories, n_items, np.arange(3))
    assert everything.dtype == np.int64 and everything.shape == (3, n_items)
    for row in everything:
        assert sorted(row.tolist()) == list(range(1, n_items + 1))
    assert method.recommend(histories, 10, np.arange(3)).tolist() == everything[:, :10].tolist()
    alone = method.scores([np.array([3, 7, 1])])  # a history's scores do not depend on its batch
    together = method.scores([np.arange(1, 31), np.array([3, 7, 1])])
    torch.testing.assert_close(together[1], alone[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("spec, message", [
    ("rearec:scheme=cot", "rearec: scheme 'cot' unknown"),
    ("rearec:dim=10,heads=3", "dim divisible by heads"),
    ("rearec:reasoning_steps=-1", "reasoning_steps must not be negative"),
    ("rearec:temperature=0", "temperature must be positive"),
    ("rearec:loss=sampled", "has no option 'loss'"),
])
def test_bad_settings_fail_before_any_work(tmp_path, capsys, spec, message):
    assert main(["run", "--profile", "smoke", "--methods", spec, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_smoke_runs_through_the_cli(tmp_path):
    check_smoke_cli_run(tmp_path, {"rearec": "rearec (ERL, 2 reasoning steps)",
                                   "rearec:scheme=prl": "rearec:scheme=prl (PRL, 2 reasoning steps)"})


@pytest.mark.parametrize("scheme", ["erl", "prl"])
def test_rearec_learns_a_sequential_pattern(tmp_path, scheme):
    check_learns_successor(ReaRec, tmp_path, scheme=scheme)


def test_killed_training_resumes_at_the_next_epoch_with_identical_results(tmp_path, monkeypatch):
    """An interruption after epoch 2 of 4, then a rerun: same history and metrics as one straight run. PRL,
    so that the noise of the contrastive pass (after the 1-epoch warm-up) must be drawn again identically."""
    check_resume_after_kill(tmp_path, monkeypatch, "rearec:scheme=prl", sequential)


@pytest.mark.parametrize(("scheme", "diversity_weight", "steps"), [("erl", 0.3, 3), ("erl", 0.0, 3), ("erl", 0.3, 1),
                                                                    ("prl", 0.3, 3)])
def test_the_fused_loss_has_the_readable_losses_value_and_gradients(scheme, diversity_weight, steps):
    from methods.rearec import fused_reasoning_loss

    torch.manual_seed(0)
    states, items = torch.randn(11, steps, 8), torch.randn(23, 8)
    positives = torch.randint(0, 23, (11,))
    settings = {"scheme": scheme, "temperature": 0.3, "temperature_decay": 2.0, "diversity_weight": diversity_weight}

    def value_and_gradients(loss_of):
        leaves = states.clone().requires_grad_(True), items.clone().requires_grad_(True)
        loss = loss_of(*leaves)
        (2.5 * loss).backward()  # a scaled upstream gradient reaches both inputs
        return loss.detach(), leaves[0].grad, leaves[1].grad

    if scheme == "erl":
        readable = value_and_gradients(lambda s, e: erl_loss(s, e, positives, 0.3, diversity_weight, "official"))
    else:
        readable = value_and_gradients(lambda s, e: prl_loss(s, e, positives, 0.3, 2.0))
    fused = value_and_gradients(lambda s, e: fused_reasoning_loss(s, e, positives, settings, chunk=4))  # 3 chunks
    for expected, actual in zip(readable, fused):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_the_fused_loss_survives_a_target_whose_probability_underflows():
    from methods.rearec import fused_reasoning_loss

    states, items = torch.zeros(1, 3, 2), torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    states[0, :, 0] = 100.0  # the target (item 1) scores 200 / 0.07 below item 0
    settings = {"scheme": "erl", "temperature": 0.07, "temperature_decay": 5.0, "diversity_weight": 0.05}
    loss = fused_reasoning_loss(states, items, torch.tensor([1]), settings)
    assert torch.isfinite(loss) and loss > 1000
