"""``onerec_think``: explicit reasoning before the SID, OneRec-Think style (Liu et al. 2025), the study's baseline.

Recipe (DESIGN.md, "The study's recipes" 4), on the shared stages of :mod:`methods.sft`:

1. item alignment: the shared CPT (only the SID rows train);
2. next-item SFT: the shared SFT checkpoint (the same folder ``sft`` and ``pauserec`` use);
3. CoT SFT (stage ``cot_sft``): from the SFT checkpoint, one example per user (target = last training item),
   user turn as SFT's (the history's SIDs), assistant ``<think>{rationale}</think> <|sid_begin|>codes<|sid_end|>``
   with a rationale of :mod:`methods.llm.rationales` (``rationale=template-category|template-extended|teacher``);
   every weight trains;
4. GRPO (stage ``grpo``, ``grpo=false`` skips it): TRL's ``GRPOTrainer`` from the CoT SFT checkpoint; prompts are
   the CoT prompts up to ``<think>``, sampled completions (rationale, then SID) are scored by
   :func:`recommendation_reward`;
5. recommendation: a greedy rationale after ``<think>`` (at most ``max_rationale_tokens``, stopped at
   ``</think>``), then trie-constrained beam search over all items' SIDs after
   ``<think>{rationale}</think> <|sid_begin|>``.

Reward of a completion: the SID is the L tokens after its first ``<|sid_begin|>``; 1.0 when it is the target's,
``grpo_level_credit`` x (leading SID levels it shares with the target's) when it is another item's, 0 when there is
no ``<|sid_begin|>``, fewer than L tokens after it, or no item has those tokens (the partial credit is OneRec-Think's
multi-validity idea in its simplest form: a near miss in the semantic-ID hierarchy is a similar item).

Choices DESIGN.md leaves open, and why:

- CoT SFT loss: on the rationale, the closing ``</think> `` and the target SID (markers and codes); the system and
  user turns carry none. The model writes the rationale itself at inference and must learn to close it; the SID
  part is SFT's. (OneRec-Think's reasoning-activation collator also trains on the user turn; here the prompt is
  masked in every LLM method alike.)
- The rationale is built from the history the prompt shows (the last ``max_history`` items) and the training
  target, never a validation or test item.
- The generated rationale is decoded without special tokens, cut at ``</think>`` and written back as text, so the
  SID prompt is tokenised exactly as the CoT SFT examples were.
- GRPO starts from the CoT SFT checkpoint read back from its stage folder, so that TRL's reference model (read
  from the same folder when ``grpo_beta`` > 0) is the CoT SFT model. Completions end at ``<|sid_end|>`` or the
  tokenizer's EOS. TRL's defaults otherwise (loss ``dapo``, group-scaled advantages, one iteration per batch).
  ``grpo_batch_size`` counts completions per optimizer step (``grpo_batch_size / grpo_num_generations`` prompts).
  The GRPO stage is not resumable mid-way: a killed run trains it again.
- GRPO samples a SID the way recommendation decodes one (``grpo_valid_sids``, on by default): the rationale is sampled
  freely, and once a completion writes ``<|sid_begin|>`` its L codes follow the item trie and ``<|sid_end|>`` closes
  them (:class:`bench.decode.SIDAfterMarker`). Sampled freely at temperature 1, the codes were text tokens or no
  item's SID: on the CPU ``quick`` run every completion earned 0, so no prompt's group had a reward spread and GRPO
  had no advantage to learn from (loss and gradient 0 at every step), and the small profile on an H200 logged loss and
  gradient 0 at step 11 too (GPU run 5). With the constraint every completion that reaches its SID names an item and
  earns the hierarchy's partial credit. The policy gradient still uses the model's own log-probabilities of the
  sampled tokens (TRL recomputes them without the constraint), so the update also moves probability toward valid SIDs.
  ``grpo_valid_sids=false`` samples freely, as the reward's description above allows for.

Schedules per profile, and where the numbers come from:

- ``small``/``paper``: CoT SFT as OneRec-Think's reasoning-activation script (wangshy31/OneRec-Think,
  ``train/scripts/run_training_RA.sh``): 2 epochs, lr 1e-5, 10% warmup, weight decay 0.01, global batch 16
  (2 x 8 GPUs). The repository releases no RL code or settings, so GRPO takes TRL's and DeepSeek-R1's usual values:
  lr 1e-6 (TRL's default), 8 generations (TRL's default), KL coefficient 0.001 (DeepSeek-R1, as TRL documents it),
  temperature 1; one epoch over the users with 64 completions (8 prompts) a step; completions of at most 160
  tokens (a 128-token rationale, ``</think> `` and the SID). Rationales at inference: at most 128 tokens (the study).
- ``quick`` (2 CPU cores, SmolLM2): about 3 minutes of training for this method's own stages on ml-100k: CoT SFT
  32 steps of 4 (3 s each on 2 quiet cores, measured), GRPO 4 steps of 8 completions (2 prompts x 4) of at most 32
  tokens (11 s each: sampling, then two micro-batches). So few GRPO steps prove the stage runs; after the CPU
  budget of SFT and CoT SFT the sampled completions rarely form a valid SID, so their reward is mostly 0 (the
  stage report's ``mean_reward``, ``prompts_with_reward_spread``, ``reward_never_varied`` and
  ``completion_examples`` say so) and GRPO
  barely moves the model. No KL term (no reference model to
  run: with so few steps the policy stays next to its start anyway); rationales of at most 32 tokens. 32
  completion tokens fit the category template (~12 SmolLM2 tokens), ``</think> `` and the SID (~21 in all); with
  ``rationale=template-extended`` (~55 tokens) raise ``grpo_max_completion_length``, or every completion is cut
  before its SID and earns 0. Inference is about 3x SFT's (a prompt pass and up to 32 greedy steps per batch
  before the beam search re-reads the prompt with the rationale).
- ``smoke``: 3 CoT SFT steps and a two-step GRPO run with the KL term on (its code path runs in the tests).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.compat import attention_without_cudnn
from bench.decode import SIDAfterMarker, SIDTrie, pad_prompts
from bench.distributed import is_main_process
from bench.errors import GRBenchError
from bench.evaluate import METRICS, per_user_metrics, summarize
from bench.registry import RunContext, TrainingInputs, register_method
from bench.results import write_atomically
from bench.split import EVAL_SUBSET_SEED, TrainData, fixed_subset
from methods.llm.backbone import SidVocabulary
from methods.llm.config import shared_variant
from methods.llm.prompts import THINK_CLOSE, THINK_OPEN, chat_head, recent, sid_history, think_prefix
from methods.llm.rationales import (
    RATIONALES,
    RationaleWriter,
    TeacherClient,
    add_noise_words,
    drop_words,
    noise_vocabulary,
    remove_target_category,
)
from methods.llm.stages import (
    IGNORE,
    TRAINER_DIR,
    Example,
    LLMRecipe,
    Schedule,
    StageCache,
    answer_example,
    encode,
    next_item_pairs,
    pad_token_id,
    prompt_ids,
    save_model,
    trainer_arguments,
    trainer_progress,
    user_next_item_pairs,
    with_lora,
)
from methods.sft import NextItemSFT, fine_tune, next_item_sft, sft_based_profiles, sft_stage

# the study's CoT SFT and GRPO settings: the same for SmolLM2 (small) and Qwen3-1.7B (paper)
STUDY_RECIPE: dict[str, Any] = {
    "analysis_users": 500, "max_rationale_tokens": 128,
    "cot_epochs": 2, "cot_lr": 1e-5, "cot_batch_size": 16, "cot_max_steps": 0, "cot_warmup": 0.1,
    "grpo_epochs": 1, "grpo_lr": 1e-6, "grpo_batch_size": 64, "grpo_max_steps": 0, "grpo_num_generations": 8,
    "grpo_max_completion_length": 160, "grpo_beta": 0.001,
}
ONEREC_THINK_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"analysis_users": 8, "max_rationale_tokens": 16,
              "cot_epochs": 1, "cot_lr": 1e-3, "cot_batch_size": 4, "cot_max_steps": 3, "cot_warmup": 0.0,
              "grpo_epochs": 1, "grpo_lr": 1e-3, "grpo_batch_size": 4, "grpo_max_steps": 2, "grpo_num_generations": 2,
              "grpo_max_completion_length": 24, "grpo_beta": 0.04},
    "quick": {"analysis_users": 100, "max_rationale_tokens": 32,
              "cot_epochs": 1, "cot_lr": 1e-4, "cot_batch_size": 4, "cot_max_steps": 32, "cot_warmup": 0.0,
              "grpo_epochs": 1, "grpo_lr": 1e-5, "grpo_batch_size": 8, "grpo_max_steps": 4, "grpo_num_generations": 4,
              "grpo_max_completion_length": 32, "grpo_beta": 0.0},
    "small": STUDY_RECIPE,
    "paper": STUDY_RECIPE,
}
ONEREC_THINK_DEFAULTS = {"rationale": "template-category", "teacher_url": "", "teacher_model": "",
                         "teacher_timeout": 120.0, "cot_weight_decay": 0.01, "grpo": True, "grpo_level_credit": 0.25,
                         "grpo_temperature": 1.0, "grpo_valid_sids": True}
# What determines each stage besides the stages it starts from.
COT_SETTINGS = ("max_history", "rationale", "teacher_url", "teacher_model", "cot_epochs", "cot_lr", "cot_batch_size",
                "cot_max_steps", "cot_weight_decay", "cot_warmup", "lora", "lora_r", "lora_alpha", "lora_dropout")
GRPO_SETTINGS = ("grpo_epochs", "grpo_lr", "grpo_batch_size", "grpo_max_steps", "grpo_num_generations",
                 "grpo_max_completion_length", "grpo_beta", "grpo_level_credit", "grpo_temperature", "grpo_valid_sids",
                 "lora", "lora_r", "lora_alpha", "lora_dropout")
NOISE_WORDS = 5  # words dropped / added by the perturbations (the study's five)
PERTURBATION_TABLE = "rationale_perturbation.md"


# ------------------------------------------------------------------------------------------- examples and reward

def cot_example(tokenizer: Any, vocab: SidVocabulary, user_text: str, rationale: str, target: int) -> Example:
    """``prompt <think>{rationale}</think> <SID>`` with the loss on everything after ``<think>``: the rationale, the
    closing ``</think> `` and the target SID (markers and codes)."""
    head = encode(tokenizer, chat_head(tokenizer, user_text, THINK_OPEN))
    example = answer_example(prompt_ids(tokenizer, vocab, user_text, think_prefix(rationale)), vocab, target, "sid")
    # where the assistant's own text starts: the end of the head, unless a tokenizer merged across it
    start = next((n for n, (a, b) in enumerate(zip(head, example.input_ids)) if a != b), len(head))
    return Example(example.input_ids, [IGNORE] * start + example.input_ids[start:])


def completion_reward(completion: Sequence[int], target_codes: Sequence[int], trie: SIDTrie, begin_id: int,
                      level_credit: float) -> float:
    """1 for the target's SID, ``level_credit`` per leading level shared with it for another item's SID, 0 without
    a valid SID (see the module docstring)."""
    completion = list(completion)
    if begin_id not in completion:
        return 0.0
    start = completion.index(begin_id) + 1
    codes = completion[start:start + trie.depth]
    if len(codes) < trie.depth or trie.item_of(codes) is None:
        return 0.0
    shared = next((level for level, (a, b) in enumerate(zip(codes, target_codes)) if a != b), trie.depth)
    return 1.0 if shared == trie.depth else level_credit * shared


def _mean_of(logs: Sequence[dict[str, Any]], key: str) -> float | None:
    """The mean of a logged metric over the log entries that have it (None if none has)."""
    values = [entry[key] for entry in logs if entry.get(key) is not None]
    return float(np.mean(values)) if values else None


NEVER_VARIED_WARNING = ("the reward never varied within a prompt's completions at any step: GRPO had no advantage "
                        "to learn from, so its model is the CoT SFT model (loss and gradient 0)")


def grpo_reward_report(logs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What TRL logged of the rewards, step by step (``logs``: the entries of ``log_history`` with a reward),
    as the stage report keeps it: the mean reward at the first and last logged steps and over all, the share of
    prompts whose completions' rewards differ (GRPO learns only from those: a group of equal rewards has no
    advantage), the share of completions cut at the length limit (a cut one rarely reaches its SID), and
    ``reward_never_varied`` when no step had a prompt with a spread, with a ``warning`` the run prints at its end."""
    zero_std = [entry["frac_reward_zero_std"] for entry in logs if entry.get("frac_reward_zero_std") is not None]
    never_varied = bool(zero_std) and all(np.isclose(share, 1.0) for share in zero_std)
    mean_zero_std = float(np.mean(zero_std)) if zero_std else None
    report = {"first_reward": logs[0]["reward"] if logs else None,
              "last_reward": logs[-1]["reward"] if logs else None,
              "mean_reward": _mean_of(logs, "reward"),
              "mean_frac_reward_zero_std": mean_zero_std,
              "prompts_with_reward_spread": None if mean_zero_std is None else 1.0 - mean_zero_std,
              "steps_with_reward_spread": sum(not np.isclose(share, 1.0) for share in zero_std),
              "completions_clipped": _mean_of(logs, "completions/clipped_ratio"),
              "mean_completion_length": _mean_of(logs, "completions/mean_length"),
              "reward_never_varied": never_varied if zero_std else None}
    if never_varied:
        report["warning"] = f"{NEVER_VARIED_WARNING} ({len(zero_std)} steps)"
    return report


