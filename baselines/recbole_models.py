"""RecBole 1.2.1 sequential models (GRU4Rec, SASRec, BERT4Rec, HGN) on the GRBench split.

RecBole's models and trainer do the learning; GRBench decides the data and every number:
- training examples are written as RecBole "benchmark" files from :class:`TrainData` alone
  (each prefix of ``items[:-2]`` -> its next item, RecBole's own augmentation scheme), so RecBole's
  splitter never runs and no validation or test event reaches training;
- early stopping uses GRBench's validation NDCG@10 (full ranking, the shared evaluator);
- :meth:`recommend` ranks all items with the model's ``full_sort_predict`` and the harness scores.

Adding another RecBole sequential model is one line in ``RECBOLE_MODELS``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from baselines.sequential import groups_pay_off, mean_over_length_groups
from bench.compat import import_recbole, recbole_config, recbole_trainer
from bench.errors import GRBenchError
from bench.registry import Method, RunContext, TrainingInputs, register_method
from bench.split import TrainData
from bench.training import train_with_early_stopping, validation_score

RECBOLE_DATASET = "grbench"

# Training knobs per profile; the models' own hyper-parameters are RecBole's standard configs
# (recbole/properties/model/<Model>.yaml), except in `smoke`, where they are shrunk (TINY_MODELS).
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"epochs": 2, "patience": 2, "batch_size": 64, "learning_rate": 0.001, "max_len": 10,
              "loss": "ce", "tiny": True, "eval_batch_size": 512, "dropout": None, "rows": "prefixes",
              "positions": "from-start"},
    # CPU budget: an epoch of SASRec over ml-100k's ~98k training prefixes at length 20, with validation, takes
    # about 50 s on 2 cores, so `quick` trains two epochs on shorter histories (the main job: under 30 minutes).
    "quick": {"epochs": 2, "patience": 2, "batch_size": 256, "learning_rate": 0.001, "max_len": 20,
              "loss": "ce", "tiny": False, "eval_batch_size": 512, "dropout": None, "rows": "prefixes",
              "positions": "from-start"},
    # The settings the TIGER and RecBole papers report for Amazon: max length 50, up to 200 epochs,
    # early stopping with patience 10 on validation NDCG@10.
    "small": {"epochs": 200, "patience": 10, "batch_size": 256, "learning_rate": 0.001, "max_len": 50,
              "loss": "ce", "tiny": False, "eval_batch_size": 2048, "dropout": None, "rows": "prefixes",
              "positions": "from-start"},
}
PROFILES["paper"] = dict(PROFILES["small"])

TINY_MODELS: dict[str, dict[str, Any]] = {
    "SASRec": {"n_layers": 1, "n_heads": 1, "hidden_size": 16, "inner_size": 32},
    "BERT4Rec": {"n_layers": 1, "n_heads": 1, "hidden_size": 16, "inner_size": 32},
    "GRU4Rec": {"embedding_size": 16, "hidden_size": 16},
    "HGN": {"embedding_size": 16},
}

# `dropout` option (None: the model's RecBole default, 0.5 for SASRec and BERT4Rec) -> the RecBole keys it sets.
# GenRec's SASRec reference trains with dropout 0.2; HGN has no dropout.
DROPOUT_KEYS = {
    "SASRec": ("hidden_dropout_prob", "attn_dropout_prob"),
    "BERT4Rec": ("hidden_dropout_prob", "attn_dropout_prob"),
    "GRU4Rec": ("dropout_prob",),
}

# Models whose training reads only the history column: RecBole's BERT4Rec masks random items of `item_id_list` and
# learns to restore them; it never reads the target column (`item_id`). Fed the usual rows (a history and its next
# item), it would never learn a user's last training item, the one nearest to the validation and test targets.
# So their rows' histories end with the row's target, and a row holds nothing beyond the user's training items.
# BERT4Rec's fine-tuning batches (`ft_ratio`, half of them by default) mask a row's last history item; with this
# feed that is the row's target, predicted from the items before it, as inference predicts the next item.
HISTORY_ONLY_MODELS = ("BERT4Rec",)

# loss option -> (RecBole loss_type, negatives sampled per example). CE is every model's standard config.
# `bce-all` samples its own negatives inside the loss (one per position), so RecBole samples none.
LOSSES = {"ce": ("CE", 0), "bpr": ("BPR", 1), "bce": ("BPR", 1), "ce-all": ("CE", 0), "bce-all": ("CE", 0)}
EVERY_POSITION_LOSSES = ("ce-all", "bce-all")


def write_benchmark_files(data: TrainData, folder: Path, max_len: int, rows: str = "prefixes",
                          history_ends_with_target: bool = False) -> None:
    """Writes RecBole atomic files: training rows, validation rows, and every item (so all are rankable).

    Training rows: every prefix of a user's training sequence and its next item (``rows="prefixes"``, RecBole's
    augmentation), or one row per user, the sequence's last ``max_len + 1`` items (``rows="users"``, the
    original SASRec's one sequence per user, for a loss at every position). With ``history_ends_with_target``
    each training row's history (``item_id_list``) ends with the row's own target, for models that learn from
    masked history items and never read the target column (BERT4Rec; see ``HISTORY_ONLY_MODELS``). RecBole needs
    a test file too; it gets the validation rows, and RecBole never evaluates anything.
    """
    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"

    def row(user: int, history: np.ndarray, target: int) -> str:
        return f"{user}\t{' '.join(map(str, history[-max_len:]))}\t{target}\n"

    end = 1 if history_ends_with_target else 0  # the history is seq[:i + end] for the target seq[i]
    if rows == "users":
        train_rows = [row(u, seq[:len(seq) - 1 + end], seq[-1]) for u, seq in enumerate(data.train_sequences)
                      if len(seq) > 1]
    else:
        train_rows = [row(u, seq[:i + end], seq[i]) for u, seq in enumerate(data.train_sequences)
                      for i in range(1, len(seq))]
    valid_rows = [row(u, seq, target) for u, (seq, target) in enumerate(zip(data.train_sequences, data.valid_targets))]
    for name, rows in (("train", train_rows), ("valid", valid_rows), ("test", valid_rows)):
        (folder / f"{RECBOLE_DATASET}.{name}.inter").write_text(header + "".join(rows))
    items = "".join(f"{item}\n" for item in range(1, data.n_items + 1))
    (folder / f"{RECBOLE_DATASET}.item").write_text("item_id:token\n" + items)


def bce_pair_loss(output: Any, model: Any, positives: Any, negatives: Any) -> Any:
    """Binary cross-entropy of each output against its positive item (label 1) and its negative (label 0)."""
    import torch
    import torch.nn.functional as F

    positive = (output * model.item_embedding(positives)).sum(-1)
    negative = (output * model.item_embedding(negatives)).sum(-1)
    return F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive)) + \
        F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative))


def bce_loss(model: Any, interaction: Any) -> Any:
    """SASRec's original objective at a row's last position: BCE on the positive and RecBole's one sampled
    negative. RecBole offers CE and BPR only; this uses the RecBole model's own forward pass and embeddings."""
    output = model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
    return bce_pair_loss(output, model, interaction[model.POS_ITEM_ID], interaction[model.NEG_ITEM_ID])


