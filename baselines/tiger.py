"""TIGER (Rajput et al., NeurIPS 2023, "Recommender Systems with Generative Retrieval") on the GRBench split.

Items are named by semantic IDs (:mod:`bench.sid`: item text, or the fallback source on datasets without
titles, quantised into 3 codes plus a uniqueness code). A T5 encoder-decoder trained from scratch reads a
user's history as SID tokens and generates the SID of the next item; :mod:`bench.decode`'s trie-constrained
beam search turns that into K distinct existing items.

Vocabulary (the model's own, no text tokens): ``0`` padding and decoder start (T5's convention), then the SID
code tokens of every level stacked (:meth:`bench.sid.SemanticIds.token_id_matrix` with ``offset=1``), then
``user_buckets`` user tokens. No EOS: every SID has the same length, so nothing needs to end a target.

- Encoder input: the user's hash token (TIGER hashes user ids into 2,000 buckets; here a CRC32 of the source's
  user id, so the bucket is stable across processes), then the SID tokens of the last ``max_items`` history
  items, oldest first, right-padded and masked. Decoder target: the next item's SID (teacher forcing,
  cross-entropy over the whole vocabulary).
- Training examples come from ``TrainData.train_sequences`` only: every prefix of ``items[:-2]`` and the item
  that follows it (RecBole's augmentation, the same examples the RecBole baselines see). Validation targets
  only score validation; test targets are never visible here.
- Early stopping (:func:`bench.training.train_with_early_stopping`, resumable per epoch) on validation NDCG@10 of
  the constrained beam search. Beam search costs far more than an epoch on small data, so validation runs every
  ``eval_every`` epochs (and after the first and the last epoch) on at most ``valid_users`` users drawn once with a
  fixed seed (``0`` = all users). Epochs in between repeat the last measured score in the history, so that the
  best weights only change when measured; ``validated_epochs`` in the report lists the measured ones, and
  ``patience`` counts epochs, not validations.

Model (``small`` / ``paper``): TIGER's, 4 encoder + 4 decoder layers, d_model 128, 6 heads of 64 dims,
ReLU feed-forward 1024, dropout 0.1, user tokens 2,000, histories of up to 20 items, batch 256.

Optimisation, and where it differs from the paper. TIGER trained with T5X (Adafactor) at learning rate 0.01
held for 10k steps, then inverse-square-root decay, for 200k steps (Beauty, Sports). Public PyTorch
reproductions use AdamW instead (weight decay 0.035; learning rate 3e-4 in EdoardoBotta/RQ-VAE-Recommender,
1e-4 with cosine decay in phonism/genrec). Here: AdamW, peak learning rate 1e-3, weight decay 0.035, linear
warmup over ``warmup_steps`` then inverse-square-root decay (the paper's shape: it needs no total step count,
which suits early stopping), gradient clipping at norm 1. Up to 200 epochs with patience 20 replaces the
fixed 200k steps. Training runs in bf16 mixed precision (``bf16``: autocast over float32 weights), as T5X
trained TIGER, where the device has native bf16 (:func:`bench.training.native_bf16`: a GPU, or a CPU with
AVX512-BF16 or AMX, where it cut a step on Beauty from 3.3 s to 1.9 s), and in float32 elsewhere; the report
records which (``bf16``). Ranking always runs in float32, so a list never depends on it.

Profiles: ``smoke`` is tiny (1+1 layers, d_model 16, residual k-means SIDs with 8 codes a level) for tests;
``quick`` fits ml-100k on a CPU in about 2 minutes (a 2+2-layer T5 with d_model 64, histories of 5 items,
2 epochs; leaderboards mark it as a reduced schedule). SID settings are options too (``sid_quantizer``,
``sid_codebook_size``, ...); the default SID configuration is :class:`bench.sid.SidConfig`'s, shared with
every other SID method so that their SIDs come from the same cache entry.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from baselines.sequential import groups_pay_off, mean_over_length_groups
from bench.decode import SIDTrie, constrained_beam_search
from bench.errors import GRBenchError
from bench.registry import Method, RunContext, TrainingInputs, register_method
from bench.sid import SemanticIds, SidConfig, check_encoder, semantic_ids_stage
from bench.split import PADDING_ITEM, TrainData, fixed_subset
from bench.training import native_bf16, train_with_early_stopping, validation_score

PAD = 0  # padding and decoder start token
SID_OFFSET = 1  # SID code tokens start here, level after level
VALID_SUBSET_SEED = 20230509  # fixed: every run seed validates on the same users
MIN_BEAM_WIDTH = 10

# Settings that build the SemanticIds: option name -> SidConfig field.
SID_OPTIONS = {"sid_source": "source", "sid_quantizer": "quantizer", "sid_levels": "levels",
               "sid_codebook_size": "codebook_size", "sid_epochs": "epochs", "sid_encoder": "encoder"}


def _sid_defaults() -> dict[str, Any]:
    default = SidConfig()
    return {option: getattr(default, name) for option, name in SID_OPTIONS.items()}


PAPER: dict[str, Any] = {
    "epochs": 200, "patience": 20, "eval_every": 2, "valid_users": 2000, "batch_size": 256,
    "learning_rate": 1e-3, "weight_decay": 0.035, "warmup_steps": 1000, "max_items": 20, "user_buckets": 2000,
    "layers": 4, "d_model": 128, "heads": 6, "d_kv": 64, "d_ff": 1024, "dropout": 0.1, "eval_batch_size": 256,
    "bf16": True, **_sid_defaults(),
}
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {**PAPER, "epochs": 2, "patience": 2, "eval_every": 1, "valid_users": 0, "batch_size": 64,
              "warmup_steps": 10, "user_buckets": 50, "layers": 1, "d_model": 16, "heads": 2, "d_kv": 8,
              "d_ff": 32, "max_items": 5, "eval_batch_size": 64, "sid_quantizer": "rkmeans", "sid_codebook_size": 8,
              "bf16": False},
    # CPU budget on ml-100k (~97k training prefixes, ~760 steps an epoch): a 2+2-layer T5 over 5-item
    # histories, 2 epochs. Without dropout (a quarter of a CPU step draws dropout masks; two epochs do not
    # overfit) and with a higher learning rate, which in 150 s of training doubled validation NDCG@10 over
    # lr 1e-3 at batch 256. Validation of all 943 users takes about 2 s.
    "quick": {**PAPER, "epochs": 2, "patience": 2, "eval_every": 1, "valid_users": 0, "batch_size": 128,
              "learning_rate": 3e-3, "warmup_steps": 200, "max_items": 5, "layers": 2, "d_model": 64, "heads": 4,
              "d_kv": 16, "d_ff": 256, "dropout": 0.0, "bf16": False},
    "small": PAPER,
    "paper": PAPER,
}


# ------------------------------------------------------------------------------------------------ data to tokens

def item_token_table(sids: SemanticIds, offset: int = SID_OFFSET) -> np.ndarray:
    """``(n_items + 1, L)`` token ids of every item's SID; row 0 (padding item) is all PAD."""
    table = sids.token_id_matrix(offset=offset)
    table[0] = PAD
    return table