def reward_function(vocab: SidVocabulary, trie: SIDTrie, level_credit: float) -> Callable[..., list[float]]:
    """The reward TRL calls: completions as token ids (TRL's text drops the SID tokens, which are special), the
    target item from the dataset's ``target`` column."""

    def recommendation_reward(completion_ids: Sequence[Sequence[int]], target: Sequence[int], **_: Any) -> list[float]:
        return [completion_reward(ids, vocab.item_tokens[int(item)].tolist(), trie, vocab.begin_id, level_credit)
                for ids, item in zip(completion_ids, target)]

    return recommendation_reward


def _keeping_first(reward: Callable[..., list[float]], keep: int = 4,
                   ) -> tuple[Callable[..., list[float]], list[tuple[list[int], int, float]]]:
    """``reward`` as TRL calls it, keeping the first ``keep`` completions it scores with their targets and rewards."""
    kept: list[tuple[list[int], int, float]] = []

    def recommendation_reward(completion_ids: Sequence[Sequence[int]], target: Sequence[int], **kwargs: Any
                              ) -> list[float]:  # the name TRL's reward metrics carry
        rewards = reward(completion_ids, target, **kwargs)
        kept.extend((list(ids), int(item), value)
                    for ids, item, value in list(zip(completion_ids, target, rewards))[:keep - len(kept)])
        return rewards

    return recommendation_reward, kept