@contextmanager
def every_position(model: Any) -> Iterator[None]:
    """Makes a RecBole model's ``forward`` return the output at every position instead of the last one.

    RecBole's sequential models end ``forward`` with ``self.gather_indexes(output, item_seq_len - 1)``;
    shadowing that method on the instance keeps RecBole's own encoder while exposing all positions.
    """
    model.gather_indexes = lambda output, index: output
    try:
        yield
    finally:
        del model.gather_indexes


def next_item_at_every_position(model: Any, interaction: Any) -> tuple[Any, Any]:
    """The model's output at every real position of each training row and that position's next item (the last
    position's is the row's target), flattened: ``(outputs (n, d), next items (n,))``."""
    import torch

    sequences, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
    targets = torch.zeros_like(sequences)
    targets[:, :-1] = sequences[:, 1:]
    targets[torch.arange(len(sequences), device=sequences.device), lengths - 1] = interaction[model.POS_ITEM_ID]
    valid = torch.arange(sequences.shape[1], device=sequences.device)[None, :] < lengths[:, None]
    with every_position(model):
        output = model.forward(sequences, lengths)
    return output[valid], targets[valid]


def all_positions_ce_loss(model: Any, interaction: Any) -> Any:
    """Full-softmax cross-entropy at every position of each training row.

    This is how GenRec's reference trains (a loss per position), where RecBole's ``CE`` scores the last
    position only; the model and its encoder stay RecBole's.
    """
    import torch.nn.functional as F

    output, targets = next_item_at_every_position(model, interaction)
    return F.cross_entropy(output @ model.item_embedding.weight.T, targets)


