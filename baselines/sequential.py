"""Shared base for torch sequential recommenders that rank every item by ``hidden · item_vector``.

HSTU (``baselines/hstu.py``) and SASRec-style models such as ReaRec differ in their network only; the
rest is the same and lives here once:

- **Data**: training examples come from :attr:`TrainData.train_sequences` alone (``items[:-2]``): each
  sequence's last ``max_len + 1`` items give the input ``seq[:-1]`` and the next-item targets ``seq[1:]``
  at every position (the autoregressive objective of SASRec and HSTU). Sequences are *left-aligned*:
  item ``t`` of a sequence sits in column ``t`` and padding (id 0) fills the columns after it, so a
  causal network's hidden state at a real position never depends on the padding or on the batch width.
  Validation targets only drive early stopping; test targets are never visible.
- **Loss** (setting ``loss``): ``ce`` is the full softmax over items ``1..n_items``; ``sampled`` is a
  sampled softmax against ``negatives`` items drawn uniformly per position (a negative equal to the
  target is masked out). There is no logQ correction: with uniform sampling ``log Q`` is the same
  constant for every candidate and cancels in the softmax. Logits are divided by ``temperature``
  (optional setting, default 1).
- **Training**: Adam or AdamW (``optimizer``, ``learning_rate``, ``weight_decay``; betas per class) and
  the shared early-stopping loop :func:`bench.training.train_with_early_stopping`, so checkpoints after
  every epoch and resume after a kill come for free. Shuffling, negative sampling and dropout draw from
  torch's global generator, which the harness seeds and the checkpoint saves and restores.
- **Ranking**: :meth:`recommend` scores items ``1..n_items`` (never padding) with the hidden state at
  each history's last item (histories cut to their last ``max_len`` items).

A subclass supplies :meth:`SequentialRecommender.build_encoder` (a :class:`SequenceEncoder`) and its
per-profile settings, which must hold the keys in :attr:`SequentialRecommender.required_settings`
(:data:`REQUIRED_SETTINGS`; without :data:`LOSS_SETTINGS` for a subclass that overrides :meth:`loss`). A loss
that changes over training (e.g. a warm-up) learns the epoch from :meth:`SequentialRecommender.begin_epoch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import GRBenchError
from bench.registry import Method, RunContext, TrainingInputs
from bench.split import PADDING_ITEM, TrainData
from bench.training import train_with_early_stopping, validation_score

LOSSES = ("ce", "sampled")
OPTIMIZERS = ("adam", "adamw")
TRAINING_SETTINGS = ("optimizer", "learning_rate", "weight_decay", "batch_size", "eval_batch_size", "epochs",
                     "patience", "max_len")
LOSS_SETTINGS = ("loss", "negatives")  # read by the base's loss(); a subclass with its own loss() may drop them
REQUIRED_SETTINGS = LOSS_SETTINGS + TRAINING_SETTINGS


class SequenceEncoder(torch.nn.Module):
    """The network of a sequential recommender: item ids ``(B, L)`` -> hidden states ``(B, L, D)``.

    Rows are left-aligned and padded with 0 on the right. The state at position ``t`` must depend on
    ``items[:, :t + 1]`` only (causal), since it predicts item ``t + 1`` in training and ranks items at
    the last real position in :meth:`SequentialRecommender.recommend`.
    """

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_embedding = torch.nn.Embedding(n_items + 1, dim, padding_idx=PADDING_ITEM)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """What hidden states are scored against (any shape of ids -> that shape + (D,)); override to normalise."""
        return self.item_embedding(items)


def left_aligned(sequences: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Rows of item ids, each sequence from column 0, padded with 0 up to ``width`` (longer ones are an error)."""
    rows = np.full((len(sequences), width), PADDING_ITEM, dtype=np.int64)
    for row, seq in enumerate(sequences):
        rows[row, : len(seq)] = seq
    return rows


