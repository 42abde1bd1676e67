from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from baselines import recbole_models
from baselines.recbole_models import RECBOLE_MODELS, write_benchmark_files
from bench.cli import main
from bench.data import load_dataset
from bench.registry import RunContext, methods
from bench.results import ResultStore
from bench.split import leave_last_out
from tests.resume import check_resume_after_kill


def read_rows(path: Path) -> list[tuple[str, list[str], str]]:
    rows = []
    for line in path.read_text().splitlines()[1:]:
        user, history, target = line.split("\t")
        rows.append((user, history.split(), target))
    return rows


def test_every_recbole_model_is_registered_as_one_line():
    registered = methods()
    for name, (model, _) in RECBOLE_MODELS.items():
        assert registered[name].recbole_model == model and registered[name].family == "id-based"


def test_benchmark_files_hold_training_events_only(tmp_path):
    split = leave_last_out(load_dataset("synthetic:users=60,items=40,seed=1"))
    data = split.train_view()
    write_benchmark_files(data, tmp_path, max_len=5)
    train = read_rows(tmp_path / "grbench.train.inter")
    valid = read_rows(tmp_path / "grbench.valid.inter")
    for user, history, target in train:
        full = [str(i) for i in split.sequences[int(user)]]
        position = len(full) - 2  # index of the validation event
        # every training example is a prefix of items[:-2] and its next item, inside items[:-2]
        assert any(full[max(0, i - len(history)):i] == history and full[i] == target for i in range(1, position))
    assert len(train) == sum(len(s) - 1 for s in data.train_sequences)
    for user, history, target in valid:
        full = [str(i) for i in split.sequences[int(user)]]
        assert target == full[-2] and history == full[:-2][-5:]
    test_rows = read_rows(tmp_path / "grbench.test.inter")
    assert test_rows == valid  # RecBole's test file is a copy of validation: never a test target
    items = (tmp_path / "grbench.item").read_text().split()[1:]
    assert items == [str(i) for i in range(1, split.n_items + 1)]
    write_benchmark_files(data, tmp_path / "users", max_len=5, rows="users")
    per_user = read_rows(tmp_path / "users" / "grbench.train.inter")
    # one row per user: the last max_len + 1 items of items[:-2], never the validation or test item
    assert [(int(u), h + [t]) for u, h, t in per_user] == [
        (u, [str(i) for i in seq[-6:]]) for u, seq in enumerate(data.train_sequences) if len(seq) > 1]


@pytest.mark.parametrize("rows", ["prefixes", "users"])
def test_history_only_rows_end_with_their_target_and_hold_training_items_only(tmp_path, rows):
    """BERT4Rec reads only the history column: each row's history ends with its target, so every training item
    (the user's last one too) is in some history, and still no validation or test item is."""
    split = leave_last_out(load_dataset("synthetic:users=60,items=40,seed=1"))
    data = split.train_view()
    write_benchmark_files(data, tmp_path, max_len=50, rows=rows, history_ends_with_target=True)
    seen: dict[int, set[str]] = {}
    for user, history, target in read_rows(tmp_path / "grbench.train.inter"):
        assert history[-1] == target
        full = [str(i) for i in split.sequences[int(user)]]
        assert any(full[:i] == history for i in range(2, len(full) - 1))  # a prefix of items[:-2] only
        seen.setdefault(int(user), set()).update(history)
    for user, seq in enumerate(data.train_sequences):
        if len(seq) > 1:
            assert seen[user] == {str(i) for i in seq}  # the last training item included


def test_bert4rec_is_fed_history_only_rows_and_its_old_checkpoints_are_not_resumed(tmp_path):
    split = leave_last_out(load_dataset("synthetic:users=60,items=40,seed=1"))
    data = split.train_view()
    keys = {}
    for name in ("bert4rec", "sasrec"):
        method_class = methods()[name]
        context = RunContext(seed=0, profile="smoke", device="cpu", cache_dir=tmp_path / name)
        method = method_class(method_class.settings_for("smoke", {}), context)
        _, dataset, train_loader = method.load_recbole_data(data, context, tmp_path / name / "grbench")
        last_items_in_histories = {(user, items[-1]) for user, items in
                                   recbole_models.recbole_training_rows(dataset, train_loader._dataset, True)}
        last_training_items = {(u, int(seq[-1])) for u, seq in enumerate(data.train_sequences) if len(seq) > 1}
        # BERT4Rec's histories reach each user's last training item; SASRec's stop before their target
        assert (last_training_items <= last_items_in_histories) == (name == "bert4rec")
        keys[name] = method.checkpoint_key(data, context)
    assert keys["bert4rec"]["history_ends_with_target"] and "history_ends_with_target" not in keys["sasrec"]
    methods()["bert4rec"].check_settings(methods()["bert4rec"].settings_for("smoke", {"rows": "users"}))