def item_trie(vocab: SidVocabulary) -> SIDTrie:
    return SIDTrie.from_item_tokens(vocab.item_tokens[1:], np.arange(1, len(vocab.item_tokens)))


@contextlib.contextmanager
def _sampling_valid_sids(model: Any, trie: SIDTrie, vocab: SidVocabulary) -> Iterator[None]:
    """``model.generate`` (which TRL samples completions with) keeps every SID a completion starts valid, for the
    duration: TRL's ``GenerationConfig`` takes no logits processor, so the call itself is wrapped."""
    from transformers import LogitsProcessorList

    generate = model.generate

    def generate_valid_sids(*args: Any, **kwargs: Any) -> Any:
        prompt_length = kwargs["input_ids"].shape[1]
        processors = LogitsProcessorList([*(kwargs.pop("logits_processor", None) or []),
                                          SIDAfterMarker(trie, vocab.begin_id, vocab.end_id, prompt_length)])
        return generate(*args, logits_processor=processors, **kwargs)

    model.generate = generate_valid_sids
    try:
        yield
    finally:
        del model.generate  # the class's method again


@contextlib.contextmanager
def _stopping_at(model: Any, token_ids: Sequence[int]) -> Iterator[None]:
    """Generation stops at ``token_ids`` too for the duration (TRL reads its stop tokens from the model)."""
    config = model.generation_config
    saved = config.eos_token_id
    current = [] if saved is None else [saved] if isinstance(saved, int) else list(saved)
    config.eos_token_id = list(dict.fromkeys([*current, *token_ids]))
    try:
        yield
    finally:
        config.eos_token_id = saved