# Rows of length <= 2, 3-4, 5-8, 9-16, 17-32 and longer form the groups of `length_groups`.
WIDTH_GROUPS = (2, 4, 8, 16, 32)


def groups_pay_off(device: torch.device | str) -> bool:
    """Whether a batch is split into :func:`length_groups` on ``device``: on a CPU, where arithmetic bounds a step,
    computing less padding pays; on a GPU a small model's step is bound by launching its kernels from Python (GPU
    run 3, docs/llm-on-gpu.md), and each group is a forward and backward of its own, so there a batch runs whole,
    cut to its longest row."""
    return torch.device(device).type == "cpu"


def length_groups(lengths: torch.Tensor, keep: torch.Tensor | None = None, grouped: bool = True,
                  ) -> list[torch.Tensor]:
    """Indices of the rows of each length group (:data:`WIDTH_GROUPS`; empty groups left out), optionally only of
    rows where ``keep`` is True; with ``grouped=False`` (:func:`groups_pay_off`) one group of them all.

    Written by hand because the libraries' length bucketing (e.g. a bucketing sampler) regroups rows *across*
    batches, which changes what a training step sees; these groups split one batch, so that each group cut to
    its longest row carries little padding while the step's rows stay the same. On the Amazon files a training
    sequence holds five or six items and a batch of 256 nearly always one of 50.
    """
    if not grouped:
        rows = torch.arange(len(lengths), device=lengths.device) if keep is None else torch.nonzero(keep).squeeze(1)
        return [rows] if len(rows) else []
    groups, shorter = [], -1
    for longest in (*WIDTH_GROUPS, int(lengths.max())):
        chosen = (lengths > shorter) & (lengths <= longest)
        shorter = longest
        rows = torch.nonzero(chosen if keep is None else chosen & keep).squeeze(1)
        if len(rows):
            groups.append(rows)
    return groups


def mean_over_length_groups(lengths: torch.Tensor, weights: torch.Tensor,
                            group_loss: Callable[[torch.Tensor], torch.Tensor], grouped: bool = True) -> torch.Tensor:
    """A batch's mean loss from the mean losses of its :func:`length_groups`: ``sum_g group_loss(rows_g) W_g / W``,
    where ``W_g`` sums the ``weights`` of group g's rows (what its mean is over: rows, positions, ...) and ``W``
    those of the batch; rows of weight 0 are left out. Equal to the whole batch's mean where each row's terms do
    not depend on the other rows or on the padding. ``grouped=False``: one group (:func:`groups_pay_off`)."""
    total, loss = weights.sum(), 0
    for rows in length_groups(lengths, keep=weights > 0, grouped=grouped):
        loss = loss + group_loss(rows) * (weights[rows].sum() / total)
    return loss


