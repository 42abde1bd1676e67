"""Training stages of the LLM methods: cached by what determines them, trained through Hugging Face ``Trainer``.

A stage (``cpt``, ``sft``, later ``pause``, ...) is a folder under
``cache_dir()/<dataset>/<split fingerprint>/llm-stages/<stage>-<key hash>/``. The key hashes everything that
determines the stage's result: split, SIDs, backbone, the stage's settings, seed, number of processes and the
previous stage's key. A finished stage holds ``stage.json`` (key, training report, cost) and, written last and
atomically, the ``DONE`` marker; a folder without the marker is an interrupted stage and is trained again. So
``sft`` and ``pauserec`` share one CPT checkpoint, and nothing is recomputed unless its inputs changed.

Runs in separate processes may share the cache (``bench run --methods sft`` beside ``--methods pauserec``): a
stage is trained under a lock file beside its folder, so a second process waits for the first rather than
training the same stage into the same folder, and then reuses it (:class:`StageTrainedElsewhere`).

A reused stage still counts in a run's cost: what it cost when it was trained is carried into the run's stage
record (``carried_wall_s``), so a row's cost is what producing its model cost, wherever that happened.

Training goes through ``Trainer``, so ``accelerate launch -m bench run ...`` trains data-parallel unchanged;
every process runs every stage, the main process writes the folder, the others wait for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from bench.compat import attention_without_cudnn
from bench.costs import (
    GpuSharing,
    attention_flops,
    bf16_matmul_tflops,
    devices_in_use,
    hardware,
    model_flops_utilisation,
    training_flops_per_token,
)
from bench.distributed import is_main_process, main_process_first, world_size
from bench.errors import GRBenchError
from bench.paths import cache_dir, lock_beside
from bench.registry import RunContext
from bench.results import slug, write_atomically
from bench.sid import SemanticIds, SidConfig, semantic_ids_stage
from bench.split import TrainData
from methods.llm.backbone import (
    DTYPES,
    SidVocabulary,
    embedding_weights,
    expand_vocabulary,
    load_backbone,
    vocabulary_of,
)
from methods.llm.config import BACKBONE_SETTINGS, CPT_SETTINGS, SID_SETTINGS
from methods.llm.profiling import step_profiler
from methods.llm.prompts import ASSISTANT_PREFIX, chat_prompt, cpt_corpus_rows, recent, sid_history

STAGE_VERSION = 2  # bump when a code change alters what a stage trains
DONE = "DONE"
STAGE_FILE = "stage.json"
ROWS_FILE = "rows.safetensors"
TRAINER_DIR = "trainer"  # Trainer's epoch checkpoints of a stage in progress
ELAPSED_FILE = "grbench-elapsed.json"
IGNORE = -100  # label of positions without loss (Hugging Face convention)


# ------------------------------------------------------------------------------------------- processes

def barrier() -> None:
    """Waits for every process (no-op outside a distributed launch)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def device_of(context: RunContext) -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` under a distributed launch."""
    if context.device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(context.device)


# ------------------------------------------------------------------------------------------- stage cache

@dataclass(frozen=True)
class StageCache:
    """The folder of one stage, named by the hash of its key."""

    name: str
    key: dict[str, Any]
    folder: Path

    @property
    def digest(self) -> str:
        return self.folder.name.rsplit("-", 1)[1]

    @property
    def done(self) -> bool:
        return (self.folder / DONE).is_file()

    def info(self) -> dict[str, Any]:
        return json.loads((self.folder / STAGE_FILE).read_text())

    def prepare(self) -> Path:
        """The folder of a stage that is (re)trained: leftovers of an interrupted run are removed, except its
        Trainer checkpoints (same folder, same key: the same training, so it may continue from them)."""
        if is_main_process():
            self.folder.mkdir(parents=True, exist_ok=True)
            for child in self.folder.iterdir():
                if child.is_dir() and child.name != TRAINER_DIR:
                    shutil.rmtree(child)
                elif not child.is_dir():
                    child.unlink()
        barrier()
        return self.folder

    def finish(self, info: dict[str, Any]) -> None:
        """Writes ``stage.json``, then the marker (the main process; the others wait)."""
        if is_main_process():
            text = json.dumps({"key": self.key, **info}, indent=1, sort_keys=True, default=str)
            write_atomically(self.folder / STAGE_FILE, text.encode())
            write_atomically(self.folder / DONE, self.digest.encode())
        barrier()


class StageTrainedElsewhere(Exception):
    """A stage this run was about to train was finished by another process while this one waited for its lock:
    the method starts its stages again and now finds it in the cache (``NextItemSFT.fit`` does)."""

    def __init__(self, cache: StageCache) -> None:
        super().__init__(f"stage {cache.name} was trained by another process meanwhile ({cache.folder})")
        self.cache = cache


@contextmanager
def stage_lock(cache: StageCache, context: RunContext) -> Iterator[None]:
    """Holds the lock of ``cache`` (a file beside its folder) while the stage trains, and says so when another
    process holds it. Not under a distributed launch: its processes train a stage together (the main process
    writes, the others wait at barriers), so two launches sharing one cache are not guarded from each other."""
    if world_size() > 1:
        yield
        return
    cache.folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_beside(cache.folder)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        context.log(f"waiting for stage {cache.name}: another process is training it ({lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@dataclass
class StageRun:
    """A stage being trained (:meth:`LLMRecipe.training`): its prepared folder, and what the training block
    fills in: the training report and the vocabulary of the model it saved."""

    folder: Path
    report: dict[str, Any] = field(default_factory=dict)
    vocab: SidVocabulary | None = None


def stage_cache(data: TrainData, name: str, key: dict[str, Any]) -> StageCache:
    full_key = {"stage": name, "version": STAGE_VERSION, "dataset": data.dataset, "split": data.fingerprint,
                "world_size": world_size(), **key}
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return StageCache(name, full_key, cache_dir() / slug(data.dataset) / data.fingerprint / "llm-stages" /
                      f"{name}-{digest}")


# ------------------------------------------------------------------------------------------- examples

@dataclass(frozen=True)
class Example:
    """One training sequence: token ids and labels (IGNORE where there is no loss)."""

    input_ids: list[int]
    labels: list[int]


class Examples(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        # a mapping with "input_ids", so that Trainer's length-grouped sampler can read each example's length
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels}


@dataclass(frozen=True)
class PaddingCollator:
    """Pads a batch. ``left=True`` left-pads (with explicit position ids, as decoding does) so that every row's
    labelled tokens sit at the end, and (``trim_logits``) asks the model for logits of those last positions only:
    the output layer over the whole vocabulary is a fifth of SmolLM2's compute, wasted on positions without loss.
    Liger's fused loss computes no logits to save and cannot take that slice, and a compiled model would compile
    anew for each slice (:func:`collator_for`). ``pad_multiple`` rounds the padded width up to a multiple, so that
    a compiled model sees few shapes."""

    pad_token_id: int
    left: bool = False
    trim_logits: bool = True
    pad_multiple: int = 1

    def __call__(self, examples: Sequence[Example | Mapping[str, list[int]]]) -> dict[str, Any]:
        examples = [Example(e["input_ids"], e["labels"]) if isinstance(e, Mapping) else e for e in examples]
        width = -(-max(len(e.input_ids) for e in examples) // self.pad_multiple) * self.pad_multiple
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            span = slice(width - len(example.input_ids), width) if self.left else slice(0, len(example.input_ids))
            input_ids[row, span] = torch.tensor(example.input_ids)
            labels[row, span] = torch.tensor(example.labels)
            mask[row, span] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        if self.left:
            batch.update(position_ids=(mask.cumsum(-1) - 1).clamp_min(0))
        if self.left and self.trim_logits:
            labelled = (labels != IGNORE).long()
            first = torch.where(labelled.any(1), labelled.argmax(1), width - 1)
            keep = int(width - first.min()) + 1  # logits from the position before the first labelled token
            batch.update(labels=labels[:, -keep:], logits_to_keep=keep)
        return batch


COMPILE_PAD_MULTIPLE = 64  # padded widths of a compiled stage: SFT's prompts (about 380 tokens) in a few shapes


def collator_for(collator: Any, *, liger: bool, compiled: bool) -> Any:
    """The collator of a stage with Liger's kernels or a compiled model: without ``logits_to_keep`` (Liger's fused
    loss cannot view its slice of the hidden states, GPU run 3 failed on it, and keeps no logits in memory anyway;
    a compiled model would compile again for each slice), and, compiled, with widths padded to
    :data:`COMPILE_PAD_MULTIPLE` (each new shape compiles, and with CUDA graphs records, anew)."""
    if not isinstance(collator, PaddingCollator):
        return collator
    if liger or compiled:
        collator = replace(collator, trim_logits=False)
    if compiled:
        collator = replace(collator, pad_multiple=COMPILE_PAD_MULTIPLE)
    return collator


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id, else its EOS id (padded positions are masked either way)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as written (the chat template already holds any special tokens it needs)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def cpt_examples(tokenizer: Any, lines: Sequence[str], max_length: int) -> list[Example]:
    """Language modelling over the whole line (both grounding directions), ending in the EOS token."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    examples = []
    for line in lines:
        ids = (encode(tokenizer, line) + eos)[:max_length]
        examples.append(Example(ids, list(ids)))
    return examples


def prompt_ids(tokenizer: Any, vocab: SidVocabulary, user_text: str, assistant_prefix: str = ASSISTANT_PREFIX,
               ) -> list[int]:
    """A chat prompt up to and including the answer's ``<|sid_begin|>`` (:func:`chat_prompt`), as token ids."""
    ids = encode(tokenizer, chat_prompt(tokenizer, user_text, assistant_prefix))
    if not ids or ids[-1] != vocab.begin_id:
        raise GRBenchError("the tokenizer split <|sid_begin|> at the end of the prompt; SID tokens must be added "
                           "to it as special tokens (methods.llm.backbone.expand_vocabulary)")
    return ids


def answer_example(prompt: list[int], vocab: SidVocabulary, target: int, loss_tokens: str = "sid") -> Example:
    """``prompt`` (ending in ``<|sid_begin|>``) + the target's SID; the loss covers the target SID only:
    ``<|sid_begin|>``, codes and ``<|sid_end|>`` (``sid``), or the codes alone (``codes``). Every prompt token,
    pauses included, is IGNORE."""
    codes = vocab.item_tokens[target].tolist()
    ids = prompt + codes + [vocab.end_id]
    if loss_tokens == "sid":
        labels = [IGNORE] * (len(prompt) - 1) + [vocab.begin_id] + codes + [vocab.end_id]
    elif loss_tokens == "codes":
        labels = [IGNORE] * len(prompt) + codes + [IGNORE]
    else:
        raise GRBenchError(f"loss tokens {loss_tokens!r}: expected sid or codes")
    return Example(ids, labels)


def sft_prompt_ids(tokenizer: Any, sids: SemanticIds, vocab: SidVocabulary, history: Sequence[int],
                   max_history: int) -> list[int]:
    """The next-item SFT prompt (SIDs of the last ``max_history`` items), for training and decoding alike."""
    return prompt_ids(tokenizer, vocab, sid_history(sids, recent(history, max_history)))


def sft_example(tokenizer: Any, sids: SemanticIds, vocab: SidVocabulary, history: Sequence[int], target: int,
                max_history: int, loss_tokens: str = "sid") -> Example:
    """One next-item SFT example (:func:`sft_prompt_ids` + :func:`answer_example`)."""
    return answer_example(sft_prompt_ids(tokenizer, sids, vocab, history, max_history), vocab, target, loss_tokens)


def next_item_pairs(data: TrainData, targets_per_user: int = 1) -> list[tuple[np.ndarray, int]]:
    """(history, target) pairs: by default one per user, target = last training item (the study's
    third-to-last), history = the items before it. ``targets_per_user`` = n also takes each of the n - 1
    training items before it as a target, with the items before that one as its history (a variant for
    datasets with few users; the study's recipe is 1). Users with a single training item give no example."""
    return [(history, target) for _, history, target in user_next_item_pairs(data, targets_per_user)]


def user_next_item_pairs(data: TrainData, targets_per_user: int = 1) -> list[tuple[int, np.ndarray, int]]:
    """:func:`next_item_pairs` with each pair's user index, in the same order (for the leakage audit)."""
    return [(user, seq[:position], int(seq[position])) for user, seq in enumerate(data.train_sequences)
            for position in range(len(seq) - 1, max(0, len(seq) - 1 - targets_per_user), -1)]


# ------------------------------------------------------------------------------------------- training

@contextmanager
def only_rows_trainable(model: Any, rows: Sequence[int]) -> Iterator[int]:
    """Inside, only ``rows`` of the input and output embeddings train; every other parameter and row stays
    bit-identical: parameters are frozen, and the embedding gradients are zeroed outside ``rows`` before the
    optimizer sees them (AdamW then leaves those rows exactly as they were, provided weight decay is 0, which
    :func:`train` enforces through ``weight_decay``). Yields the number of trainable values."""
    saved = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    handles = []
    for weight in embedding_weights(model):
        mask = torch.zeros((weight.shape[0], 1), dtype=weight.dtype, device=weight.device)
        mask[torch.as_tensor(np.asarray(rows, dtype=np.int64), device=weight.device)] = 1
        weight.requires_grad_(True)
        handles.append(weight.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device, grad.dtype)))
    try:
        yield len(rows) * sum(w.shape[1] for w in embedding_weights(model))
    finally:
        for handle in handles:
            handle.remove()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(saved[name])


@dataclass(frozen=True)
class Schedule:
    """One stage's optimisation: global batch size, epochs or a step cap, AdamW learning rate and decay."""

    lr: float
    epochs: int
    batch_size: int
    max_steps: int = 0  # > 0: stop after this many optimizer steps (CPU budgets)
    weight_decay: float = 0.0
    warmup: float = 0.0  # fraction of the steps

    @classmethod
    def of(cls, settings: dict[str, Any], stage: str) -> Schedule:
        """Stage ``stage``'s schedule from its settings ``<stage>_lr``, ``_epochs``, ``_batch_size`` and
        ``_max_steps``, and ``_weight_decay`` and ``_warmup`` where the method has them (0 otherwise)."""
        return cls(lr=settings[f"{stage}_lr"], epochs=settings[f"{stage}_epochs"],
                   batch_size=settings[f"{stage}_batch_size"], max_steps=settings[f"{stage}_max_steps"],
                   weight_decay=settings.get(f"{stage}_weight_decay", 0.0), warmup=settings.get(f"{stage}_warmup", 0.0))


def micro_batches(schedule: Schedule, micro_batch_size: int) -> tuple[int, int]:
    """(examples one device takes at once, micro-batches accumulated per optimizer step) for the stage's global
    batch. ``micro_batch_size`` caps the first, so a stage whose batch per device is smaller takes it whole: fewer,
    larger forwards, which matters where a small model's steps are bound by launching kernels (GPU run 3: three
    SmolLM2 CPT trainers sharing one H200 each still reached 29-30k tokens/s)."""
    processes = world_size()
    if schedule.batch_size % processes:
        raise GRBenchError(f"batch size {schedule.batch_size} is not a multiple of the {processes} processes")
    per_device = schedule.batch_size // processes
    micro = min(micro_batch_size, per_device)
    if per_device % micro:
        raise GRBenchError(f"batch size {schedule.batch_size} is not a multiple of micro_batch_size "
                           f"({micro_batch_size}) x processes ({processes}); choose another micro_batch_size")
    return micro, per_device // micro


def use_liger(settings: dict[str, Any], device: torch.device) -> bool:
    """Whether a stage trains with Liger's fused kernels: ``liger=true`` on a CUDA device (Triton kernels; a CPU
    ignores the setting, as it does ``bf16``). Fails before training where the package is missing."""
    if not settings.get("liger") or device.type != "cuda":
        return False
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise GRBenchError("liger=true needs the liger-kernel package on the GPU machine: "
                           "pip install liger-kernel==0.8.5 (or set liger=false)")
    return True


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(settings: dict[str, Any]) -> str | None:
    """``torch.compile``'s mode for the stages (``compile=reduce-overhead``: CUDA graphs too), or None (``off``)."""
    mode = settings.get("compile", "off")
    if mode not in COMPILE_MODES:
        raise GRBenchError(f"compile {mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    return None if mode == "off" else mode


def trainer_arguments(schedule: Schedule, settings: dict[str, Any], context: RunContext, output_dir: Path, *,
                      checkpoints: bool = False) -> dict[str, Any]:
    """The Hugging Face training arguments of every LLM stage, for ``TrainingArguments`` and TRL's configs alike:
    this process's device, the run's seed, the schedule, global batches accumulated over micro-batches and
    processes, bf16 where the GPU has it, an epoch checkpoint with ``checkpoints``, and no logging of its own."""
    device = device_of(context)
    micro, accumulation = micro_batches(schedule, settings["micro_batch_size"])
    compiled = compile_mode(settings)
    return dict(
        output_dir=str(output_dir), use_cpu=device.type == "cpu", seed=context.seed,
        use_liger_kernel=use_liger(settings, device),
        # Trainer compiles the model through accelerate (torch.compile; "default" is torch's own default mode)
        torch_compile=compiled is not None, torch_compile_mode=None if compiled == "default" else compiled,
        data_seed=context.seed, learning_rate=schedule.lr, num_train_epochs=schedule.epochs,
        max_steps=schedule.max_steps if schedule.max_steps > 0 else -1,
        per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
        weight_decay=schedule.weight_decay, warmup_steps=schedule.warmup, lr_scheduler_type="linear",
        bf16=bool(settings["bf16"]) and device.type == "cuda" and torch.cuda.is_bf16_supported(),
        activation_checkpointing=bool(settings["gradient_checkpointing"]),
        activation_checkpointing_kwargs={"use_reentrant": False},
        # no rotation by Trainer: it would delete the previous checkpoint before the new one is marked complete
        # (_elapsed_recorder marks it, then removes the older ones), and a kill in between would lose both
        save_strategy="epoch" if checkpoints else "no", save_total_limit=None, report_to="none",
        logging_strategy="steps", logging_steps=1, disable_tqdm=True, log_level="warning",
        logging_nan_inf_filter=False,  # a diverged stage must show its NaN loss (divergence_guard stops it)
        remove_unused_columns=False, dataloader_pin_memory=device.type == "cuda",
        # batches of similar lengths (random order otherwise) waste less compute on padding
        train_sampling_strategy="group_by_length" if settings["group_by_length"] else "random",
    )


def trainer_progress(context: RunContext, description: str) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Advances the harness's progress bar once per optimizer step."""

        def on_train_begin(self, args, state, control, **kwargs):
            remaining = state.max_steps - state.global_step
            self.bar = iter(context.progress(range(remaining), description, total=remaining))

        def on_step_end(self, args, state, control, **kwargs):
            next(self.bar, None)

        def on_log(self, args, state, control, logs=None, **kwargs):
            every = max(1, state.max_steps // 10)  # about ten lines a stage
            if logs and "loss" in logs and (state.global_step % every == 0 or state.global_step == state.max_steps):
                norm = f", gradient norm {logs['grad_norm']:.3g}" if logs.get("grad_norm") is not None else ""
                context.log(f"{description} {state.global_step}/{state.max_steps}: loss {logs['loss']:.4g}{norm}"
                            f"{_reward_text(logs)}")

        def on_train_end(self, args, state, control, **kwargs):
            for _ in self.bar:
                pass

    return Progress()


def _reward_text(logs: dict[str, Any]) -> str:
    """A GRPO step's reward (TRL's log keys): a loss and gradient of 0 mean every group's completions earned the
    same reward (no advantage to learn from), which only the reward's spread across groups can tell."""
    if logs.get("reward") is None:
        return ""
    text = f", reward {logs['reward']:.3g}"
    if logs.get("frac_reward_zero_std") is not None:
        text += f", groups without reward spread {100 * logs['frac_reward_zero_std']:.0f}%"
    if logs.get("completions/clipped_ratio") is not None:
        text += f", completions cut at the length limit {100 * logs['completions/clipped_ratio']:.0f}%"
    return text


def divergence_guard(description: str, history: int = 8) -> Any:
    """Stops a stage at the first non-finite training loss or gradient norm, with the step and the last
    ``history`` logged steps (loss and gradient norm, so that a slow blow-up tells itself from a sudden one): a
    diverged model would otherwise train on for the rest of its steps and then fail at decoding (or rank by NaN).
    A non-finite gradient under a finite, ordinary loss is a backward pass that failed on one batch, not a
    divergence (GPU runs 2 and 4: cuDNN's attention kernel, :func:`bench.compat.attention_without_cudnn`), and
    the error says so."""
    from transformers import TrainerCallback

    class Divergence(TrainerCallback):
        def __init__(self) -> None:
            self.recent: deque[str] = deque(maxlen=history)
            self.last_finite: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is None:
                return
            norm = (logs or {}).get("grad_norm")
            self.recent.append(f"{state.global_step}: {loss:.4g}" + (f" (gradient norm {norm:.3g})"
                                                                      if norm is not None else ""))
            where = f"at step {state.global_step} of {state.max_steps}"
            if not math.isfinite(loss):
                raise GRBenchError(f"{description}: the training loss became {loss} {where} (last finite loss: "
                                   f"{self.last_finite}; last steps {'; '.join(self.recent)}); the stage diverged. "
                                   "Its learning rate or batch size, or bf16=false, may help")
            if norm is not None and not math.isfinite(norm):
                raise GRBenchError(f"{description}: the gradient norm became {norm} {where} under a finite loss "
                                   f"(last steps {'; '.join(self.recent)}): the backward pass failed on this "
                                   "batch, a numerical fault of a kernel rather than a divergence (the weights "
                                   "are no longer finite). bf16=false runs float32 kernels instead (bf16 is in every "
                                   "stage's key: all of them train again)")
            self.last_finite = loss

    return Divergence()


def _checkpoint_step(folder: Path) -> int:
    return int(folder.name.rpartition("-")[2])


def _marked_checkpoints(output_dir: Path) -> list[Path]:
    """The epoch checkpoints that were saved whole (they hold the elapsed-time marker), newest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.glob("checkpoint-*") if p.name.rpartition("-")[2].isdigit()
             and (p / ELAPSED_FILE).is_file()]
    return sorted(found, key=_checkpoint_step, reverse=True)


def _elapsed_recorder(carried: dict[str, float]) -> Any:
    """Marks every epoch checkpoint as whole by writing the training time so far into it (so that a resumed
    stage reports it), then removes the older checkpoints: one marked checkpoint exists at every moment."""
    from transformers import TrainerCallback

    started = time.perf_counter()

    class Elapsed(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                cost = _cost(started)
                total = {key: carried[key] + cost[key] for key in cost}
                newest = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_atomically(newest / ELAPSED_FILE, json.dumps(total).encode())
                for older in Path(args.output_dir).glob("checkpoint-*"):
                    if older != newest:
                        shutil.rmtree(older, ignore_errors=True)

    return Elapsed()


def _last_checkpoint(output_dir: Path) -> tuple[str | None, dict[str, float]]:
    """The newest whole epoch checkpoint of an interrupted run of this stage, and the training time it had cost
    (a checkpoint killed while being saved has no marker and is passed over)."""
    marked = _marked_checkpoints(output_dir)
    if not marked:
        return None, {"wall_s": 0.0, "gpu_hours": 0.0}
    return str(marked[0]), json.loads((marked[0] / ELAPSED_FILE).read_text())


def train(model: Any, examples: Sequence[Example], collator: PaddingCollator, schedule: Schedule, *,
          settings: dict[str, Any], context: RunContext, folder: Path, description: str,
          callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Trains ``model`` in place with ``Trainer`` on this process's device; returns the training report.

    With ``settings["checkpoint_epochs"]`` the whole training state is saved after every epoch under
    ``folder/trainer``, and a stage killed mid-way continues from its last epoch when run again (its earlier
    training time carried into the run's cost)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    if not examples:
        raise GRBenchError(f"{description}: no training examples")
    output_dir = folder / TRAINER_DIR
    checkpoints = bool(settings["checkpoint_epochs"])
    resume_from, carried = _last_checkpoint(output_dir) if checkpoints else (None, {"wall_s": 0.0, "gpu_hours": 0.0})
    args = TrainingArguments(**trainer_arguments(schedule, settings, context, output_dir, checkpoints=checkpoints))
    counter = TokenCounter(collator_for(collator, liger=args.use_liger_kernel, compiled=args.torch_compile))
    trainer = Trainer(model=model, args=args, train_dataset=Examples(examples), data_collator=counter,
                      callbacks=[trainer_progress(context, description), divergence_guard(description),
                                 _elapsed_recorder(carried), *callbacks])
    profiler = step_profiler(description)  # GRBENCH_TORCH_PROFILE=<folder>: where a step's time goes
    if profiler is not None:
        trainer.add_callback(profiler)
    trainer.remove_callback(PrinterCallback)
    context.carry_over(carried["wall_s"], carried["gpu_hours"])
    use_cache = model.config.use_cache
    model.config.use_cache = False  # no KV cache while training (and no warning about it with checkpointing)
    began = time.perf_counter()
    try:
        with attention_without_cudnn():  # cuDNN's attention backward fails on left-padded batches
            result = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        model.config.use_cache = use_cache
    seconds = time.perf_counter() - began
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if is_main_process():
        shutil.rmtree(output_dir, ignore_errors=True)
    return {"examples": len(examples), "tokens": int(sum(len(e.input_ids) for e in examples)),
            "steps": int(trainer.state.global_step), "epochs": float(trainer.state.epoch or 0),
            "train_loss": float(result.training_loss), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "bf16": args.bf16,
            "processes": args.world_size,  # Trainer's own count: > 1 where it trained data-parallel
            "gradient_accumulation": args.gradient_accumulation_steps,
            "resumed_from": Path(resume_from).name if resume_from else None, "carried": carried,
            **throughput_report(model, counter, seconds)}


# what a stage's report gives the record's stage entry: its throughput (and the processes that trained it), GRPO's
# rewards (methods/onerec_think.py) and a warning the run prints at its end (bench.runner.stage_warnings)
STAGE_REPORT_IN_RECORD = ("processes", "tokens_per_s", "padding_share", "mfu", "mfu_with_attention", "first_reward",
                          "last_reward", "mean_reward", "mean_frac_reward_zero_std", "prompts_with_reward_spread",
                          "completions_clipped", "reward_never_varied", "warning")


def reported_in_record(report: dict[str, Any]) -> dict[str, Any]:
    """The keys of a stage's report that its record's stage entry keeps (:data:`STAGE_REPORT_IN_RECORD`)."""
    return {key: report[key] for key in STAGE_REPORT_IN_RECORD if key in report}


@dataclass
class TokenCounter:
    """Wraps a collator and counts the real (unpadded) and padded tokens of every batch it builds in this
    process, and the sum of its rows' squared real lengths (attention's FLOPs), for tokens/s, the padding share
    and MFU."""

    collator: Any
    real: int = 0
    padded: int = 0
    squared_lengths: int = 0

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        batch = self.collator(examples)
        mask = batch["attention_mask"]
        self.real += int(mask.sum())
        self.padded += mask.numel()
        self.squared_lengths += int((mask.sum(dim=-1) ** 2).sum())
        return batch


def throughput_report(model: Any, counter: TokenCounter, seconds: float) -> dict[str, Any]:
    """Training tokens/s of this process, the share of padding, and model FLOPs utilisation against the GPU's
    measured bf16 matrix rate (:mod:`bench.costs`; None on a CPU)."""
    parameters = model.num_parameters()  # tied input/output embeddings counted once, as the output projection
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops_per_token = training_flops_per_token(parameters, trainable)
    attention = attention_flops(*attention_shape(model), counter.squared_lengths)
    return {"tokens_per_s": counter.real / seconds if seconds > 0 else None,
            "padding_share": 1 - counter.real / counter.padded if counter.padded else None,
            "flops_per_token": flops_per_token, "attention_flops": attention,
            "bf16_matmul_tflops": bf16_matmul_tflops(),
            "mfu": model_flops_utilisation(counter.real, flops_per_token, seconds),
            "mfu_with_attention": model_flops_utilisation(counter.real, flops_per_token, seconds, attention)}


def attention_shape(model: Any) -> tuple[int, int]:
    """(layers, query heads x head width) of a transformers model (through a peft wrapper too); (0, 0) for a
    model without such a config, whose attention FLOPs then count as none."""
    config = getattr(model, "config", None)
    layers, heads = getattr(config, "num_hidden_layers", 0), getattr(config, "num_attention_heads", 0)
    if not layers or not heads:
        return 0, 0
    head_width = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(layers), int(heads * head_width)


# ------------------------------------------------------------------------------------------- checkpoints

def save_rows(folder: Path, model: Any, rows: np.ndarray) -> None:
    """Saves ``rows`` of the embedding matrices (input, and output when untied): all that CPT changes."""
    from safetensors.torch import save_file

    if not is_main_process():
        return
    index = torch.as_tensor(rows)
    tensors = {f"weight{n}": w.detach()[index.to(w.device)].cpu().contiguous()
               for n, w in enumerate(embedding_weights(model))}
    save_file({**tensors, "rows": index.cpu()}, str(folder / ROWS_FILE))


def load_rows(folder: Path, model: Any) -> None:
    """Puts rows saved by :func:`save_rows` back into a freshly expanded model."""
    from safetensors.torch import load_file

    saved = load_file(str(folder / ROWS_FILE))
    weights = embedding_weights(model)
    if len(saved) - 1 != len(weights):
        raise GRBenchError(f"{folder / ROWS_FILE} holds {len(saved) - 1} embedding matrices, the model has "
                           f"{len(weights)}; delete the folder to retrain the stage")
    with torch.no_grad():
        for n, weight in enumerate(weights):
            index = saved["rows"].to(weight.device)
            weight[index] = saved[f"weight{n}"].to(weight.device, weight.dtype)


def save_model(folder: Path, model: Any, tokenizer: Any) -> None:
    if is_main_process():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


# ------------------------------------------------------------------------------------------- the recipe

def _cost(started: float) -> dict[str, float]:
    elapsed = time.perf_counter() - started
    return {"wall_s": elapsed, "gpu_hours": elapsed * devices_in_use() / 3600}


class LLMRecipe:
    """What every LLM method does first: SIDs, backbone with SID vocabulary, CPT; and its stage bookkeeping.

    A method calls :meth:`semantic_ids`, then :meth:`stage` for each of its own stages (chained from
    :attr:`cpt`), and either :meth:`load_finished` (the last stage is cached) or :meth:`after_cpt` followed by
    its own training and :meth:`finish`.
    """

    def __init__(self, method: str, settings: dict[str, Any], context: RunContext, data: TrainData) -> None:
        if not data.has_text:
            raise GRBenchError(f"{method} needs item titles (its prompts describe items by text); dataset "
                               f"{data.dataset} has none")
        self.method, self.settings, self.context, self.data = method, settings, context, data
        self.sids: SemanticIds | None = None
        self.reports: dict[str, dict[str, Any]] = {}
        self.recorded: set[str] = set()  # stages already in this run's cost record

    def semantic_ids(self) -> SemanticIds:
        """The split's SIDs from item text (cached by bench.sid), timed as stage ``sids``. Under a distributed
        launch rank 0 builds them alone and the others load them from the cache: they do not train data-parallel."""
        with main_process_first():
            self.sids = semantic_ids_stage(self.data, llm_sid_config(self.settings), self.context)
        return self.sids

    def stage(self, name: str, setting_names: Sequence[str], *previous: StageCache) -> StageCache:
        """The cache of a stage determined by ``setting_names`` and everything before it (the ``previous``
        stages it starts from: SFT from CPT; PauseRec's implicit SFT from SFT and pause pretraining)."""
        assert self.sids is not None, "semantic_ids() first"
        key = {"sids": self.sids.fingerprint, "seed": self.context.seed,
               "settings": {setting: self.settings[setting] for setting in setting_names},
               "previous": [stage.digest for stage in previous]}
        return stage_cache(self.data, name, key)

    @property
    def cpt(self) -> StageCache:
        return self.stage("cpt", (*BACKBONE_SETTINGS, *SID_SETTINGS, *CPT_SETTINGS))

    @contextmanager
    def training(self, cache: StageCache, upstream: Sequence[StageCache]) -> Iterator[StageRun]:
        """Trains stage ``cache`` in this run (``with recipe.training(cache, [recipe.cpt]) as run: ...``): timed,
        its folder prepared (:meth:`StageCache.prepare`), and, when the block has set ``run.report`` and
        ``run.vocab``, recorded: its cost (with the time an interrupted attempt spent), the costs of the
        ``upstream`` stages it was built on, its report, and what :meth:`load_finished` needs to rebuild the
        vocabulary."""
        with stage_lock(cache, self.context):
            if cache.done:  # finished by the process whose lock this one waited for
                raise StageTrainedElsewhere(cache)
            self.recorded.add(cache.name)
            # the processes on the GPU while this stage trains: a run that reuses the stage later has no other way
            # to know that its carried time was measured on a shared GPU (GPU runs train three seeds side by side)
            with self.context.stage(cache.name) as stage_cost, GpuSharing() as sharing:
                started = time.perf_counter()
                run = StageRun(cache.prepare())
                yield run
                if run.vocab is None:
                    raise RuntimeError(f"stage {cache.name}: set run.vocab before the training block ends")
                # [name, cost] pairs in training order (stage.json is written with sorted keys, so not a dict)
                upstream_costs: dict[str, dict[str, float]] = {}
                for stage in upstream:
                    info = stage.info()
                    upstream_costs.update({**dict(info["upstream"]), stage.name: info["cost"]})
                carried = run.report.get("carried", {"wall_s": 0.0, "gpu_hours": 0.0})
                cost = {key: value + carried[key] for key, value in _cost(started).items()}
                # where it trained: a stage folder may be carried to another machine and reused there
                # (scripts/device/ brings CPT and pause rows back from the GPU and sends them to the next GPU run)
                cost["hardware"] = hardware()["label"]
                cost["gpu_processes_max"] = sharing.max_processes
                self.reports[cache.name] = {**run.report, "cached": False, "folder": str(cache.folder)}
                cache.finish({"cost": cost, "upstream": list(upstream_costs.items()), "report": run.report,
                              "original_rows": run.vocab.original_rows})
                stage_cost.extra.update(cached=False, **reported_in_record(run.report))

    @contextmanager
    def reused(self, name: str, cost: dict[str, float], report: dict[str, Any] | None = None,
               folder: Path | None = None) -> Iterator[None]:
        """A stage of this run that reuses a cached result: timed as usual, plus what training it once cost.
        A stage already in this run's record (CPT reached through two later stages) is not counted twice."""
        if name in self.recorded:
            yield
            return
        self.recorded.add(name)
        with self.context.stage(name) as record:
            self.context.carry_over(cost["wall_s"], cost["gpu_hours"])
            record.extra.update(cached=True)
            if "hardware" in cost:  # stages cached before it was recorded have none
                record.extra.update(trained_on=cost["hardware"])
            if cost.get("gpu_processes_max"):  # nor this (stages from before GPU run 6)
                record.extra.update(trained_shared_by=cost["gpu_processes_max"])
            if report is not None:
                self.reports[name] = {**report, "cached": True, "folder": str(folder)}
                # what the stage measured travels with every run built on it: a GRPO stage whose reward never
                # varied is flagged in each record that reuses it, not only in the one that trained it
                record.extra.update(reported_in_record(report))
            yield

    def load_finished(self, cache: StageCache) -> tuple[Any, Any, SidVocabulary]:
        """A cached final stage: its model, and every stage's cost carried into this run's record."""
        info = cache.info()
        for name, cost in info["upstream"]:
            with self.reused(name, cost):
                pass
        with self.reused(cache.name, info["cost"], info["report"], cache.folder):
            model, tokenizer = self.load_model(cache.folder)
        return model, tokenizer, vocabulary_of(tokenizer, self.sids, info["original_rows"])

    def load_model(self, folder: Path) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[self.settings["dtype"]])
        return model.to(device_of(self.context)), tokenizer

    def after_cpt(self) -> tuple[Any, Any, SidVocabulary]:
        """Backbone + SID vocabulary + CPT (trained, or its rows loaded from the cache), timed as stage ``cpt``."""
        cache = self.cpt
        if cache.done:
            info = cache.info()
            with self.reused("cpt", info["cost"], info["report"], cache.folder):
                model, tokenizer, vocab = self.expanded_backbone()
                load_rows(cache.folder, model)
        else:
            with self.training(cache, ()) as run:
                model, tokenizer, vocab = self.expanded_backbone()
                run.report = self.train_cpt(model, tokenizer, vocab, run.folder)
                save_rows(run.folder, model, vocab.grounding_ids)
                run.vocab = vocab
        return model.to(device_of(self.context)), tokenizer, vocab

    def expanded_backbone(self) -> tuple[Any, Any, SidVocabulary]:
        """The profile's backbone with the SID vocabulary added (new rows at the mean embedding)."""
        assert self.sids is not None, "semantic_ids() first"
        model, tokenizer = load_backbone(self.settings["backbone"], dtype=self.settings["dtype"],
                                         seed=self.context.seed)
        return model, tokenizer, expand_vocabulary(model, tokenizer, self.sids, seed=self.context.seed)

    def cpt_lines(self) -> list[str]:
        return [line for _, line in self.cpt_rows()]

    def cpt_rows(self) -> list[tuple[int | None, str]]:
        """The CPT corpus's lines with the user each was written from (None for item lines)."""
        s = self.settings
        return cpt_corpus_rows(self.data, self.sids, corpus=s["cpt_corpus"], items_per_line=s["cpt_items_per_line"],
                               item_lines=s["cpt_item_lines"])

    def cpt_training_examples(self, tokenizer: Any) -> list[Example]:
        """The CPT corpus as CPT trains on it: one example per line of :meth:`cpt_rows`, in order."""
        return cpt_examples(tokenizer, self.cpt_lines(), self.settings["cpt_max_length"])

    def train_cpt(self, model: Any, tokenizer: Any, vocab: SidVocabulary, folder: Path) -> dict[str, Any]:
        """Item grounding: language modelling over the CPT corpus, only the SID and marker rows train."""
        s = self.settings
        examples = self.cpt_training_examples(tokenizer)
        schedule = Schedule.of(s, "cpt")
        with only_rows_trainable(model, vocab.grounding_ids) as trainable:
            report = train(model, examples, PaddingCollator(pad_token_id(tokenizer)), schedule, settings=s,
                           context=self.context, folder=folder, description="CPT steps")
        return {**report, "trainable_values": trainable, "corpus": s["cpt_corpus"]}

    def sft_examples(self, tokenizer: Any, vocab: SidVocabulary, loss_tokens: str) -> list[Example]:
        return [sft_example(tokenizer, self.sids, vocab, history, target, self.settings["max_history"], loss_tokens)
                for history, target in next_item_pairs(self.data, self.settings["sft_targets"])]


def llm_sid_config(settings: dict[str, Any]) -> SidConfig:
    """The SIDs an LLM method's settings ask for: from item text (its prompts describe items by text), built as
    :data:`methods.llm.config.SID_SETTINGS` say. scripts/device/sids.py builds them ahead of a GPU run through this
    same function, so that the run finds them cached."""
    return SidConfig(quantizer=settings["sid_quantizer"], codebook_size=settings["sid_codebook_size"],
                     epochs=settings["sid_epochs"], source="text")


def with_lora(model: Any, settings: dict[str, Any]) -> Any:
    """Wraps ``model`` in LoRA adapters on every linear layer (``lora=true``; needs peft)."""
    try:
        import peft
    except ImportError:
        raise GRBenchError("lora=true needs peft: pip install -c requirements/cpu-constraints.txt peft==0.21.2") \
            from None
    config = peft.LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"],
                             lora_dropout=settings["lora_dropout"], target_modules="all-linear", task_type="CAUSAL_LM")
    wrapped = peft.get_peft_model(model, config)
    if settings["gradient_checkpointing"]:
        wrapped.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return wrapped