# ------------------------------------------------------------------------------------------- decoding

def greedy_rationales(model: Any, tokenizer: Any, heads: Sequence[list[int]], *, max_tokens: int, batch_size: int,
                      stop_ids: Sequence[int]) -> list[str]:
    """Greedy continuation of each head (ending in ``<think>``): at most ``max_tokens`` tokens, stopped at
    ``</think>`` (as text: tokenizers split it differently) or ``stop_ids``; returned as text without special tokens,
    cut before ``</think>``."""
    from transformers import GenerationConfig

    pad = pad_token_id(tokenizer)
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, num_beams=1, eos_token_id=list(stop_ids),
                              pad_token_id=pad, stop_strings=[THINK_CLOSE])
    device = next(model.parameters()).device
    texts: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(heads), batch_size):
                input_ids, mask = pad_prompts(heads[start:start + batch_size], pad, "left", device)
                output = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                        tokenizer=tokenizer)
                for row in output[:, input_ids.shape[1]:]:
                    texts.append(tokenizer.decode(row, skip_special_tokens=True).split(THINK_CLOSE, 1)[0])
    finally:
        model.train(was_training)
    return texts


# ------------------------------------------------------------------------------------------- the method

def cot_stage(recipe: LLMRecipe) -> StageCache:
    return recipe.stage("cot_sft", COT_SETTINGS, sft_stage(recipe))


