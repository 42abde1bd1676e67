from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.costs as costs
import bench.sid as sid
import bench.training as training
from baselines import tiger
from baselines.tiger import (
    PAD,
    PROFILES,
    Tiger,
    encoder_inputs,
    history_windows,
    inverse_sqrt_schedule,
    training_examples,
    user_tokens,
)
from bench.cli import main
from bench.data import load_dataset
from bench.data.base import Dataset, make_catalog, make_interactions
from bench.evaluate import per_user_metrics
from bench.registry import RunContext, methods
from bench.results import ResultStore
from bench.split import TrainData, leave_last_out
from tests.resume import check_resume_after_kill
from tests.test_sid import fake_embed

SYNTHETIC = "synthetic:users=60,items=40"
# fast and small enough to learn in a few epochs on one core
TINY = {**PROFILES["smoke"], "d_model": 32, "d_ff": 64, "batch_size": 32, "learning_rate": 0.02, "dropout": 0.0}


@pytest.fixture
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sentence encoder replaced by seeded random vectors: the tests need SIDs, not good ones."""
    monkeypatch.setattr(sid, "embed_texts", lambda texts, *args, **kwargs: fake_embed(texts))


def hand_data(sequences: dict[str, list[str]], describe: Callable[[str], dict] | None = None) -> TrainData:
    """One user per sequence, events in list order; ``describe(item)`` gives catalog fields (title, categories),
    else the items have no text (TIGER then builds collaborative SIDs)."""
    users, items, times = [], [], []
    for user, sequence in sequences.items():
        users += [user] * len(sequence)
        items += sequence
        times += list(range(len(sequence)))
    catalog = make_catalog([{"item": item, **(describe(item) if describe else {})} for item in sorted(set(items))])
    return leave_last_out(Dataset("hand", make_interactions(users, items, times), catalog, source="test")).train_view()


def cycle_data(n_items: int = 40, n_users: int = 80, length: int = 8, seed: int = 0,
               describe: Callable[[str], dict] | None = None) -> TrainData:
    """Every user walks the items in order: the next item is always the previous one + 1 (mod n_items)."""
    rng = np.random.default_rng(seed)
    sequences = {}
    for user in range(n_users):
        start = int(rng.integers(n_items))
        sequences[f"u{user}"] = [f"i{(start + step) % n_items}" for step in range(length)]
    return hand_data(sequences, describe)


def fitted(data: TrainData, settings: dict, tmp_path: Path) -> Tiger:
    context = RunContext(seed=0, profile="smoke", device="cpu", cache_dir=tmp_path / "run")
    method = Tiger(settings, context)
    method.fit(data, context)
    return method


def items_of(tokens: np.ndarray, method: Tiger) -> list[int]:
    """The items whose complete SIDs make up a row of SID tokens (padding dropped)."""
    tokens = tokens[tokens != PAD]
    depth = method.trie.depth
    assert len(tokens) % depth == 0
    found = [method.trie.item_of(tokens[start:start + depth].tolist()) for start in range(0, len(tokens), depth)]
    assert None not in found  # every L-token chunk is one whole item SID
    return found


def test_registered_as_a_generative_method():
    assert methods()["tiger"] is Tiger and Tiger.family == "generative"


def test_training_examples_are_prefixes_of_training_sequences_only():
    # validation (v*) and test (t*) items appear nowhere else, so any leak would show up
    pool = [f"c{i}" for i in range(6)]
    data = hand_data({f"u{u}": [pool[(u + s) % 6] for s in range(2 + u % 4)] + [f"v{u}", f"t{u}"] for u in range(8)})
    held_out = {i for i, name in enumerate(data.item_ids) if str(name)[:1] in ("v", "t")}
    users, windows, targets = training_examples(data, max_items=3)
    assert len(targets) == sum(len(s) - 1 for s in data.train_sequences)
    assert not held_out & (set(windows.ravel()) | set(targets))
    for user, window, target in zip(users, windows, targets):
        sequence = data.train_sequences[user].tolist()
        recent = window[window > 0].tolist()
        end = next(e for e in range(1, len(sequence)) if sequence[e] == target and sequence[:e][-3:] == recent)
        assert sequence[:end][-3:] == recent


def test_model_never_trains_on_a_validation_or_test_item(tmp_path, monkeypatch):
    """Every encoder input and label the model is trained on, mapped back to items: none is held out."""
    pool = [f"c{i}" for i in range(10)]
    rng = np.random.default_rng(0)
    data = hand_data({f"u{u}": [pool[i] for i in rng.integers(10, size=5)] + [f"v{u}", f"t{u}"] for u in range(12)})
    held_out = {i for i, name in enumerate(data.item_ids) if str(name)[:1] in ("v", "t")}
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def record(module, args, kwargs):
        if module.training:  # beam search (eval mode) may decode any item, training may not see them
            seen.append((kwargs["input_ids"].numpy().copy(), kwargs["labels"].numpy().copy()))

    original = tiger.build_model

    def build_and_watch(*args):
        model = original(*args)
        model.register_forward_pre_hook(record, with_kwargs=True)
        return model

    monkeypatch.setattr(tiger, "build_model", build_and_watch)
    method = fitted(data, {**TINY, "epochs": 1}, tmp_path)
    assert sum(len(labels) for _, labels in seen) == sum(len(s) - 1 for s in data.train_sequences)
    for inputs, labels in seen:
        assert np.isin(inputs[:, 0], method.user_token).all()  # the user token comes first
        for row, label in zip(inputs, labels):
            assert not held_out & set(items_of(row[1:], method) + items_of(label, method))


def test_encoder_inputs_put_the_user_first_then_the_last_items_right_padded():
    table = np.array([[PAD, PAD], [1, 2], [3, 4], [5, 6]])  # item -> its two SID tokens
    windows = history_windows([np.array([1, 2, 3]), np.array([3]), np.array([2, 1, 3, 2])], max_items=2)
    assert windows.tolist() == [[2, 3], [3, 0], [3, 2]]  # last two items, oldest first
    ids = encoder_inputs(np.array([100, 101, 102]), windows, table)
    assert ids.tolist() == [[100, 3, 4, 5, 6], [101, 5, 6, PAD, PAD], [102, 5, 6, 3, 4]]
    # a batch of short histories is only as wide as its longest row
    assert encoder_inputs(np.array([7]), history_windows([np.array([1])], 5), table).tolist() == [[7, 1, 2]]


def test_prompts_and_training_batches_agree(tmp_path, fake_encoder):
    data = leave_last_out(load_dataset(SYNTHETIC)).train_view()
    method = fitted(data, {**PROFILES["smoke"], "epochs": 1}, tmp_path)
    users = np.array([3, 0, 7])
    histories = [data.train_sequences[u] for u in users]
    prompts = method.prompts(histories, users)
    batch = method._batch(users, history_windows(histories, method.settings["max_items"]))
    for prompt, ids, mask, user in zip(prompts, batch["input_ids"], batch["attention_mask"], users):
        length = len(prompt)
        assert ids[:length].tolist() == prompt and (ids[length:] == PAD).all()
        assert mask.tolist() == [1] * length + [0] * (len(ids) - length)
        assert prompt[0] == method.user_token[user]
        recent = data.train_sequences[user][-method.settings["max_items"]:]
        assert items_of(np.array(prompt[1:]), method) == recent.tolist()


def test_user_tokens_are_stable_hash_buckets():
    tokens = user_tokens(np.array(["a", "b", "a", "17"], dtype=object), buckets=5, offset=10)
    assert tokens[0] == tokens[2] and ((tokens >= 10) & (tokens < 15)).all()
    assert tokens.tolist() == user_tokens(np.array(["a", "b", "a", "17"], dtype=object), 5, 10).tolist()


def test_learning_rate_warms_up_then_decays_with_the_inverse_square_root():
    factor = inverse_sqrt_schedule(4)
    assert [factor(step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(15) == pytest.approx(0.5)  # step 16: sqrt(4 / 16)


def test_recommend_returns_distinct_valid_items(tmp_path, fake_encoder):
    data = leave_last_out(load_dataset(SYNTHETIC)).train_view()
    method = fitted(data, {**PROFILES["smoke"], "epochs": 1}, tmp_path)
    users = np.arange(0, data.n_users, 7)
    for k in (10, 12):  # 12: more than the default beam width of 10
        ranked = method.recommend([data.train_sequences[u] for u in users], k, users)
        assert ranked.shape == (len(users), k) and ranked.dtype == np.int64
        assert ((ranked >= 1) & (ranked <= data.n_items)).all()
        assert all(len(set(row)) == k for row in ranked)


def test_validation_scores_a_fixed_user_subset_with_their_own_user_tokens(tmp_path, fake_encoder, monkeypatch):
    data = leave_last_out(load_dataset(SYNTHETIC)).train_view()
    calls: list[tuple[list, np.ndarray]] = []
    original = Tiger.recommend

    def spy(self, histories, k, users):
        calls.append((list(histories), np.asarray(users)))
        return original(self, histories, k, users)

    monkeypatch.setattr(Tiger, "recommend", spy)
    method = fitted(data, {**PROFILES["smoke"], "epochs": 1, "valid_users": 9}, tmp_path)
    expected = method.validation_users(data.n_users)
    assert len(expected) == 9 and (np.diff(expected) > 0).all()
    assert (expected == Tiger(method.settings, method.context).validation_users(data.n_users)).all()  # fixed seed
    scored = np.concatenate([users for _, users in calls])
    assert scored.tolist() == expected.tolist() and method.report()["valid_users"] == 9
    for histories, users in calls:  # each user is scored on its own training sequence
        assert all(np.array_equal(h, data.train_sequences[u]) for h, u in zip(histories, users))


def test_tiger_learns_a_sequential_pattern_far_above_popularity(tmp_path):
    data = cycle_data()
    counts = np.bincount(np.concatenate(data.train_sequences), minlength=data.n_items + 1).astype(float)
    counts[0] = -np.inf
    popular = np.tile(np.argsort(-counts, kind="stable")[:10], (data.n_users, 1))
    popularity = per_user_metrics(data.valid_targets, popular)["ndcg@10"].mean()
    method = fitted(data, {**TINY, "epochs": 5, "patience": 5}, tmp_path)
    report = method.report()
    assert report["sids"]["source"] == "collaborative"  # no titles: the SID module's fallback
    history = [epoch["ndcg@10"] for epoch in report["history"]]
    assert report["best_valid_ndcg@10"] > max(0.3, 3 * popularity), (popularity, history)
    assert history[-1] > history[0]


def test_smoke_run_stores_the_sid_source_in_the_report(tmp_path, fake_encoder):
    assert main(["run", "--profile", "smoke", "--methods", "tiger", "--out", str(tmp_path)]) == 0
    record = ResultStore(tmp_path).load()[0]
    report = record["report"]
    assert report["sids"]["source"] == "text:all-MiniLM-L6-v2" and report["sids"]["config"]["quantizer"] == "rkmeans"
    assert report["epochs_run"] == 2 and np.isfinite(report["history"][0]["loss"])
    assert record["family"] == "generative" and record["metrics"]["ndcg@10"]["mean"] >= 0
    assert {stage["name"] for stage in record["stages"]} >= {"sids", "seq2seq"}


@pytest.mark.parametrize("spec, message", [
    ("tiger:sid_quantizer=nope", "SID quantizer 'nope'"),
    ("tiger:eval_every=0", "eval_every must be at least 1"),
])
def test_bad_settings_fail_before_any_work(tmp_path, capsys, spec, message):
    assert main(["run", "--profile", "smoke", "--methods", spec, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_killed_training_resumes_at_the_next_epoch_with_identical_results(tmp_path, monkeypatch, fake_encoder):
    """An interruption after epoch 2 of 4, then a rerun: same history and metrics as one straight run."""
    straight, resumed = check_resume_after_kill(tmp_path, monkeypatch, "tiger", tiger)

    assert resumed["report"]["validated_epochs"] == straight["report"]["validated_epochs"] == [0, 1, 2, 3]


def test_a_run_with_more_epochs_continues_the_cut_run_and_matches_a_straight_one(tmp_path, monkeypatch,
                                                                               fake_encoder):
    """``tiger:epochs=4`` after ``tiger:epochs=2`` (same cache) trains epochs 3-4 only and ends where a straight
    4-epoch run ends; the record says which cell it continued and counts the cut run's training time."""
    run = ["run", "--profile", "smoke"]
    monkeypatch.setenv("GRBENCH_CACHE", str(tmp_path / "straight-cache"))
    assert main([*run, "--methods", "tiger:epochs=4,patience=10", "--out", str(tmp_path / "straight")]) == 0
    monkeypatch.setenv("GRBENCH_CACHE", str(tmp_path / "cache"))
    assert main([*run, "--methods", "tiger:epochs=2,patience=10", "--out", str(tmp_path / "cut")]) == 0
    assert main([*run, "--methods", "tiger:epochs=4,patience=10", "--out", str(tmp_path / "longer")]) == 0
    [straight], [cut], [longer] = (ResultStore(tmp_path / name).load() for name in ("straight", "cut", "longer"))
    assert longer["report"]["continued_from_cell"] == "tiger-epochs=2-patience=10"
    assert longer["report"]["resumed_after_epochs"] == 2 and "continued_from_cell" not in straight["report"]
    assert longer["report"]["history"] == straight["report"]["history"]
    assert longer["report"]["history"][:2] == cut["report"]["history"]
    assert longer["metrics"]["ndcg@10"]["mean"] == straight["metrics"]["ndcg@10"]["mean"]
    assert longer["train"]["carried_wall_s"] > 0


