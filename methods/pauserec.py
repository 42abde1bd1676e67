"""``pauserec``: trainable ``<pause>`` tokens between the history and the SID (the study this suite reproduces).

Recipe (DESIGN.md, "The study's recipes" 3), on top of the shared CPT and SFT checkpoints:

1. pause initialisation: the ``<pause>`` row at the mean of all token embeddings after CPT, plus noise of
   variance 1e-9 x the embedding variance;
2. pause pretraining (stage ``pause``): from the CPT checkpoint, the CPT corpus with ``<pause>`` inserted at
   random word boundaries (10% of each line's words, seed 42); only the pause row trains; 2 epochs, lr 1e-3;
3. implicit-reasoning SFT (stage ``implicit_sft``): the SFT checkpoint with the pretrained pause row; the user
   turn lists the history items with SID, title and categories; the assistant turn is
   ``<think> <pause>x k </think> <SID>``; the loss is on the target SID only (pauses and prompt are masked);
   every weight trains; k = 5, 5 epochs, lr 5e-5, AdamW, weight decay 0.01;
4. inference: the same prompt with k pauses, then trie-constrained beam search over all items' SIDs.

Ablations are variants of the same method: ``pauserec:pause_init=text-mean`` and ``pauserec:pauses=3`` are
rows of their own. Pause initialisations: ``pretrained`` (1 + 2, the method), and three without pause
pretraining, set on the SFT checkpoint: ``default`` (the mean of all token rows, the study's initialisation
alone), ``text-mean`` (the mean of the backbone's own tokens) and ``sid-mean`` (the mean of the SID code tokens).

Choices DESIGN.md leaves open, and why:
- "10% of each sequence" is read as ``round(0.1 x words)`` pauses per line (at least one), at distinct random
  gaps after a word (never before the first: a pause there has nothing to attend to); SIDs are written without
  spaces, so a pause never splits one;
- pause positions carry no loss in pause pretraining either (the pause is never a prediction target; its
  embedding learns from the tokens after it);
- the pause stage's batch size is the CPT stage's (the study names none);
- ``small``/``paper`` run the implicit SFT with the same global batch (16) as SFT, so that ``sft`` and
  ``pauserec`` differ in the method only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import GRBenchError
from bench.registry import RunContext, TrainingInputs, register_method
from bench.split import TrainData
from methods.llm.backbone import PAUSE, SidVocabulary, embedding_weights, init_rows_at_mean
from methods.llm.config import shared_variant
from methods.llm.prompts import described_history, pause_prefix, recent
from methods.llm.stages import (
    IGNORE,
    Example,
    LLMRecipe,
    PaddingCollator,
    Schedule,
    StageCache,
    answer_example,
    cpt_examples,
    load_rows,
    next_item_pairs,
    only_rows_trainable,
    pad_token_id,
    prompt_ids,
    save_rows,
    train,
    user_next_item_pairs,
)
from methods.sft import NextItemSFT, fine_tune, next_item_sft, sft_based_profiles, sft_stage

PAUSE_INITS = ("pretrained", "default", "text-mean", "sid-mean")

PAUSEREC_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"analysis_items": 5, "pause_epochs": 1, "pause_lr": 1e-3, "pause_batch_size": 4, "pause_max_steps": 3,
              "isft_epochs": 1, "isft_lr": 1e-3, "isft_batch_size": 4, "isft_max_steps": 3},
    # CPU budget, measured on 2 quiet cores: pause steps are CPT-length lines (2.6 s a step of 4); implicit-SFT
    # prompts carry titles and are about twice SFT's length (4.8 s a step of 4)
    "quick": {"analysis_items": 100, "pause_epochs": 1, "pause_lr": 1e-3, "pause_batch_size": 4, "pause_max_steps": 16,
              "isft_epochs": 1, "isft_lr": 1e-4, "isft_batch_size": 4, "isft_max_steps": 32},
    "small": {"analysis_items": 500, "pause_epochs": 2, "pause_lr": 1e-3, "pause_batch_size": 32, "pause_max_steps": 0,
              "isft_epochs": 5, "isft_lr": 5e-5, "isft_batch_size": 16, "isft_max_steps": 0},
    "paper": {"analysis_items": 500, "pause_epochs": 2, "pause_lr": 1e-3, "pause_batch_size": 64, "pause_max_steps": 0,
              "isft_epochs": 5, "isft_lr": 5e-5, "isft_batch_size": 16, "isft_max_steps": 0},
}
PAUSEREC_DEFAULTS = {"pauses": 5, "pause_init": "pretrained", "pause_insert_rate": 0.1, "pause_seed": 42,
                     "isft_weight_decay": 0.01}
# What determines each stage besides the stages it starts from.
PAUSE_SETTINGS = ("pause_insert_rate", "pause_seed", "pause_epochs", "pause_lr", "pause_batch_size",
                  "pause_max_steps")
IMPLICIT_SFT_SETTINGS = ("max_history", "pauses", "pause_init", "sft_loss_tokens", "sft_targets", "isft_epochs",
                         "isft_lr", "isft_batch_size", "isft_max_steps", "isft_weight_decay", "lora", "lora_r",
                         "lora_alpha", "lora_dropout")


def insert_pauses(line: str, rate: float, rng: np.random.Generator) -> str:
    """``line`` with ``round(rate x words)`` (at least one) ``<pause>`` tokens after distinct random words."""
    words = line.split(" ")
    count = min(len(words), max(1, round(rate * len(words))))
    after = set(rng.choice(len(words), size=count, replace=False).tolist())
    written: list[str] = []
    for position, word in enumerate(words):
        written.append(word)
        if position in after:
            written.append(PAUSE)
    return " ".join(written)


def pause_examples(tokenizer: Any, lines: Sequence[str], vocab: SidVocabulary, rate: float, seed: int,
                   max_length: int) -> list[Example]:
    """The pause-pretraining corpus: CPT lines with pauses inserted, language modelling without loss at pauses."""
    rng = np.random.default_rng(seed)
    examples = cpt_examples(tokenizer, [insert_pauses(line, rate, rng) for line in lines], max_length)
    return [Example(e.input_ids, [IGNORE if token == vocab.pause_id else label
                                  for token, label in zip(e.input_ids, e.labels)]) for e in examples]


def pause_corpus(recipe: LLMRecipe, tokenizer: Any, vocab: SidVocabulary) -> list[Example]:
    """What pause pretraining trains on: the recipe's CPT lines, in order, with pauses (:func:`pause_examples`)."""
    s = recipe.settings
    return pause_examples(tokenizer, recipe.cpt_lines(), vocab, s["pause_insert_rate"], s["pause_seed"],
                          s["cpt_max_length"])