@pytest.mark.parametrize("rows", ["prefixes", "users"])
def test_recbole_trains_on_our_rows_in_the_item_ids_that_inference_uses(tmp_path, rows):
    """RecBole's loaded training interactions, decoded through the id map ``recommend`` uses, are exactly the
    rows we wrote: histories and targets share one id space (a history item is the same item at inference)."""
    split = leave_last_out(load_dataset("synthetic:users=60,items=40,seed=1"))
    data = split.train_view()
    method_class = methods()["sasrec"]
    settings = method_class.settings_for("smoke", {"loss": "ce-all", "rows": rows} if rows == "users" else {})
    method = method_class(settings, RunContext(seed=0, profile="smoke", device="cpu", cache_dir=tmp_path))
    _, dataset, train_loader = method.load_recbole_data(data, method.context, tmp_path / "data" / "grbench")
    loaded = recbole_models.recbole_training_rows(dataset, train_loader._dataset)
    written = [(int(user), [int(i) for i in history] + [int(target)])
               for user, history, target in read_rows(tmp_path / "data" / "grbench" / "grbench.train.inter")]
    assert sorted(loaded) == sorted(written) and len(loaded) >= 50
    method._map_ids(dataset, data)  # inference's map: our ids -> RecBole's, the inverse of the decoding above
    features = train_loader._dataset.inter_feat
    first_history = features["item_id_list"][0, : int(features["item_length"][0])].tolist()
    user, items = recbole_models.recbole_training_rows(dataset, train_loader._dataset)[0]
    assert method.recbole_item[np.array(items[:-1])].tolist() == first_history


def test_separate_history_and_target_item_ids_are_refused(tmp_path, monkeypatch):
    """Without the alias RecBole numbers item_id_list apart from item_id (what the RecBole rows before this check
    trained on); the loader now refuses that instead of training on shifted histories."""
    from bench.errors import GRBenchError

    original = recbole_models.RecBoleSequential.recbole_config

    def without_alias(self, folder, context):
        config = original(self, folder, context)
        del config["alias_of_item_id"]
        return config

    monkeypatch.setattr(recbole_models.RecBoleSequential, "recbole_config", without_alias)
    data = leave_last_out(load_dataset("synthetic:users=60,items=40,seed=1")).train_view()
    method = methods()["sasrec"](methods()["sasrec"].settings_for("smoke", {}),
                                 RunContext(seed=0, profile="smoke", device="cpu", cache_dir=tmp_path))
    with pytest.raises(GRBenchError, match=r"alias_of_item_id"):
        method.load_recbole_data(data, method.context, tmp_path / "grbench")