def next_item_examples(sequences: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, inputs, targets)``: per sequence of 2+ items, its index in ``sequences`` and its last
    ``max_len + 1`` items shifted by one, ``(n, max_len)`` each (input ``seq[:-1]``, target ``seq[1:]``, 0 where
    padded). Shorter sequences teach nothing."""
    rows = np.array([row for row, seq in enumerate(sequences) if len(seq) >= 2], dtype=np.int64)
    windows = [np.asarray(sequences[row][-(max_len + 1):], dtype=np.int64) for row in rows]
    return rows, left_aligned([w[:-1] for w in windows], max_len), left_aligned([w[1:] for w in windows], max_len)


class SequentialRecommender(Method):
    """Base method: owns data, loss, optimizer, the epoch loop and full ranking; subclasses own the network."""

    family = "id-based"
    betas: ClassVar[tuple[float, float]] = (0.9, 0.999)  # Adam(W) betas; a subclass may follow its reference
    required_settings: ClassVar[tuple[str, ...]] = REQUIRED_SETTINGS

    def build_encoder(self, n_items: int) -> SequenceEncoder:
        """The untrained network for ``n_items`` items, built from ``self.settings``."""
        raise NotImplementedError

    @classmethod
    def variant(cls, settings: dict[str, Any]) -> str:
        if settings["loss"] == "sampled":
            return f"loss sampled softmax, {settings['negatives']} negatives"
        return "loss CE"

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        missing = [key for key in cls.required_settings if key not in settings]
        if missing:  # a programming error in the subclass's profiles, caught by any test run
            raise ValueError(f"{cls.__name__} profile lacks settings {missing}")
        if "loss" in settings and settings["loss"] not in LOSSES:
            raise GRBenchError(f"{cls.name}: loss {settings['loss']!r} unknown; expected one of {', '.join(LOSSES)}")
        if settings["optimizer"] not in OPTIMIZERS:
            raise GRBenchError(f"{cls.name}: optimizer {settings['optimizer']!r} unknown; "
                               f"expected one of {', '.join(OPTIMIZERS)}")
        for key in ("negatives", "batch_size", "eval_batch_size", "max_len", "epochs"):
            if key in settings and settings[key] < 1:
                raise GRBenchError(f"{cls.name}: {key} must be at least 1, got {settings[key]}")
        if settings.get("temperature", 1.0) <= 0:
            raise GRBenchError(f"{cls.name}: temperature must be positive, got {settings['temperature']}")

    # --- training -----------------------------------------------------------------------------------------

    def fit(self, data: TrainData, context: RunContext) -> None:
        settings = self.settings
        self.device = torch.device(context.device)
        self.encoder = self.build_encoder(data.n_items).to(self.device)
        optimizer_class = torch.optim.AdamW if settings["optimizer"] == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(self.encoder.parameters(), lr=settings["learning_rate"], betas=self.betas,
                                    weight_decay=settings["weight_decay"])
        _, inputs, targets = (torch.from_numpy(a)
                              for a in next_item_examples(data.train_sequences, settings["max_len"]))
        if len(inputs) == 0:
            raise GRBenchError(f"{self.name}: no training sequence of {data.dataset} has two items to learn from")

        def train_epoch(epoch: int) -> float:
            self.begin_epoch(epoch)
            self.encoder.train()
            order = torch.randperm(len(inputs))
            losses = []
            for start in range(0, len(order), settings["batch_size"]):
                batch = order[start:start + settings["batch_size"]]
                loss = self.batch_loss(inputs[batch], targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            return float(np.mean(losses))

        self.training_report = train_with_early_stopping(
            context, name=self.name, key={"settings": settings, "split": data.fingerprint, "seed": context.seed},
            model=self.encoder, optimizer=optimizer, epochs=settings["epochs"], patience=settings["patience"],
            train_epoch=train_epoch,
            # looked up at call time, so tests can interrupt training by replacing this module's validation_score
            validate=lambda: validation_score(self.recommend, data, settings["eval_batch_size"]),
        )

    def training_inputs(self, data: TrainData) -> TrainingInputs:
        """The rows of the training batches, inputs and next-item targets apart (a row's targets are its inputs
        shifted by one, so together they would count each item twice)."""
        users, inputs, targets = next_item_examples(data.train_sequences, self.settings["max_len"])
        return {f"{self.name} {part}": [(int(user), row[row != PADDING_ITEM].tolist())
                                        for user, row in zip(users, rows)]
                for part, rows in (("inputs", inputs), ("targets", targets))}

    def batch_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """:meth:`loss` of a training batch ``(B, max_len)``, without computing on its padding.

        Where the loss is a mean of per-position terms (:meth:`loss_is_per_position`), it is computed on the
        batch's :func:`length_groups`, each cut to its longest row, and the groups' means are weighted by their
        real positions: the same loss and gradient as the whole batch at once (a position's state depends on
        its own prefix only; tested), in about half the time of a ReaRec step on Sports. Otherwise, and on a GPU
        (:func:`groups_pay_off`), the batch is cut to its longest row only.
        """
        lengths = (targets != PADDING_ITEM).sum(1)

        def group_loss(rows: torch.Tensor) -> torch.Tensor:
            width = int(lengths[rows].max())
            return self.loss(inputs[rows, :width].to(self.device), targets[rows, :width].to(self.device))

        if not self.loss_is_per_position():
            return group_loss(torch.arange(len(lengths)))
        return mean_over_length_groups(lengths, lengths, group_loss, grouped=groups_pay_off(self.device))

    def loss_is_per_position(self) -> bool:
        """Whether :meth:`loss` is a mean over real positions of terms that each read one position's state (a
        subclass whose loss compares sequences within a batch says no)."""
        return True

    def begin_epoch(self, epoch: int) -> None:
        """Called before each training epoch (0-based, also after a resume); a no-op unless a loss has a schedule."""

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-item loss over the real positions of a ``(B, L)`` batch (targets 0 are padding).

        Both losses start from the logits of every item at every position. The sampled softmax reads its
        candidates' logits from there: the same numbers and gradients as scoring the sampled vectors one
        by one, and cheaper for catalogs of up to ``negatives * dim`` items than materialising a
        (positions, negatives, dim) tensor of their vectors.
        """
        real = targets != PADDING_ITEM
        hidden = self.encoder(inputs)[real]  # (P, D)
        positives = targets[real] - 1  # (P,) column of the target: column i is item i + 1
        logits = hidden @ self.all_item_vectors().T / self.settings.get("temperature", 1.0)  # (P, n_items)
        if self.settings["loss"] == "ce":
            return F.cross_entropy(logits, positives)
        negatives = torch.randint(0, logits.shape[1], (len(positives), self.settings["negatives"]),
                                  device=logits.device)
        negative_logits = logits.gather(1, negatives).masked_fill(negatives == positives[:, None], float("-inf"))
        candidates = torch.cat([logits.gather(1, positives[:, None]), negative_logits], dim=1)
        return -F.log_softmax(candidates, dim=1)[:, 0].mean()  # the target is candidate 0

    # --- ranking ------------------------------------------------------------------------------------------

    def all_item_vectors(self) -> torch.Tensor:
        """Vectors of items ``1..n_items`` (row ``i`` is item ``i + 1``): padding is never a candidate."""
        return self.encoder.item_vectors(torch.arange(1, self.encoder.n_items + 1, device=self.device))

    def last_hidden(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Hidden state after each history's last item, ``(len(histories), D)``, histories cut to ``max_len``."""
        max_len = self.settings["max_len"]
        recent = [np.asarray(h[-max_len:], dtype=np.int64) for h in histories]
        lengths = torch.tensor([len(h) for h in recent])
        # histories of similar length together: little padding computed (on a CPU; one group on a GPU)
        groups = length_groups(lengths, grouped=groups_pay_off(self.device))
        states = []
        for rows in groups:
            items = torch.from_numpy(left_aligned([recent[row] for row in rows], max(1, int(lengths[rows].max()))))
            last = (lengths[rows] - 1).clamp(min=0).to(self.device)
            states.append(self.encoder(items.to(self.device))[torch.arange(len(rows), device=self.device), last])
        grouped = torch.cat(states)
        hidden = torch.empty_like(grouped)
        hidden[torch.cat(groups).to(self.device)] = grouped  # back in the order of `histories`
        return hidden

    @torch.no_grad()
    def scores(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Score of every item for each history, ``(len(histories), n_items + 1)``; column 0 (padding) is -inf."""
        self.encoder.eval()
        item_scores = self.last_hidden(histories) @ self.all_item_vectors().T
        return F.pad(item_scores, (1, 0), value=float("-inf"))

    def recommend(self, histories: Sequence[np.ndarray], k: int, users: np.ndarray) -> np.ndarray:
        return torch.topk(self.scores(histories), k, dim=1).indices.cpu().numpy().astype(np.int64)

    def report(self) -> dict[str, Any]:
        return getattr(self, "training_report", {})