def init_pause(model: Any, vocab: SidVocabulary, tokenizer: Any, how: str, seed: int) -> None:
    """Sets the pause row(s) at the mean of the rows ``how`` names, plus the study's 1e-9-variance noise."""
    every_token = np.setdiff1d(np.arange(len(tokenizer)), [vocab.pause_id])
    sources = {"default": every_token, "pretrained": every_token,
               "text-mean": np.arange(vocab.original_rows), "sid-mean": vocab.code_ids}
    init_rows_at_mean(model, [vocab.pause_id], sources[how], seed)


def pause_rows(model: Any, vocab: SidVocabulary) -> list[torch.Tensor]:
    return [weight.detach()[vocab.pause_id].clone() for weight in embedding_weights(model)]


def set_pause_rows(model: Any, vocab: SidVocabulary, rows: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for weight, row in zip(embedding_weights(model), rows):
            weight[vocab.pause_id] = row


def pause_row_norms(model: Any, vocab: SidVocabulary) -> dict[str, float]:
    """The pause row's L2 norm beside the mean norm of the backbone's own rows (input embeddings): with tied
    embeddings pause pretraining pushes the row down in every softmax, and a row far longer than the others is
    the first thing to look at when the implicit SFT after it diverges."""
    weight = embedding_weights(model)[0].detach().float()
    return {"pause_row_norm": float(weight[vocab.pause_id].norm()),
            "mean_token_row_norm": float(weight[:vocab.original_rows].norm(dim=1).mean())}


def pretrain_pause(recipe: LLMRecipe, cache: StageCache, model: Any, tokenizer: Any, vocab: SidVocabulary) -> None:
    """Stage ``pause`` on a CPT model: init, then train only the pause row on the CPT corpus with pauses.

    Saves the row and puts the model's own pause row back, so the same model can go on to SFT exactly as if
    this stage had not run (with tied embeddings the pause row enters every softmax)."""
    s = recipe.settings
    with recipe.training(cache, [recipe.cpt]) as run:
        before = pause_rows(model, vocab)
        init_pause(model, vocab, tokenizer, "pretrained", recipe.context.seed)
        examples = pause_corpus(recipe, tokenizer, vocab)
        schedule = Schedule.of(s, "pause")
        with only_rows_trainable(model, [vocab.pause_id]) as trainable:
            report = train(model, examples, PaddingCollator(pad_token_id(tokenizer)), schedule, settings=s,
                           context=recipe.context, folder=run.folder, description="pause steps")
        save_rows(run.folder, model, np.asarray([vocab.pause_id]))
        norms = pause_row_norms(model, vocab)
        set_pause_rows(model, vocab, before)
        run.report = {**report, **norms, "trainable_values": trainable,
                      "pauses_inserted": sum(e.input_ids.count(vocab.pause_id) for e in examples)}
        run.vocab = vocab


@register_method
class PauseRec(NextItemSFT):
    name = "pauserec"
    description = ("PauseRec: k trainable <pause> tokens between history and SID, pretrained on the CPT corpus, "
                   "then implicit-reasoning SFT (the study reproduced)")
    profiles = sft_based_profiles(PAUSEREC_DEFAULTS, PAUSEREC_PROFILES)

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        super().check_settings(settings)
        if settings["pause_init"] not in PAUSE_INITS:
            raise GRBenchError(f"pauserec: pause_init {settings['pause_init']!r}: expected one of "
                               f"{', '.join(PAUSE_INITS)}")
        if settings["pauses"] < 1:
            raise GRBenchError(f"pauserec: pauses must be at least 1, got {settings['pauses']}")
        if not 0 < settings["pause_insert_rate"] <= 1:
            raise GRBenchError(f"pauserec: pause_insert_rate is a fraction of each line's words, in (0, 1]; got "
                               f"{settings['pause_insert_rate']}")

    @classmethod
    def variant(cls, settings: dict[str, Any]) -> str:
        pretrained = settings["pause_init"] == "pretrained"
        words = shared_variant(settings, ("cpt", "sft", "pause", "isft") if pretrained else ("cpt", "sft", "isft"))
        words.append(f"k={settings['pauses']}")
        words.append("pretrained pauses" if pretrained else f"pause init {settings['pause_init']}")
        if settings["lora"]:
            words.append(f"LoRA r={settings['lora_r']}")
        return ", ".join(words)

    def fit(self, data: TrainData, context: RunContext) -> None:
        self.catalog = data.catalog
        super().fit(data, context)

    def train_stages(self, recipe: LLMRecipe) -> tuple[Any, Any, SidVocabulary]:
        """CPT -> SFT (shared with ``sft``) and CPT -> pause pretraining, then the implicit SFT."""
        s = recipe.settings
        pause = recipe.stage("pause", PAUSE_SETTINGS, recipe.cpt) if s["pause_init"] == "pretrained" else None
        upstream = [sft_stage(recipe), *([pause] if pause is not None else [])]
        cache = recipe.stage("implicit_sft", IMPLICIT_SFT_SETTINGS, *upstream)
        if cache.done:
            return recipe.load_finished(cache)
        cpt_model = None
        if pause is not None and not pause.done:
            cpt_model = recipe.after_cpt()
            pretrain_pause(recipe, pause, *cpt_model)
        model, tokenizer, vocab = next_item_sft(recipe, cpt_model)
        del cpt_model
        if pause is not None:
            info = pause.info()
            with recipe.reused("pause", info["cost"], info["report"], pause.folder):
                load_rows(pause.folder, model)
        else:
            init_pause(model, vocab, tokenizer, s["pause_init"], recipe.context.seed)
        with recipe.training(cache, upstream) as run:
            self.tokenizer, self.vocab = tokenizer, vocab
            examples = self.implicit_sft_examples(recipe.data)
            model, run.report = fine_tune(model, examples, tokenizer=tokenizer, vocab=vocab, recipe=recipe, run=run,
                                          stage="isft", description="implicit SFT steps")
        return model, tokenizer, vocab

    def implicit_sft_examples(self, data: TrainData) -> list[Example]:
        """SFT's (history, target) pairs (``sft_targets`` a user): :meth:`prompt` + the target's SID (needs
        tokenizer and vocab)."""
        return [answer_example(self.prompt(history), self.vocab, target, self.settings["sft_loss_tokens"])
                for history, target in next_item_pairs(data, self.settings["sft_targets"])]

    def training_inputs(self, data: TrainData) -> TrainingInputs:
        self.catalog = data.catalog
        return super().training_inputs(data)

    def stage_inputs(self, recipe: LLMRecipe) -> TrainingInputs:
        """SFT's inputs, then the pause corpus (with pretrained pauses) and the implicit-SFT examples."""
        inputs = super().stage_inputs(recipe)
        if self.settings["pause_init"] == "pretrained":
            users = [user for user, _ in recipe.cpt_rows()]
            inputs["pause corpus"] = self.decoded(users, pause_corpus(recipe, self.tokenizer, self.vocab))
        pair_users = [user for user, _, _ in user_next_item_pairs(recipe.data, self.settings["sft_targets"])]
        inputs["implicit sft examples"] = self.decoded(pair_users, self.implicit_sft_examples(recipe.data))
        return inputs

    def validation_exposure(self) -> dict[str, str]:
        exposure = super().validation_exposure()
        if exposure and self.settings["pause_init"] == "pretrained":
            exposure["pause corpus"] = "pause pretraining reads the CPT corpus (cpt_corpus=paper) with pauses"
        return exposure

    def prompt(self, history: np.ndarray) -> list[int]:
        """History items with SID, title and categories; the assistant turn's k pauses; ``<|sid_begin|>``."""
        user = described_history(self.sids, self.catalog, recent(history, self.settings["max_history"]))
        return prompt_ids(self.tokenizer, self.vocab, user, pause_prefix(self.settings["pauses"]))

    def analyze(self, data: TrainData, folder: Path) -> dict[str, Any]:
        """The study's analyses of PauseRec (DESIGN.md, recipe 5): CPT metadata recovery on a fixed-seed sample
        of ``analysis_items`` items; PCA of text, SID and pause embeddings after CPT (pause at its
        initialisation), after pause pretraining, after implicit SFT (``embeddings.png``); the attention of each
        pause over the prompt of one user's validation history (``pause_attention.png``, last layer)."""
        from methods.llm.analysis import embedding_pca, metadata_recovery, pause_attention

        recipe, vocab = self.recipe, self.vocab
        cpt_model, tokenizer, _ = recipe.after_cpt()
        rng = np.random.default_rng(self.context.seed)
        items = np.sort(rng.choice(np.arange(1, data.n_items + 1), size=min(self.settings["analysis_items"],
                                                                             data.n_items), replace=False))
        recovery = metadata_recovery(cpt_model, tokenizer, self.sids, data.catalog, items.tolist(),
                                     batch_size=self.settings["infer_batch_size"], seed=self.context.seed)
        init_pause(cpt_model, vocab, tokenizer, "pretrained", self.context.seed)
        stage_models = {"after CPT (pause at its init)": cpt_model}
        if self.settings["pause_init"] == "pretrained":
            pretrained = copy.deepcopy(cpt_model)
            load_rows(recipe.stage("pause", PAUSE_SETTINGS, recipe.cpt).folder, pretrained)
            stage_models["after pause pretraining"] = pretrained
        stage_models["after implicit SFT"] = self.model
        pca = embedding_pca(stage_models, vocab, folder / "embeddings.png", seed=self.context.seed)
        histories = data.valid_histories()
        user = next((u for u, h in enumerate(histories) if len(h) >= self.settings["max_history"]), 0)
        prompt = self.prompt(histories[user])
        attention = pause_attention(self.model, tokenizer, prompt, vocab.pause_id, folder / "pause_attention.png")
        first_pause = prompt.index(vocab.pause_id)
        return {"metadata_recovery": recovery, "embedding_pca": pca,
                "pause_attention": {"user": user, "layer": "last", "pauses": len(attention),
                                    # how much each pause reads the prompt before the pauses, vs earlier pauses
                                    "share_before_pauses": [float(row[:first_pause].sum()) for row in attention]},
                "plots": ["embeddings.png", "pause_attention.png"]}