@pytest.mark.parametrize("spec, message", [
    ("hgn:loss=bce", "hgn: loss=bce needs a model with item_embedding"),
    ("sasrec:loss=focal", "sasrec: loss 'focal' unknown"),
    ("hgn:dropout=0.2", "hgn: has no dropout to set"),
    ("sasrec:dropout=high", "sasrec: dropout must be a number in [0, 1), got 'high'"),
    ("sasrec:dropout=1.5", "sasrec: dropout must be a number in [0, 1)"),
    ("sasrec:rows=users", "sasrec: rows=users (one row per user) needs a loss at every position"),
    ("sasrec:rows=windows", "sasrec: rows 'windows' unknown"),
    ("sasrec:positions=middle", "sasrec: positions 'middle' unknown; expected from-start or from-end"),
    ("gru4rec:positions=from-end", "gru4rec: positions=from-end works for sasrec only"),
])
def test_unknown_or_unsupported_loss_fails_before_any_work(tmp_path, capsys, spec, message):
    assert main(["run", "--profile", "smoke", "--methods", f"pop,{spec}", "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()  # nothing ran: the spec was checked first


@pytest.mark.parametrize("name, keys", [("sasrec", ("hidden_dropout_prob", "attn_dropout_prob")),
                                        ("gru4rec", ("dropout_prob",))])
def test_dropout_option_reaches_the_recbole_model(tmp_path, name, keys):
    method = methods()[name]
    default = method.settings_for("small", {})
    changed = method.settings_for("small", {"dropout": "0.2"})
    context = RunContext(seed=0, profile="small", device="cpu", cache_dir=tmp_path)
    for settings, expected in ((default, None), (changed, 0.2)):
        config = method(settings, context).recbole_config(tmp_path / "data", context)
        assert all(config.get(key) == expected for key in keys)
    assert method.variant(changed) == "loss CE, dropout 0.2" and method.variant(default) == "loss CE"


def test_smoke_runs_of_every_recbole_model(tmp_path, monkeypatch):
    specs = [*RECBOLE_MODELS, "sasrec:loss=bce", "gru4rec:loss=ce-all", "sasrec:loss=ce-all,rows=users",
             "sasrec:loss=bce-all,rows=users", "sasrec:loss=bce-all,rows=users,positions=from-end"]
    (tmp_path / "workdir").mkdir()
    monkeypatch.chdir(tmp_path / "workdir")
    assert main(["run", "--profile", "smoke", "--methods", ",".join(specs), "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "workdir" / "log_tensorboard").exists()  # RecBole's trainer wrote no TensorBoard logs
    records = {r["method"]: r for r in ResultStore(tmp_path).load()}
    assert set(records) == set(specs)
    for record in records.values():
        report = record["report"]
        assert 1 <= report["epochs_run"] <= 2 and len(report["history"]) == report["epochs_run"]
        assert np.isfinite(report["history"][0]["loss"])
        assert record["metrics"]["ndcg@10"]["mean"] > 0
        assert record["reduced_schedule"] is True  # a CPU profile cuts RecBole's schedule short
    board = (tmp_path / "leaderboards" / "synthetic.md").read_text()
    assert "| sasrec:loss=bce (loss BCE) †" in board


@pytest.mark.real
def test_parity_with_recbole_pipeline_on_an_ml100k_slice():
    """Fast version of benchmarks/recbole_parity.py: same model, config and seed through both pipelines."""
    from benchmarks.recbole_parity import run_parity

    results = run_parity("SASRec", users=200, epochs=3, patience=3, max_len=20, seed=0, tiny=True)
    theirs, ours, masked = (results[name] for name in results)
    # the same task: RecBole's split gives every user our test item and history (RecBole keeps timestamps as
    # float32, so the script writes their ranks; with raw Unix seconds 149 of 943 users would differ)
    assert theirs["same_test_rows"] == theirs["users"] == 200
    random_ndcg10 = 0.0015  # about (1/1682) * sum of 1/log2(r+1) for r=1..10 over the ~1,650 unseen items
    for values in (theirs, ours):
        assert values["ndcg@10"] > 4 * random_ndcg10
    # same protocol (RecBole ranks all items for sequential models, as we do): within run-to-run noise of 200 users
    assert abs(ours["ndcg@10"] - theirs["ndcg@10"]) < 0.5 * max(ours["ndcg@10"], theirs["ndcg@10"])
    assert abs(ours["hit@10"] - theirs["hit@10"]) < 0.5 * max(ours["hit@10"], theirs["hit@10"]) + 0.02
    assert ours["ndcg@10"] <= masked["ndcg@10"] + 1e-9  # masking seen items can only help on ml-100k


def test_killed_training_resumes_at_the_next_epoch_with_identical_results(tmp_path, monkeypatch):
    """An interruption after epoch 2 of 4, then a rerun: same history and metrics as one straight run."""
    check_resume_after_kill(tmp_path, monkeypatch, "sasrec", recbole_models)



@pytest.fixture(scope="module")
def trained_smoke_sasrec(tmp_path_factory):
    """A one-epoch smoke SASRec, in eval mode, for checking losses against per-prefix forward passes."""
    split = leave_last_out(load_dataset("synthetic"))
    method = methods()["sasrec"]
    settings = method.settings_for("smoke", {"epochs": "1"})
    context = RunContext(seed=0, profile="smoke", device="cpu", cache_dir=tmp_path_factory.mktemp("sasrec"))
    model_run = method(settings, context)
    model_run.fit(split.train_view(), context)
    return model_run.model.eval(), settings["max_len"]


def one_row(model, max_len: int, history, target: int):
    """A RecBole interaction holding one training row (RecBole ids, left-aligned and zero-padded)."""
    import torch
    from recbole.data.interaction import Interaction

    padded = torch.zeros(1, max_len, dtype=torch.long)
    padded[0, : len(history)] = history
    return Interaction({model.ITEM_SEQ: padded, model.ITEM_SEQ_LEN: torch.tensor([len(history)]),
                        model.POS_ITEM_ID: torch.tensor([target])})


def last_position_output(model, max_len: int, history):
    row = one_row(model, max_len, history, 0)
    return model.forward(row[model.ITEM_SEQ], row[model.ITEM_SEQ_LEN])


ROW_ITEMS = [3, 7, 2, 9, 4]  # RecBole ids; the row: history 3 7 2 9, target 4


def test_every_position_loss_is_the_mean_next_item_loss_of_each_prefix(trained_smoke_sasrec):
    """``loss=ce-all`` scores every position with its next item, and position j sees items up to j only."""
    import torch
    import torch.nn.functional as F

    model, max_len = trained_smoke_sasrec
    items = torch.tensor(ROW_ITEMS)
    with torch.no_grad():
        loss = recbole_models.all_positions_ce_loss(model, one_row(model, max_len, items[:-1], int(items[-1])))
        expected = torch.stack([
            F.cross_entropy(last_position_output(model, max_len, items[:j]) @ model.item_embedding.weight.T,
                            items[j].view(1))
            for j in range(1, len(items))]).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    assert "gather_indexes" not in vars(model)  # forward gives the last position again


def test_every_position_bce_loss_scores_each_prefix_against_its_next_item_and_one_negative(
        trained_smoke_sasrec, monkeypatch):
    """``loss=bce-all`` (the original SASRec): per position j, BCE of the prefix up to j against item j + 1
    (label 1) and that position's own negative (label 0), averaged over positions."""
    import torch
    import torch.nn.functional as F

    model, max_len = trained_smoke_sasrec
    items = torch.tensor(ROW_ITEMS)
    negatives = torch.tensor([5, 1, 8, 6])  # one per position, in position order
    monkeypatch.setattr(recbole_models, "sample_negatives", lambda positives, n_items: negatives)
    with torch.no_grad():
        loss = recbole_models.all_positions_bce_loss(model, one_row(model, max_len, items[:-1], int(items[-1])))
        outputs = torch.cat([last_position_output(model, max_len, items[:j]) for j in range(1, len(items))])
        positive = (outputs * model.item_embedding(items[1:])).sum(-1)
        negative = (outputs * model.item_embedding(negatives)).sum(-1)
        expected = F.binary_cross_entropy_with_logits(positive, torch.ones(4)) + \
            F.binary_cross_entropy_with_logits(negative, torch.zeros(4))
    assert torch.allclose(loss, expected, atol=1e-5)


def test_positions_from_end_give_a_left_padded_sasrec(trained_smoke_sasrec):
    """``positions=from-end``: on RecBole's right-padded rows, the output at each history's last item is the plain
    model's on the same history padded on the left (the original SASRec's layout), and differs from RecBole's own
    numbering unless the history fills the row."""
    import copy

    import torch

    model, max_len = trained_smoke_sasrec
    shifted = copy.deepcopy(model)
    recbole_models.count_positions_from_end(shifted)
    histories = [ROW_ITEMS[:1], ROW_ITEMS[:3], ROW_ITEMS, [item % 9 + 1 for item in range(max_len)]]
    lengths = torch.tensor([len(history) for history in histories])
    right, left = torch.zeros(2, len(histories), max_len, dtype=torch.long)
    for row, history in enumerate(histories):
        right[row, : len(history)] = torch.tensor(history)
        left[row, max_len - len(history):] = torch.tensor(history)
    with torch.no_grad():
        ours = shifted.forward(right, lengths)
        recbole_numbering = model.forward(right, lengths)
        with recbole_models.every_position(model):
            left_padded = model.forward(left, lengths)[:, -1]
    assert torch.allclose(ours, left_padded, atol=1e-5)
    assert not torch.allclose(ours[:-1], recbole_numbering[:-1], atol=1e-3)
    assert torch.allclose(ours[-1], recbole_numbering[-1], atol=1e-5)  # a full row: the numberings agree
    assert methods()["sasrec"].variant(methods()["sasrec"].settings_for("small", {"positions": "from-end"})) == \
        "loss CE, positions counted from the last item"


def test_sampled_negatives_are_real_items_and_never_the_positive():
    import torch

    torch.manual_seed(0)
    positives = torch.randint(1, 4, (3000,))  # RecBole ids 1..3 (0 is padding): a draw hits the positive often
    negatives = recbole_models.sample_negatives(positives, n_items=4)
    assert ((negatives >= 1) & (negatives <= 3)).all() and (negatives != positives).all()
    for item in (1, 2, 3):  # uniform over the positive's two other items: each gets about half
        others = [other for other in (1, 2, 3) if other != item]
        drawn = negatives[positives == item]
        shares = [float((drawn == other).float().mean()) for other in others]
        assert all(0.43 < share < 0.57 for share in shares), (item, shares)


@pytest.mark.parametrize("spec", ["sasrec", "sasrec:loss=ce-all", "sasrec:loss=bpr", "sasrec:positions=from-end",
                                  "gru4rec", "bert4rec", "bert4rec:loss=bpr", "bert4rec:max_len=30"])
def test_padding_free_loss_equals_the_full_width_loss_and_gradient(tmp_path, spec):
    """A training batch's loss computed on groups of rows cut to their longest row is RecBole's full-width loss,
    with the same gradient for every parameter (dropout off, so both are deterministic)."""
    import torch

    from bench.registry import parse_method_spec

    method_class, options = parse_method_spec(spec)
    settings = method_class.settings_for("smoke", options)
    context = RunContext(seed=0, profile="smoke", device="cpu", cache_dir=tmp_path)
    method = method_class(settings, context)
    data = leave_last_out(load_dataset("synthetic:users=120,items=40,seed=2")).train_view()
    method.fit(data, context)
    model = method.model.eval()
    _, _, train_loader = method.load_recbole_data(data, context, tmp_path / "again" / "grbench")
    torch.manual_seed(0)
    batch = next(iter(train_loader))
    widths = []
    original = method.model_loss

    def recording(interaction):
        widths.append(interaction[model.ITEM_SEQ].shape[1])
        return original(interaction)

    def loss_and_gradients(loss_of):
        model.zero_grad()
        loss = loss_of(batch)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    full_loss, full_gradients = loss_and_gradients(method.model_loss)
    method.model_loss = recording
    free_loss, free_gradients = loss_and_gradients(method.training_loss)
    assert len(widths) > 1 and min(widths) < settings["max_len"]  # it did cut the batch into narrower groups
    assert torch.allclose(free_loss, full_loss, rtol=1e-5, atol=1e-6)
    assert free_gradients.keys() == full_gradients.keys()
    for name, gradient in full_gradients.items():
        assert torch.allclose(free_gradients[name], gradient, rtol=1e-4, atol=1e-6), name


def test_padding_free_loss_is_used_only_for_models_whose_outputs_ignore_trailing_padding(tmp_path):
    from bench.registry import parse_method_spec

    def averages_over(spec):
        method_class, options = parse_method_spec(spec)
        context = RunContext(seed=0, profile="smoke", device="cpu", cache_dir=tmp_path)
        return method_class(method_class.settings_for("smoke", options), context).loss_averages_over()

    assert {spec: averages_over(spec) for spec in ("sasrec", "sasrec:loss=bce-all", "gru4rec:loss=ce-all",
                                                   "bert4rec", "hgn")} == {
        "sasrec": "rows", "sasrec:loss=bce-all": "positions", "gru4rec:loss=ce-all": "positions",
        "bert4rec": "masked items", "hgn": None}