@register_method
class OneRecThink(NextItemSFT):
    name = "onerec_think"
    description = ("OneRec-Think-style explicit reasoning: CoT SFT on history -> rationale -> SID after the shared "
                   "SFT, then GRPO on a recommendation reward; greedy rationale, then constrained SID decoding")
    profiles = sft_based_profiles(ONEREC_THINK_DEFAULTS, ONEREC_THINK_PROFILES)

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        super().check_settings(settings)
        s = settings
        if s["rationale"] not in RATIONALES:
            raise GRBenchError(f"onerec_think: rationale {s['rationale']!r}: expected one of {', '.join(RATIONALES)}")
        if s["rationale"] == "teacher" and not (s["teacher_url"] and s["teacher_model"]):
            raise GRBenchError("onerec_think: rationale=teacher needs teacher_url (an OpenAI-compatible endpoint, "
                               "e.g. http://127.0.0.1:8000/v1) and teacher_model")
        if s["grpo_num_generations"] < 2:
            raise GRBenchError(f"onerec_think: grpo_num_generations must be at least 2 (GRPO compares completions "
                               f"of one prompt), got {s['grpo_num_generations']}")
        if s["grpo_batch_size"] % s["grpo_num_generations"]:
            raise GRBenchError(f"onerec_think: grpo_batch_size ({s['grpo_batch_size']}) counts completions and must "
                               f"be a multiple of grpo_num_generations ({s['grpo_num_generations']})")
        if not 0 <= s["grpo_level_credit"] < 1:
            raise GRBenchError(f"onerec_think: grpo_level_credit is the reward per shared SID level, in [0, 1); got "
                               f"{s['grpo_level_credit']}")
        for key in ("max_rationale_tokens", "grpo_max_completion_length", "analysis_users", "teacher_timeout",
                    "grpo_temperature"):
            if s[key] <= 0:
                raise GRBenchError(f"onerec_think: {key} must be positive, got {s[key]}")
        if s["grpo_beta"] < 0 or not 0 <= s["cot_warmup"] < 1:
            raise GRBenchError("onerec_think: grpo_beta must be >= 0 and cot_warmup a fraction in [0, 1)")

    @classmethod
    def variant(cls, settings: dict[str, Any]) -> str:
        words = shared_variant(settings, ("cpt", "sft", "cot", "grpo") if settings["grpo"] else ("cpt", "sft", "cot"))
        words.append(f"{settings['rationale']} rationales" if settings["rationale"] != "teacher"
                     else f"teacher rationales ({settings['teacher_model']})")
        if not settings["grpo"]:
            words.append("no GRPO")
        elif not settings["grpo_valid_sids"]:
            words.append("GRPO samples SIDs freely")
        if settings["lora"]:
            words.append(f"LoRA r={settings['lora_r']}")
        return ", ".join(words)

    def fit(self, data: TrainData, context: RunContext) -> None:
        self.writer = self.rationale_writer(data)
        super().fit(data, context)

    def rationale_writer(self, data: TrainData) -> RationaleWriter:
        s = self.settings
        teacher = TeacherClient(s["teacher_url"], s["teacher_model"], timeout=s["teacher_timeout"]) \
            if s["rationale"] == "teacher" else None
        return RationaleWriter(s["rationale"], data.catalog, teacher)

    def training_inputs(self, data: TrainData) -> TrainingInputs:
        self.writer = self.rationale_writer(data)
        return super().training_inputs(data)

    def stage_inputs(self, recipe: LLMRecipe) -> TrainingInputs:
        """SFT's inputs, then the CoT SFT examples and the GRPO prompts with the target each is rewarded for."""
        inputs = super().stage_inputs(recipe)
        users = [user for user, _, _ in user_next_item_pairs(recipe.data)]
        examples, _ = self.cot_examples(recipe, self.tokenizer, self.vocab)
        inputs["cot sft examples"] = self.decoded(users, examples)
        if recipe.settings["grpo"]:
            rows = self.grpo_rows(recipe, self.tokenizer)
            inputs["grpo prompts + targets"] = [
                (user, [*self.vocab.items_in(encode(self.tokenizer, prompt)), target])
                for user, prompt, target in zip(users, rows["prompt"], rows["target"])]
        return inputs

    def cot_examples(self, recipe: LLMRecipe, tokenizer: Any, vocab: SidVocabulary,
                     ) -> tuple[list[Example], list[str]]:
        """One CoT SFT example per user (target = last training item), and the rationales written into them."""
        pairs = next_item_pairs(recipe.data)
        rationales = [self.writer.write(recent(history, recipe.settings["max_history"]), target)
                      for history, target in recipe.context.progress(pairs, "rationales", total=len(pairs))]
        examples = [cot_example(tokenizer, vocab, self.user_text(history), rationale, target)
                    for (history, target), rationale in zip(pairs, rationales)]
        return examples, rationales

    def grpo_rows(self, recipe: LLMRecipe, tokenizer: Any) -> dict[str, list]:
        """GRPO's dataset: the CoT prompt up to ``<think>`` per user, and the target its reward is computed for."""
        pairs = next_item_pairs(recipe.data)
        return {"prompt": [chat_head(tokenizer, self.user_text(history), THINK_OPEN) for history, _ in pairs],
                "target": [target for _, target in pairs]}

    # --- stages

    def train_stages(self, recipe: LLMRecipe) -> tuple[Any, Any, SidVocabulary]:
        """CPT -> SFT (shared with ``sft``) -> CoT SFT -> GRPO, each from the stage cache where it is there."""
        cot = cot_stage(recipe)
        final = recipe.stage("grpo", GRPO_SETTINGS, cot) if recipe.settings["grpo"] else cot
        if final.done:
            return recipe.load_finished(final)
        if not cot.done:
            model, tokenizer, vocab = next_item_sft(recipe)
            self.train_cot(recipe, cot, model, tokenizer, vocab)
            if final is cot:
                return model, tokenizer, vocab
            del model
        model, tokenizer, vocab = recipe.load_finished(cot)  # from its folder: TRL reads the reference model there
        self.train_grpo(recipe, final, cot, model, tokenizer, vocab)
        return model, tokenizer, vocab

    def train_cot(self, recipe: LLMRecipe, cache: StageCache, model: Any, tokenizer: Any, vocab: SidVocabulary,
                  ) -> None:
        s = recipe.settings
        with recipe.training(cache, [sft_stage(recipe)]) as run:
            examples, rationales = self.cot_examples(recipe, tokenizer, vocab)
            model, report = fine_tune(model, examples, tokenizer=tokenizer, vocab=vocab, recipe=recipe, run=run,
                                      stage="cot", description="CoT SFT steps")
            run.report = {**report, "rationale": s["rationale"], "empty_rationales": sum(not r for r in rationales),
                          "rationale_examples": rationales[:3]}

    def train_grpo(self, recipe: LLMRecipe, cache: StageCache, cot: StageCache, model: Any, tokenizer: Any,
                   vocab: SidVocabulary) -> None:
        """GRPO through TRL on this process's device; the trained model is saved in the stage folder."""
        from datasets import Dataset
        from transformers import PrinterCallback
        from trl import GRPOConfig, GRPOTrainer

        s, context = recipe.settings, recipe.context
        dataset = Dataset.from_dict(self.grpo_rows(recipe, tokenizer))
        with recipe.training(cache, [cot]) as run:
            folder = run.folder
            schedule = Schedule.of(s, "grpo")
            args = GRPOConfig(**trainer_arguments(schedule, s, context, folder / TRAINER_DIR),
                              num_generations=s["grpo_num_generations"],
                              max_completion_length=s["grpo_max_completion_length"],
                              temperature=s["grpo_temperature"], beta=s["grpo_beta"])
            trained = with_lora(model, s) if s["lora"] else model
            trie = item_trie(vocab)
            valid_sids = (_sampling_valid_sids(trained, trie, vocab) if s["grpo_valid_sids"]
                          else contextlib.nullcontext())
            with _stopping_at(model, [vocab.end_id]), valid_sids:
                reward, first_completions = _keeping_first(reward_function(vocab, trie, s["grpo_level_credit"]))
                trainer = GRPOTrainer(model=trained, reward_funcs=reward,
                                      args=args, train_dataset=dataset, processing_class=tokenizer,
                                      callbacks=[trainer_progress(context, "GRPO steps")])
                trainer.remove_callback(PrinterCallback)
                with attention_without_cudnn():  # as every stage (methods.llm.stages.train)
                    result = trainer.train()
            if s["lora"]:
                model = trained.merge_and_unload()
            if is_main_process():
                shutil.rmtree(folder / TRAINER_DIR, ignore_errors=True)
            save_model(folder, model, tokenizer)
            logs = [entry for entry in trainer.state.log_history if "reward" in entry]
            run.report = {"prompts": len(dataset), "steps": int(trainer.state.global_step),
                          "train_loss": float(result.training_loss), "bf16": args.bf16,
                          "processes": args.world_size,
                          "gradient_accumulation": args.gradient_accumulation_steps,
                          **grpo_reward_report(logs),
                          # what the policy sampled at the first step, SID tokens shown: why the rewards are what
                          # they are (a rationale that never closes, an invalid SID, a near miss)
                          "completion_examples": [
                              {"completion": tokenizer.decode(ids, skip_special_tokens=False),
                               "target": int(item), "reward": float(value)}
                              for ids, item, value in first_completions]}
            run.vocab = vocab

    # --- prompts and decoding

    def user_text(self, history: Sequence[int]) -> str:
        """SFT's user turn: the SIDs of the last ``max_history`` items."""
        return sid_history(self.sids, recent(history, self.settings["max_history"]))

    def head(self, history: Sequence[int]) -> list[int]:
        """The prompt a rationale continues: chat template, then ``<think>``."""
        return encode(self.tokenizer, chat_head(self.tokenizer, self.user_text(history), THINK_OPEN))

    def rationales(self, model: Any, histories: Sequence[Sequence[int]]) -> list[str]:
        """Greedy rationales of ``model`` for ``histories``, in batches of ``infer_batch_size``."""
        stop = [t for t in (self.tokenizer.eos_token_id, self.vocab.begin_id, self.vocab.end_id) if t is not None]
        return greedy_rationales(model, self.tokenizer, [self.head(h) for h in histories],
                                 max_tokens=self.settings["max_rationale_tokens"],
                                 batch_size=self.settings["infer_batch_size"], stop_ids=stop)

    def decode(self, model: Any, histories: Sequence[Sequence[int]], rationales: Sequence[str], k: int) -> np.ndarray:
        """Top-``k`` items by constrained beam search after ``<think>{rationale}</think> <|sid_begin|>``."""
        prompts = [prompt_ids(self.tokenizer, self.vocab, self.user_text(history), think_prefix(rationale))
                   for history, rationale in zip(histories, rationales)]
        return self.beam_search(model, prompts, k)

    def recommend(self, histories: Sequence[np.ndarray], k: int, users: np.ndarray) -> np.ndarray:
        return self.decode(self.model, histories, self.rationales(self.model, histories), k)

    # --- analysis

    def analyze(self, data: TrainData, folder: Path) -> dict[str, Any]:
        """Rationale perturbation (DESIGN.md, recipe 5) on the CoT SFT model (not GRPO), for the validation
        targets of a fixed-seed subset of ``analysis_users`` users (history = training sequence; no test item): the
        validation target's ground-truth rationale given instead of a generated one, the same without the target's
        categories, with 5 random words dropped, with 5 noise words (catalog title words) added, and the model's
        own greedy rationale. Writes ``rationale_perturbation.md``; returns the metrics."""
        s = self.settings
        users = fixed_subset(data.n_users, s["analysis_users"], EVAL_SUBSET_SEED)
        histories = [data.train_sequences[u] for u in users]
        targets = data.valid_targets[users]
        model, _ = self.recipe.load_model(cot_stage(self.recipe).folder)
        truth = [self.writer.write(recent(h, s["max_history"]), int(t)) for h, t in zip(histories, targets)]
        rng = np.random.default_rng(self.context.seed)
        vocabulary = noise_vocabulary(data.catalog)
        # built one at a time, in this order (the random ones draw from rng in turn), under a progress bar:
        # each condition decodes every user, and the generated one also writes their rationales
        builders: dict[str, Callable[[], list[str]]] = {
            "ground-truth rationale": lambda: truth,
            "target category removed": lambda: [remove_target_category(r, data.catalog, int(t))
                                                for r, t in zip(truth, targets)],
            f"{NOISE_WORDS} random words dropped": lambda: [drop_words(r, NOISE_WORDS, rng) for r in truth],
            f"{NOISE_WORDS} noise words added": lambda: [add_noise_words(r, NOISE_WORDS, rng, vocabulary)
                                                         for r in truth],
            "generated rationale": lambda: self.rationales(model, histories),
        }
        conditions, results = {}, {}
        for name in self.context.progress(list(builders), "rationale perturbation conditions", total=len(builders)):
            conditions[name] = builders[name]()
            results[name] = summarize(per_user_metrics(targets, self.decode(model, histories, conditions[name], 10)))
        write_atomically(folder / PERTURBATION_TABLE, perturbation_table(results, len(users), s).encode())
        return {"model": "cot_sft", "users": len(users), "rationale": s["rationale"], "metrics": results,
                "examples": {name: rationales[:2] for name, rationales in conditions.items()},
                "table": PERTURBATION_TABLE}


def perturbation_table(results: dict[str, dict[str, dict[str, float]]], users: int, settings: dict[str, Any]) -> str:
    """Markdown: one row per rationale condition, mean and 95% bootstrap interval of each metric."""
    from tabulate import tabulate

    def cell(value: dict[str, float]) -> str:
        low, high = value.get("ci_low"), value.get("ci_high")
        return f"{value['mean']:.4f}" + (f" [{low:.4f}, {high:.4f}]" if low is not None else "")

    rows = [[name, *(cell(metrics[m]) for m in METRICS)] for name, metrics in results.items()]
    return (f"# Rationale perturbation ({settings['rationale']} rationales, CoT SFT model)\n\n"
            f"Validation targets of {users} users (fixed-seed subset); history = training sequence.\n\n"
            + tabulate(rows, headers=["rationale", *METRICS], tablefmt="github") + "\n")
