"""``sft``: next-item supervised fine-tuning of an LLM over SID tokens (the PauseRec study's SFT baseline).

Recipe (DESIGN.md, "The study's recipes" 1-2): SIDs from item text; the backbone learns the SID tokens' embeddings
in CPT (item grounding, only SID rows train; shared with the other LLM methods through the stage cache); then
every weight is fine-tuned on one example per user, history -> next item, with the loss on the target SID only.
Recommendation: the same prompt, then trie-constrained beam search over the SIDs of all items
(:mod:`bench.decode`).

Choices DESIGN.md leaves open, and why:
- target = last training item, history = the training items before it, as the study (its third-to-last item);
- the loss covers the answer's ``<|sid_begin|>``, four codes and ``<|sid_end|>`` (``sft_loss_tokens=codes``:
  the codes alone);
- ``small``/``paper`` use the study's implicit-SFT schedule for this SFT too (5 epochs, lr 5e-5, AdamW, weight
  decay 0.01), so that ``sft`` and ``pauserec`` differ in the method only; global batch 16 (OneRec-Think's);
- histories are cut to the last ``max_history`` items (50; 5 in the CPU profiles).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.decode import SIDTrie, constrained_beam_search
from bench.errors import GRBenchError
from bench.registry import Method, RunContext, TrainingInputs, register_method
from bench.sid import check_encoder
from bench.split import TrainData
from methods.llm.backbone import SidVocabulary, check_backbone
from methods.llm.config import check_shared_settings, decode_graphs, llm_profiles, shared_variant
from methods.llm.stages import (
    Example,
    LLMRecipe,
    PaddingCollator,
    Schedule,
    StageCache,
    StageRun,
    StageTrainedElsewhere,
    llm_sid_config,
    pad_token_id,
    save_model,
    sft_prompt_ids,
    train,
    user_next_item_pairs,
    with_lora,
)

SFT_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"sft_epochs": 1, "sft_lr": 1e-3, "sft_batch_size": 4, "sft_max_steps": 3},
    # CPU budget: 2.7 s a step of 4 SmolLM2 examples of ~120 tokens on 2 quiet cores (measured in the main job),
    # so 240 of ml-100k's 943 users in under 3 minutes
    "quick": {"sft_epochs": 1, "sft_lr": 1e-4, "sft_batch_size": 4, "sft_max_steps": 60},
    "small": {"sft_epochs": 5, "sft_lr": 5e-5, "sft_batch_size": 16, "sft_max_steps": 0},
    "paper": {"sft_epochs": 5, "sft_lr": 5e-5, "sft_batch_size": 16, "sft_max_steps": 0},
}
# sft_targets: (history, target) examples per user; 1 is the study's recipe (its last training item), more adds
# the items before it as targets (next_item_pairs), for a dataset with few users such as ml-100k (943)
SFT_DEFAULTS = {"sft_weight_decay": 0.01, "sft_warmup": 0.0, "sft_loss_tokens": "sid", "sft_targets": 1,
                "lora": False, "lora_r": 128, "lora_alpha": 128, "lora_dropout": 0.05}
# What determines the SFT checkpoint besides the CPT stage it starts from.
SFT_SETTINGS = ("max_history", "sft_loss_tokens", "sft_targets", "sft_epochs", "sft_lr", "sft_batch_size",
                "sft_max_steps", "sft_weight_decay", "sft_warmup", "lora", "lora_r", "lora_alpha", "lora_dropout")


@register_method
class NextItemSFT(Method):
    name = "sft"
    family = "llm"
    needs_text = True
    needs_gpu = True
    description = "next-item SFT of an LLM on SID tokens after SID-embedding CPT (PauseRec study's SFT baseline)"
    training_entry_points = ("fit", "train_stages")  # a subclass's own stages need their own training_inputs
    data_parallel = True  # every stage trains through Trainer (methods.llm.stages.train, TRL's trainers)
    wants_gpu = True
    profiles = llm_profiles({profile: {**SFT_DEFAULTS, **own} for profile, own in SFT_PROFILES.items()})

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        check_shared_settings(cls.name, settings)
        if settings["sft_loss_tokens"] not in ("sid", "codes"):
            raise GRBenchError(f"sft: sft_loss_tokens {settings['sft_loss_tokens']!r}: expected sid (markers and "
                               "codes of the target SID) or codes")
        if isinstance(settings["sft_targets"], bool) or not isinstance(settings["sft_targets"], int) \
                or settings["sft_targets"] < 1:
            raise GRBenchError(f"{cls.name}: sft_targets is the number of examples per user, a whole number >= 1 (the "
                               f"study's recipe: 1); got {settings['sft_targets']!r}")
        if not 0 <= settings["sft_warmup"] < 1:
            raise GRBenchError(f"sft: sft_warmup is a fraction of the steps, in [0, 1); got {settings['sft_warmup']}")

    @classmethod
    def check_available(cls, settings: dict[str, Any]) -> None:
        check_backbone(settings["backbone"])
        check_encoder(llm_sid_config(settings).encoder)  # the SIDs' item text encoder

    @classmethod
    def variant(cls, settings: dict[str, Any]) -> str:
        words = shared_variant(settings, ("cpt", "sft"))
        if settings["lora"]:
            words.append(f"LoRA r={settings['lora_r']}")
        return ", ".join(words)

    def __init__(self, settings: dict[str, Any], context: RunContext) -> None:
        super().__init__(settings, context)
        self.report_data: dict[str, Any] = {}

    sid_config = staticmethod(llm_sid_config)  # as TIGER's: the SIDs these settings build (scripts/device/sids.py)

    def fit(self, data: TrainData, context: RunContext) -> None:
        self.recipe = recipe = LLMRecipe(self.name, self.settings, context, data)
        self.sids = recipe.semantic_ids()
        while True:
            try:
                self.model, self.tokenizer, self.vocab = self.train_stages(recipe)
                break
            except StageTrainedElsewhere as finished:  # its lock's holder trained it: the cache has it now
                context.log(f"{finished}; reusing it")
        self.trie = SIDTrie.from_item_tokens(self.vocab.item_tokens[1:], np.arange(1, data.n_items + 1))
        self.report_data = {"stages": recipe.reports, "sids": self.sids.summary(), "vocabulary": len(self.tokenizer)}

    def train_stages(self, recipe: LLMRecipe) -> tuple[Any, Any, SidVocabulary]:
        """The model that recommends: here the SFT checkpoint (a subclass adds stages after it)."""
        return next_item_sft(recipe)

    def training_inputs(self, data: TrainData) -> TrainingInputs:
        """The CPT corpus and the SFT examples as token ids, read back into items (:meth:`SidVocabulary.items_in`);
        SIDs and the SID vocabulary are built as ``fit`` builds them, and nothing trains."""
        self.recipe = recipe = LLMRecipe(self.name, self.settings, self.context, data)
        self.sids = recipe.semantic_ids()
        _, self.tokenizer, self.vocab = recipe.expanded_backbone()
        return self.stage_inputs(recipe)

    def stage_inputs(self, recipe: LLMRecipe) -> TrainingInputs:
        """Each training stage's examples, decoded (a subclass adds its own stages' after these)."""
        cpt_users = [user for user, _ in recipe.cpt_rows()]
        sft_users = [user for user, _, _ in user_next_item_pairs(recipe.data, self.settings["sft_targets"])]
        return {"cpt corpus": self.decoded(cpt_users, recipe.cpt_training_examples(self.tokenizer)),
                "sft examples": self.decoded(sft_users, recipe.sft_examples(self.tokenizer, self.vocab,
                                                                            self.settings["sft_loss_tokens"]))}

    def decoded(self, users: Sequence[int | None], examples: Sequence[Example]) -> list[tuple[int | None, list[int]]]:
        """``(user, items its token ids name)`` per example; ``users[i]`` is the user example ``i`` came from."""
        if len(users) != len(examples):
            raise GRBenchError(f"{self.name}: {len(examples)} training examples for {len(users)} known users")
        return [(user, self.vocab.items_in(example.input_ids)) for user, example in zip(users, examples)]

    def validation_exposure(self) -> dict[str, str]:
        if self.settings["cpt_corpus"] != "paper":
            return {}
        return {"cpt corpus": "cpt_corpus=paper: the study's CPT corpus lists each user's validation item"}

    def prompt(self, history: np.ndarray) -> list[int]:
        """The token ids a recommendation for ``history`` continues (ending in ``<|sid_begin|>``)."""
        return sft_prompt_ids(self.tokenizer, self.sids, self.vocab, history, self.settings["max_history"])

    def beam_search(self, model: Any, prompts: Sequence[Sequence[int]], k: int) -> np.ndarray:
        """Top-``k`` items of ``model`` after each prompt, by trie-constrained beam search as the settings ask
        (beam width, batch size, CUDA graphs); subclasses with prompts of their own decode through it too."""
        items, _ = constrained_beam_search(model, prompts, self.trie, k, beam_width=self.settings["beam_width"],
                                           batch_size=self.settings["infer_batch_size"],
                                           pad_token_id=pad_token_id(self.tokenizer),
                                           graphs=decode_graphs(self.settings))
        return items

    def recommend(self, histories: Sequence[np.ndarray], k: int, users: np.ndarray) -> np.ndarray:
        return self.beam_search(self.model, [self.prompt(history) for history in histories], k)

    def report(self) -> dict[str, Any]:
        return self.report_data


def sft_stage(recipe: LLMRecipe) -> StageCache:
    return recipe.stage("sft", SFT_SETTINGS, recipe.cpt)


def next_item_sft(recipe: LLMRecipe, after_cpt: tuple[Any, Any, SidVocabulary] | None = None,
                  ) -> tuple[Any, Any, SidVocabulary]:
    """The SFT checkpoint, from the stage cache or trained now (from ``after_cpt``, a CPT model the caller
    already holds, else CPT from :meth:`LLMRecipe.after_cpt`). ``sft`` and ``pauserec`` share it."""
    cache = sft_stage(recipe)
    if cache.done:
        return recipe.load_finished(cache)
    model, tokenizer, vocab = after_cpt if after_cpt is not None else recipe.after_cpt()
    s = recipe.settings
    with recipe.training(cache, [recipe.cpt]) as run:
        examples = recipe.sft_examples(tokenizer, vocab, s["sft_loss_tokens"])
        model, run.report = fine_tune(model, examples, tokenizer=tokenizer, vocab=vocab, recipe=recipe, run=run,
                                      stage="sft", description="SFT steps")
    return model, tokenizer, vocab


def fine_tune(model: Any, examples: Sequence[Example], *, tokenizer: Any, vocab: SidVocabulary, recipe: LLMRecipe,
              run: StageRun, stage: str, description: str) -> tuple[Any, dict[str, Any]]:
    """Trains every weight (or LoRA adapters, merged afterwards, with ``lora=true``) on left-padded ``examples``
    with the ``stage`` schedule (``<stage>_epochs``, ``<stage>_lr``, ...), then saves the model in the stage's
    folder and notes its vocabulary; returns the model and the training report."""
    s = recipe.settings
    trained = with_lora(model, s) if s["lora"] else model
    report = train(trained, examples, PaddingCollator(pad_token_id(tokenizer), left=True), Schedule.of(s, stage),
                   settings=s, context=recipe.context, folder=run.folder, description=description)
    if s["lora"]:
        model = trained.merge_and_unload()
    save_model(run.folder, model, tokenizer)
    run.vocab = vocab
    return model, report


def sft_based_profiles(defaults: dict[str, Any], profiles: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The profiles of a method that trains on from the shared SFT checkpoint: SFT's settings (they key that
    checkpoint, so they must match ``sft``'s), then the method's ``defaults``, then its per-profile settings."""
    return llm_profiles({profile: {**SFT_DEFAULTS, **SFT_PROFILES[profile], **defaults, **own}
                         for profile, own in profiles.items()})