def user_tokens(user_ids: np.ndarray, buckets: int, offset: int) -> np.ndarray:
    """The hash token of each user: CRC32 of the source's user id, so stable across processes and runs."""
    return np.array([offset + zlib.crc32(str(user).encode()) % buckets for user in user_ids], dtype=np.int64)


def history_windows(histories: Sequence[np.ndarray], max_items: int) -> np.ndarray:
    """``(n, max_items)`` the last ``max_items`` items of each history, oldest first, right-padded with 0."""
    windows = np.zeros((len(histories), max_items), dtype=np.int64)
    for row, history in enumerate(histories):
        recent = np.asarray(history, dtype=np.int64)[-max_items:]
        windows[row, :len(recent)] = recent
    return windows


def encoder_inputs(users: np.ndarray, windows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``(n, width)`` encoder token ids: user token, then the SID tokens of the window's items, PAD after.

    ``width`` is that of the longest row (1 + L x its item count); the attention mask is ``ids != PAD``.
    """
    ids = np.concatenate([np.asarray(users, dtype=np.int64)[:, None], table[windows].reshape(len(windows), -1)],
                         axis=1)
    width = 1 + table.shape[1] * int((windows > 0).sum(axis=1).max(initial=0))
    return ids[:, :width]


def training_examples(data: TrainData, max_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every prefix of each training sequence and the item after it: ``(users, windows, targets)``.

    Reads ``data.train_sequences`` (``items[:-2]``) and nothing else, so no validation or test target can
    be an input or a target.
    """
    users, prefixes, targets = [], [], []
    for user, sequence in enumerate(data.train_sequences):
        for end in range(1, len(sequence)):
            users.append(user)
            prefixes.append(sequence[:end])
            targets.append(sequence[end])
    return (np.array(users, dtype=np.int64), history_windows(prefixes, max_items),
            np.array(targets, dtype=np.int64))


def inverse_sqrt_schedule(warmup_steps: int) -> Any:
    """Learning-rate factor: linear warmup to 1 over ``warmup_steps``, then ``sqrt(warmup_steps / step)``."""
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        step += 1
        return min(step / warmup, math.sqrt(warmup / step))

    return factor


def build_model(settings: dict[str, Any], vocab_size: int) -> Any:
    """A T5 encoder-decoder from scratch with TIGER's shape (ReLU feed-forward, relative position bias)."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=vocab_size, d_model=settings["d_model"], d_kv=settings["d_kv"],
                      d_ff=settings["d_ff"], num_layers=settings["layers"], num_decoder_layers=settings["layers"],
                      num_heads=settings["heads"], dropout_rate=settings["dropout"], feed_forward_proj="relu",
                      pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=None)
    return T5ForConditionalGeneration(config)


# ------------------------------------------------------------------------------------------------------ method

@register_method
class Tiger(Method):
    name = "tiger"
    family = "generative"
    wants_gpu = True
    extends_shorter_runs = True  # the inverse-square-root schedule needs no total step count
    needs_gpu = True  # small on an Amazon file: 20-30 minutes an epoch on one CPU core, for up to 200 epochs
    description = "semantic IDs + T5 encoder-decoder from scratch, trie-constrained beam search (Rajput et al. 2023)"
    profiles = PROFILES

    @classmethod
    def variant(cls, settings: dict[str, Any]) -> str:
        return f"{settings['sid_quantizer']} SIDs"

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        positive = ("epochs", "eval_every", "batch_size", "max_items", "user_buckets", "layers", "d_model",
                    "heads", "d_kv", "d_ff", "eval_batch_size")
        for key in positive:
            if settings[key] < 1:
                raise GRBenchError(f"tiger: {key} must be at least 1, got {settings[key]}")
        for key in ("patience", "valid_users", "warmup_steps"):
            if settings[key] < 0:
                raise GRBenchError(f"tiger: {key} must not be negative, got {settings[key]}")
        if not 0 <= settings["dropout"] < 1 or settings["learning_rate"] <= 0:
            raise GRBenchError(f"tiger: need 0 <= dropout < 1 and learning_rate > 0, got dropout "
                               f"{settings['dropout']}, learning_rate {settings['learning_rate']}")
        cls.sid_config(settings)  # SidConfig raises GRBenchError for bad SID options

    @classmethod
    def check_available(cls, settings: dict[str, Any]) -> None:
        if settings["sid_source"] in ("auto", "text"):  # auto takes text where items have titles
            check_encoder(settings["sid_encoder"])

    @classmethod
    def validate_every(cls, settings: dict[str, Any]) -> int:
        return settings["eval_every"]

    @staticmethod
    def sid_config(settings: dict[str, Any]) -> SidConfig:
        """The SID options of ``settings`` as a SidConfig (every other SidConfig field keeps its default)."""
        return SidConfig(**{name: settings[option] for option, name in SID_OPTIONS.items()})

    def fit(self, data: TrainData, context: RunContext) -> None:
        self.prepare(data, context)
        with context.stage("seq2seq"):
            torch.manual_seed(context.seed)  # the same initial weights whether the SIDs came from the cache or not
            self.model = build_model(self.settings, self.vocab_size).to(self.device)
            self.training_report = self._train(data, context)

    def prepare(self, data: TrainData, context: RunContext) -> None:
        """Everything but the model: the SIDs (a cached stage), their token table, the user tokens and the trie."""
        self.sids = semantic_ids_stage(data, self.sid_config(self.settings), context)
        self.table = item_token_table(self.sids)
        user_offset = SID_OFFSET + self.sids.n_tokens
        self.user_token = user_tokens(data.user_ids, self.settings["user_buckets"], user_offset)
        self.vocab_size = user_offset + self.settings["user_buckets"]
        self.trie = SIDTrie.from_item_tokens(self.table[1:], np.arange(1, data.n_items + 1))
        self.device = torch.device(context.device)

    def _train(self, data: TrainData, context: RunContext) -> dict[str, Any]:
        settings = self.settings
        users, windows, targets = training_examples(data, settings["max_items"])
        if len(targets) == 0:
            raise GRBenchError(f"tiger: dataset {data.dataset} has no training sequence of two or more items")
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings["learning_rate"],
                                      weight_decay=settings["weight_decay"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt_schedule(settings["warmup_steps"]))
        order_rng = np.random.default_rng(context.seed)  # shuffling order; saved with every checkpoint
        valid_users = self.validation_users(data.n_users)
        bf16 = bool(settings["bf16"]) and native_bf16(self.device)

        def train_epoch(epoch: int) -> float:
            self.model.train()
            order = order_rng.permutation(len(targets))
            batches = [order[start:start + settings["batch_size"]]
                       for start in range(0, len(order), settings["batch_size"])]
            total = 0.0
            for batch in context.progress(batches, f"tiger epoch {epoch + 1}", total=len(batches)):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = self.batch_loss(users[batch], windows[batch], targets[batch])
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(batch)
            return total / len(targets)

        def validate() -> float:
            return validation_score(self.recommend, data, settings["eval_batch_size"], users=valid_users)

        def get_extra() -> dict[str, Any]:
            return {"order": order_rng.bit_generator.state, "scheduler": scheduler.state_dict()}

        def set_extra(extra: dict[str, Any]) -> None:
            order_rng.bit_generator.state = extra["order"]
            scheduler.load_state_dict(extra["scheduler"])

        key = {"settings": settings, "split": data.fingerprint, "seed": context.seed, "sids": self.sids.fingerprint}
        report = train_with_early_stopping(
            context, name=self.name, key=key, model=self.model, optimizer=optimizer, epochs=settings["epochs"],
            patience=settings["patience"], train_epoch=train_epoch, validate=validate,
            extra_state=(get_extra, set_extra), validate_every=self.validate_every(settings),
            extends_shorter_runs=self.extends_shorter_runs)
        return {**report, "valid_users": len(valid_users), "bf16": bf16,
                "training_examples": len(targets), "parameters": sum(p.numel() for p in self.model.parameters())}

    def training_inputs(self, data: TrainData) -> TrainingInputs:
        """Each training example's history window and target item (its encoder and decoder tokens are their SIDs,
        plus the user's hash token)."""
        users, windows, targets = training_examples(data, self.settings["max_items"])
        return {"tiger examples": [(int(user), [*window[window != PADDING_ITEM].tolist(), int(target)])
                                   for user, window, target in zip(users, windows, targets)]}

    def validation_users(self, n_users: int) -> np.ndarray:
        """The users validation scores: all, or ``valid_users`` of them drawn once with a fixed seed."""
        return fixed_subset(n_users, self.settings["valid_users"] or None, VALID_SUBSET_SEED)

    def batch_loss(self, users: np.ndarray, windows: np.ndarray, targets: np.ndarray) -> torch.Tensor:
        """Mean next-SID cross-entropy of a training batch, computed on its length groups.

        A batch of random prefixes nearly always holds one of ``max_items`` items, so cut to its longest row
        the encoder ran on ~81 tokens where most rows hold a few items. Each group of
        :func:`baselines.sequential.length_groups` is cut to its own longest row and weighted by its rows
        (every target has L tokens): the same loss and gradient as the whole batch (right padding is masked,
        and T5's relative positions count from the left; tested with dropout off). On a GPU the batch runs whole,
        cut to its longest row (:func:`baselines.sequential.groups_pay_off`).
        """
        lengths = torch.from_numpy((windows != PADDING_ITEM).sum(1))

        def group_loss(rows: torch.Tensor) -> torch.Tensor:
            chosen = rows.numpy()
            return self.rows_loss(users[chosen], windows[chosen], targets[chosen])

        return mean_over_length_groups(lengths, torch.ones(len(lengths)), group_loss,
                                       grouped=groups_pay_off(self.device))

    def rows_loss(self, users: np.ndarray, windows: np.ndarray, targets: np.ndarray) -> torch.Tensor:
        """Mean next-SID cross-entropy of these rows in one forward pass, cut to their longest row."""
        labels = torch.from_numpy(self.table[targets]).to(self.device)
        return self.model(**self._batch(users, windows), labels=labels).loss

    def _batch(self, users: np.ndarray, windows: np.ndarray) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(encoder_inputs(self.user_token[users], windows, self.table)).to(self.device)
        return {"input_ids": ids, "attention_mask": (ids != PAD).long()}

    def prompts(self, histories: Sequence[np.ndarray], users: np.ndarray) -> list[list[int]]:
        """Encoder token ids per user, unpadded (the beam search pads them the way training does)."""
        ids = encoder_inputs(self.user_token[np.asarray(users, dtype=np.int64)],
                             history_windows(histories, self.settings["max_items"]), self.table)
        return [row[row != PAD].tolist() for row in ids]

    def recommend(self, histories: Sequence[np.ndarray], k: int, users: np.ndarray) -> np.ndarray:
        items, _ = constrained_beam_search(self.model, self.prompts(histories, users), self.trie, k,
                                           beam_width=max(MIN_BEAM_WIDTH, k),
                                           batch_size=self.settings["eval_batch_size"], pad_token_id=PAD)
        return items

    def report(self) -> dict[str, Any]:
        sids = self.sids.summary() if hasattr(self, "sids") else None
        return {**getattr(self, "training_report", {}), "sids": sids}