def sample_negatives(positives: Any, n_items: int) -> Any:
    """One uniform random item per positive, never the positive itself (RecBole ids ``1 .. n_items - 1``).

    The original SASRec code also avoids the user's other items; with thousands of items and histories of a
    few dozen that changes the draw for a fraction of a percent of negatives, so we skip the per-user lookup.
    """
    import torch

    negatives = torch.randint(1, n_items, positives.shape, device=positives.device)
    clash = negatives == positives
    while clash.any():  # redraw the clashes: uniform over the other items (about 1 in n_items clash)
        negatives[clash] = torch.randint(1, n_items, (int(clash.sum()),), device=positives.device)
        clash = negatives == positives
    return negatives


def all_positions_bce_loss(model: Any, interaction: Any) -> Any:
    """The original SASRec objective (Kang & McAuley 2018, and the TIGER paper's SASRec): binary cross-entropy
    at every position against its next item and one freshly sampled negative. RecBole has no such loss."""
    output, targets = next_item_at_every_position(model, interaction)
    return bce_pair_loss(output, model, targets, sample_negatives(targets, model.n_items))


def count_positions_from_end(model: Any) -> None:
    """Numbers a RecBole SASRec's positions as a left-padded SASRec does: the most recent item at ``max_len - 1``.

    RecBole pads on the right, so position ``p`` of a history of length ``L`` is ``p``; the original SASRec and
    S3-Rec code pad on the left, which puts it at ``max_len - L + p``. Shifting the position ids so gives, at
    every real position, exactly the left-padded model's output (padding is masked out of attention either way),
    with RecBole's weights and state dict unchanged. RecBole has no such option, hence the two hooks: the model's
    ``forward`` (shadowed on the instance, as ``every_position`` does) notes each row's length, and a pre-hook on
    the position embedding shifts the ids it receives.
    """
    original_forward = model.forward
    lengths: list[Any] = [None]

    def forward(item_seq: Any, *args: Any, **kwargs: Any) -> Any:
        lengths[0] = (item_seq != 0).sum(-1)  # right-padded with 0: the count of real items
        return original_forward(item_seq, *args, **kwargs)

    def shift_positions(module: Any, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        (position_ids,) = inputs
        # the row's full width, not the batch's: padding_free_loss hands in rows cut to their longest
        width = model.max_seq_length
        # padding positions (p >= L) would pass max_len - 1; clamped, they stay masked and unread
        return ((position_ids + (width - lengths[0])[:, None]).clamp_max(width - 1),)

    model.forward = forward
    model.position_embedding.register_forward_pre_hook(shift_positions)


# RecBole model -> what its training loss is a mean over, for padding_free_loss: one value per row (the output at
# a row's last item), or per masked item (BERT4Rec's MASK_INDEX > 0). Losses at every position (ce-all, bce-all)
# average over a row's real positions instead. Models absent here train on RecBole's full-width rows.
PADDING_FREE_MODELS = {"SASRec": "rows", "GRU4Rec": "rows", "BERT4Rec": "masked items"}


def padding_free_loss(loss: Callable[[Any], Any], model: Any, interaction: Any, averages_over: str) -> Any:
    """``loss(interaction)`` computed on the batch's length groups, each cut to its longest row.

    RecBole pads every training history to ``MAX_ITEM_LIST_LENGTH``; on the Amazon files a training row holds six
    items on average against 50 columns, and the padding took about two thirds of a SASRec step on Sports. In the
    models of ``PADDING_FREE_MODELS`` a real position's output does not depend on the padding after the row's last
    item (causal or padding-masked attention, a GRU read up to that item), so each group's mean loss is computed
    on its own rows at its own width and the groups are weighted by what the loss averages over (``averages_over``:
    rows, real positions, or masked items): the batch's loss and gradient are RecBole's full-width ones up to
    float rounding (tested); dropout draws differ in shape only. The optimizer still takes one step per batch.
    BERT4Rec's masked-item columns are padded on the left (RecBole's ``MaskItemSequence``), so a group keeps the
    last columns that hold one of its masked items.
    """
    import torch

    lengths = interaction[model.ITEM_SEQ_LEN]
    if averages_over == "masked items":
        mask_fields = (model.MASK_INDEX, model.POS_ITEMS, model.NEG_ITEMS)
        sequence_fields = (model.ITEM_SEQ, model.MASK_ITEM_SEQ)
        weights = (interaction[model.MASK_INDEX] > 0).sum(1)  # RecBole's own weights: index 0 counts as padding
    else:
        mask_fields, sequence_fields = (), (model.ITEM_SEQ,)
        weights = lengths if averages_over == "positions" else torch.ones_like(lengths)
    if weights.sum() == 0:  # nothing to average (RecBole's loss is then NaN, and its trainer says so)
        return loss(interaction)

    def group_loss(rows: Any) -> Any:
        group = interaction[rows]
        width = int(group[model.ITEM_SEQ_LEN].max())
        for field in sequence_fields:
            group.interaction[field] = group[field][:, :width].contiguous()  # RecBole's models .view() some
        if mask_fields:
            masked = int((group[model.POS_ITEMS] != 0).sum(1).max())
            for field in mask_fields:
                group.interaction[field] = group[field][:, -masked:].contiguous()
        return loss(group)

    return mean_over_length_groups(lengths, weights, group_loss, grouped=groups_pay_off(lengths.device))


def check_one_item_id_space(dataset: Any) -> None:
    """Fails when RecBole gave histories (``item_id_list``) and targets (``item_id``) different item ids."""
    items, histories = dataset.field2token_id["item_id"], dataset.field2token_id.get("item_id_list")
    if histories is not None and histories != items:
        raise GRBenchError("RecBole numbered the items of histories (item_id_list) apart from the targets "
                           "(item_id); the config needs alias_of_item_id = ['item_id_list']")


def recbole_training_rows(dataset: Any, train_dataset: Any, history_only: bool = False) -> list[tuple[int, list[int]]]:
    """RecBole's loaded training interactions as ``(user, history items + target item)`` in our ids, decoded
    with the item-id map that inference uses (``dataset.field2id_token['item_id']``); ``(user, history items)``
    with ``history_only``, for a model that never reads the target column (its history ends with the target)."""
    item_token = dataset.field2id_token["item_id"]
    user_token = dataset.field2id_token["user_id"]
    features = train_dataset.inter_feat
    histories = features["item_id_list"].numpy()
    lengths = features["item_length"].numpy()
    targets = features["item_id"].numpy()
    users = features["user_id"].numpy()
    return [(int(user_token[user]), [int(item_token[i]) for i in history[:length]]
             + ([] if history_only else [int(item_token[target])]))
            for user, history, length, target in zip(users, histories, lengths, targets)]


CUSTOM_LOSSES = {"bce": bce_loss, "ce-all": all_positions_ce_loss, "bce-all": all_positions_bce_loss}
# `positions` option -> variant label. RecBole pads histories on the right and numbers positions from the first
# item; the original SASRec code (and the S3-Rec code behind the TIGER paper's SASRec row) pads on the left, so
# the most recent item always sits at the last position. `from-end` reproduces that (count_positions_from_end).
POSITION_SCHEMES = {"from-start": "", "from-end": ", positions counted from the last item"}
POSITION_EMBEDDING_MODELS = ("SASRec",)  # causal models with a learned absolute position embedding

LOSS_LABELS = {"ce-all": "CE at every position", "bce-all": "BCE at every position, one negative each"}


class RecBoleSequential(Method):
    """Base class: subclasses only name the RecBole model (see RECBOLE_MODELS)."""

    family = "id-based"
    recbole_model: ClassVar[str]
    profiles = PROFILES

    @classmethod
    def variant(cls, settings: dict[str, Any]) -> str:
        dropout = "" if settings["dropout"] is None else f", dropout {settings['dropout']}"
        rows = ", one row per user" if settings["rows"] == "users" else ""
        positions = POSITION_SCHEMES.get(settings["positions"], "")
        return f"loss {LOSS_LABELS.get(settings['loss'], settings['loss'].upper())}{dropout}{rows}{positions}"

    @classmethod
    def history_only(cls) -> bool:
        """True for a model that learns from the history column alone (see ``HISTORY_ONLY_MODELS``)."""
        return cls.recbole_model in HISTORY_ONLY_MODELS

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        loss = settings["loss"]
        if loss not in LOSSES:
            raise GRBenchError(f"{cls.name}: loss {loss!r} unknown; expected one of {', '.join(LOSSES)}")
        if loss in CUSTOM_LOSSES and cls.recbole_model not in ("SASRec", "GRU4Rec"):
            raise GRBenchError(f"{cls.name}: loss={loss} needs a model with item_embedding and "
                               "forward(item_seq, item_seq_len) (sasrec, gru4rec)")
        if settings["rows"] not in ("prefixes", "users"):
            raise GRBenchError(f"{cls.name}: rows {settings['rows']!r} unknown; expected prefixes or users")
        if settings["rows"] == "users" and loss not in EVERY_POSITION_LOSSES and not cls.history_only():
            raise GRBenchError(f"{cls.name}: rows=users (one row per user) needs a loss at every position "
                               f"({' or '.join(f'loss={name}' for name in EVERY_POSITION_LOSSES)}) or a "
                               f"masked-item model ({', '.join(m.lower() for m in HISTORY_ONLY_MODELS)}); "
                               "the other losses score a row's last position only")
        if settings["positions"] not in POSITION_SCHEMES:
            raise GRBenchError(f"{cls.name}: positions {settings['positions']!r} unknown; expected "
                               f"{' or '.join(POSITION_SCHEMES)}")
        if settings["positions"] != "from-start" and cls.recbole_model not in POSITION_EMBEDDING_MODELS:
            raise GRBenchError(f"{cls.name}: positions={settings['positions']} works for "
                               f"{', '.join(m.lower() for m in POSITION_EMBEDDING_MODELS)} only")
        dropout = settings["dropout"]
        if dropout is not None:
            if cls.recbole_model not in DROPOUT_KEYS:
                raise GRBenchError(f"{cls.name}: has no dropout to set; dropout works for "
                                   f"{', '.join(sorted(m.lower() for m in DROPOUT_KEYS))}")
            try:
                valid = 0 <= float(dropout) < 1
            except ValueError:
                valid = False
            if not valid:
                raise GRBenchError(f"{cls.name}: dropout must be a number in [0, 1), got {dropout!r}")

    def recbole_config(self, data_folder: Path, context: RunContext) -> dict[str, Any]:
        settings = self.settings
        config: dict[str, Any] = {
            "data_path": str(data_folder.parent),
            "benchmark_filename": ["train", "valid", "test"],
            "load_col": {"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id"]},
            # one id space for histories and targets: without this alias RecBole remaps item_id_list on its own
            # (tokens numbered in order of first appearance in the histories), so a history item and the same
            # item as a target get different ids, and inference (which maps by item_id) sees other items
            "alias_of_item_id": ["item_id_list"],
            "MAX_ITEM_LIST_LENGTH": settings["max_len"],
            "epochs": settings["epochs"],
            "train_batch_size": settings["batch_size"],
            "eval_batch_size": settings["eval_batch_size"],
            "learning_rate": settings["learning_rate"],
            "seed": context.seed,
            "reproducibility": True,
            "device": context.device,
            "use_gpu": context.device == "cuda",
            "show_progress": False,
            "checkpoint_dir": str(context.cache_dir / "recbole-checkpoints"),
            "eval_args": {"order": "TO", "mode": "full", "group_by": "user"},
            "state": "ERROR",
        }
        if settings["tiny"]:
            config.update(TINY_MODELS.get(self.recbole_model, {}))
        if settings["dropout"] is not None:
            config.update(dict.fromkeys(DROPOUT_KEYS[self.recbole_model], float(settings["dropout"])))
        loss_type, negatives = LOSSES[settings["loss"]]
        config["loss_type"] = loss_type
        config["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": negatives} if negatives else None
        return config

    def load_recbole_data(self, data: TrainData, context: RunContext, folder: Path) -> tuple[Any, Any, Any]:
        """Writes the benchmark files into ``folder`` and loads them as RecBole does: (config, dataset, train
        loader). ``fit`` trains on this loader and the leakage audit reads it back (:meth:`training_inputs`)."""
        import_recbole()
        from recbole.data import create_dataset, data_preparation
        from recbole.utils import init_seed

        write_benchmark_files(data, folder, self.settings["max_len"], self.settings["rows"], self.history_only())
        config = recbole_config(self.recbole_model, RECBOLE_DATASET, self.recbole_config(folder, context))
        init_seed(context.seed, True)
        dataset = create_dataset(config)
        train_loader, _, _ = data_preparation(config, dataset)
        check_one_item_id_space(dataset)
        return config, dataset, train_loader

    def fit(self, data: TrainData, context: RunContext) -> None:
        from recbole.utils import get_model

        data_folder = context.cache_dir / "recbole-data" / RECBOLE_DATASET
        config, dataset, train_loader = self.load_recbole_data(data, context, data_folder)
        self.model = get_model(self.recbole_model)(config, train_loader._dataset).to(config["device"])
        if self.settings["positions"] == "from-end":
            count_positions_from_end(self.model)
        self.device = config["device"]
        trainer = recbole_trainer(config, self.recbole_model, self.model)
        self._map_ids(dataset, data)

        self.training_report = train_with_early_stopping(
            context, name=self.name, key=self.checkpoint_key(data, context),
            model=self.model, optimizer=trainer.optimizer, epochs=self.settings["epochs"],
            patience=self.settings["patience"],
            train_epoch=lambda epoch: float(np.sum(
                trainer._train_epoch(train_loader, epoch, loss_func=self.training_loss, show_progress=False))),
            validate=lambda: validation_score(self.recommend, data, self.settings["eval_batch_size"]),
            extra_state=(train_loader.generator.get_state, train_loader.generator.set_state),  # shuffling order
        )

    def model_loss(self, interaction: Any) -> Any:
        """A batch's training loss at RecBole's full width: the model's own, or the custom one ``loss`` names."""
        custom_loss = CUSTOM_LOSSES.get(self.settings["loss"])
        return self.model.calculate_loss(interaction) if custom_loss is None else custom_loss(self.model, interaction)

    def training_loss(self, interaction: Any) -> Any:
        """What each training step minimises: :meth:`model_loss`, computed padding-free where the model allows."""
        averages_over = self.loss_averages_over()
        if averages_over is None:
            return self.model_loss(interaction)
        return padding_free_loss(self.model_loss, self.model, interaction, averages_over)

    def loss_averages_over(self) -> str | None:
        """What the training loss is a mean over, for :func:`padding_free_loss`; None: train on full-width rows."""
        averages_over = PADDING_FREE_MODELS.get(self.recbole_model)
        if averages_over == "rows" and self.settings["loss"] in EVERY_POSITION_LOSSES:
            return "positions"
        return averages_over

    def checkpoint_key(self, data: TrainData, context: RunContext) -> dict[str, Any]:
        """What an epoch checkpoint must match to be resumed. History-only models say that their rows end with
        the target: their checkpoints from before that feed (rows without the last training item) are not resumed."""
        key = {"settings": self.settings, "split": data.fingerprint, "seed": context.seed}
        if self.history_only():
            key["history_ends_with_target"] = True
        return key

    def training_inputs(self, data: TrainData) -> TrainingInputs:
        """What RecBole trains on: its loaded training interactions (its validation and test files hold
        validation rows only and are never trained on), built by ``fit``'s own loader in a scratch folder and
        decoded back to our items through the id map that inference uses, so that a remapping fault shows too."""
        with tempfile.TemporaryDirectory() as scratch:
            _, dataset, train_loader = self.load_recbole_data(data, self.context, Path(scratch) / RECBOLE_DATASET)
            return {"recbole train rows": recbole_training_rows(dataset, train_loader._dataset, self.history_only())}

    def _map_ids(self, dataset: Any, data: TrainData) -> None:
        """Our dense ids -> RecBole's internal ids (RecBole remaps tokens in order of appearance)."""
        token_to_id = dataset.field2token_id["item_id"]
        self.recbole_item = np.zeros(data.n_items + 1, dtype=np.int64)
        for item in range(1, data.n_items + 1):
            self.recbole_item[item] = token_to_id[str(item)]
        user_to_id = dataset.field2token_id["user_id"]
        self.recbole_user = np.array([user_to_id[str(u)] for u in range(data.n_users)], dtype=np.int64)

    def scores(self, histories: Sequence[np.ndarray], users: np.ndarray) -> Any:
        """Scores of every item, as a tensor (len(histories), n_items + 1) in GRBench's dense ids (0 = -inf)."""
        import torch
        from recbole.data.interaction import Interaction

        max_len = self.settings["max_len"]
        sequences = np.zeros((len(histories), max_len), dtype=np.int64)
        lengths = np.zeros(len(histories), dtype=np.int64)
        for row, history in enumerate(histories):
            recent = self.recbole_item[np.asarray(history[-max_len:], dtype=np.int64)]
            sequences[row, : len(recent)] = recent  # RecBole sequences are left-aligned, padded with 0
            lengths[row] = len(recent)
        interaction = Interaction({
            "item_id_list": torch.from_numpy(sequences),
            "item_length": torch.from_numpy(lengths),
            "user_id": torch.from_numpy(self.recbole_user[np.asarray(users, dtype=np.int64)]),
        }).to(self.device)
        self.model.eval()
        with torch.no_grad():
            recbole_scores = self.model.full_sort_predict(interaction).view(len(histories), -1)
        ours = recbole_scores[:, torch.from_numpy(self.recbole_item).to(recbole_scores.device)]
        ours[:, 0] = -torch.inf  # padding is never recommended
        return ours

    def recommend(self, histories: Sequence[np.ndarray], k: int, users: np.ndarray) -> np.ndarray:
        import torch

        return torch.topk(self.scores(histories, users), k, dim=1).indices.cpu().numpy()

    def report(self) -> dict[str, Any]:
        return getattr(self, "training_report", {})


# name -> (RecBole model class name, description). One line per model.
RECBOLE_MODELS = {
    "gru4rec": ("GRU4Rec", "GRU over the item sequence (Hidasi et al. 2016), RecBole"),
    "sasrec": ("SASRec", "self-attentive sequential recommendation (Kang & McAuley 2018), RecBole"),
    "bert4rec": ("BERT4Rec", "bidirectional masked-item Transformer (Sun et al. 2019), RecBole"),
    "hgn": ("HGN", "hierarchical gating network (Ma et al. 2019), RecBole"),
}

for _name, (_model, _description) in RECBOLE_MODELS.items():
    register_method(type(_model, (RecBoleSequential,), {
        "name": _name, "recbole_model": _model, "description": _description, "__module__": __name__,
    }))