def test_validation_between_eval_epochs_repeats_the_last_score(tmp_path, fake_encoder):
    data = leave_last_out(load_dataset(SYNTHETIC)).train_view()
    lines: list[str] = []
    context = RunContext(seed=0, profile="smoke", device="cpu", cache_dir=tmp_path / "run", log=lines.append)
    method = Tiger({**PROFILES["smoke"], "epochs": 5, "patience": 10, "eval_every": 2}, context)
    method.fit(data, context)
    report = method.report()
    assert report["validated_epochs"] == [0, 1, 3, 4]  # the first, every second, and the last
    scores = [epoch["ndcg@10"] for epoch in report["history"]]
    assert scores[2] == scores[1] and report["best_epoch"] in report["validated_epochs"]
    # the log does not pass the repeated score off as a measurement
    epoch_lines = [line for line in lines if " epoch " in line]
    assert ["not validated" in line for line in epoch_lines] == [False, False, True, False, False]


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx512f avx512bw avx512_bf16 avx512_vnni", True),
    ("fpu sse amx_bf16 amx_tile", True),
    ("fpu sse avx2 avx512f avx512bw", False),  # oneDNN would emulate bf16 here: slower than float32
])
def test_native_bf16_on_a_cpu_reads_its_flags(tmp_path, monkeypatch, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some cpu\nflags\t\t: {flags}\n\n")
    monkeypatch.setattr(costs, "CPU_INFO_FILE", cpuinfo)
    assert training.native_bf16(torch.device("cpu")) is native
    monkeypatch.setattr(costs, "CPU_INFO_FILE", tmp_path / "absent")  # not Linux: no
    assert training.native_bf16(torch.device("cpu")) is False


@pytest.mark.parametrize("setting, native, trains_in_bf16", [
    (True, True, True), (True, False, False), (False, True, False),
])
def test_training_runs_in_bf16_only_where_asked_and_native_and_ranking_never(
        tmp_path, monkeypatch, fake_encoder, setting, native, trains_in_bf16):
    data = leave_last_out(load_dataset(SYNTHETIC)).train_view()
    seen = {"training": set(), "ranking": set()}
    rows_loss, recommend = Tiger.rows_loss, Tiger.recommend

    def spy_loss(self, *args):
        seen["training"].add(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return rows_loss(self, *args)

    def spy_recommend(self, *args):
        seen["ranking"].add(torch.is_autocast_enabled("cpu"))
        return recommend(self, *args)

    monkeypatch.setattr(tiger, "native_bf16", lambda device: native)
    monkeypatch.setattr(Tiger, "rows_loss", spy_loss)
    monkeypatch.setattr(Tiger, "recommend", spy_recommend)
    method = fitted(data, {**PROFILES["smoke"], "epochs": 1, "bf16": setting}, tmp_path)
    assert seen == {"training": {trains_in_bf16}, "ranking": {False}}
    assert method.report()["bf16"] is trains_in_bf16 and np.isfinite(method.report()["history"][0]["loss"])


def test_model_has_tigers_shape_in_the_paper_profile():
    model = tiger.build_model(PROFILES["paper"], vocab_size=1 + 4 * 256 + 2000)
    config = model.config
    assert (config.num_layers, config.num_decoder_layers, config.d_model, config.num_heads, config.d_kv,
            config.d_ff, config.dropout_rate) == (4, 4, 128, 6, 64, 1024, 0.1)
    assert config.decoder_start_token_id == config.pad_token_id == PAD
    assert isinstance(model, torch.nn.Module)


def test_a_batch_loss_from_its_length_groups_equals_the_whole_batch_loss(tmp_path, fake_encoder):
    """Tiger.batch_loss runs each length group at its own width: with dropout off, the same loss and gradient
    as the batch cut to its longest row."""
    data = leave_last_out(load_dataset("synthetic:users=80,items=40,seed=3")).train_view()
    method = fitted(data, {**PROFILES["smoke"], "epochs": 1, "max_items": 12}, tmp_path)
    method.model.eval()
    users, windows, targets = tiger.training_examples(data, method.settings["max_items"])
    widths = []
    original = method._batch

    def recording(batch_users, batch_windows):
        batch = original(batch_users, batch_windows)
        widths.append(batch["input_ids"].shape[1])
        return batch

    def loss_and_gradients(loss_of):
        method.model.zero_grad()
        loss = loss_of(users, windows, targets)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in method.model.parameters() if p.grad is not None]

    whole_loss, whole_gradients = loss_and_gradients(method.rows_loss)  # the batch cut to its longest row
    method._batch = recording
    grouped_loss, grouped_gradients = loss_and_gradients(method.batch_loss)
    full_width = 1 + method.table.shape[1] * int((windows > 0).sum(1).max())
    assert len(widths) > 1 and min(widths) < full_width  # several groups, narrower than the batch
    torch.testing.assert_close(grouped_loss, whole_loss, rtol=1e-5, atol=1e-6)
    assert len(grouped_gradients) == len(whole_gradients)
    for grouped, whole_gradient in zip(grouped_gradients, whole_gradients):
        torch.testing.assert_close(grouped, whole_gradient, rtol=1e-4, atol=1e-6)
