"""Settings every LLM method shares (backbone, SIDs, CPT, batching, decoding), per profile.

A method's profiles are these plus its own stage settings (:func:`llm_profiles`); every key can be overridden
on the command line (``sft:backbone=/models/qwen3,cpt_epochs=1``). CPT settings have the same names and
defaults in every LLM method, so that ``sft`` and ``pauserec`` find and reuse one CPT checkpoint.

Batch sizes are global (examples per optimizer step, over all GPUs): at most ``micro_batch_size`` examples go
through one device at a time and gradients are accumulated to the global size, so the recipe is the same on one
GPU and under ``accelerate launch`` on eight (a stage whose batch per device is smaller takes it whole).
``*_max_steps`` > 0 caps a stage's optimizer steps (the CPU budget of ``quick``); 0 trains the full ``*_epochs``.
``group_by_length`` batches examples of similar length together (Trainer's length-grouped sampler; random order
otherwise), which cuts the compute spent on padding. ``dtype`` is the weights' dtype; ``bf16`` adds bf16 mixed
precision where the GPU supports it (never on a CPU, where it is slower). ``liger`` swaps the backbone's normalisation,
rotary, MLP and output-layer-plus-loss for Liger's fused Triton kernels (``liger-kernel``; on a CUDA GPU only,
ignored on a CPU like ``bf16``): the same computation up to rounding, without the full-vocabulary logits in
memory, for throughput (issue 7's MFU target); off by default until a GPU run has compared it. ``compile``
(``off``, or a ``torch.compile`` mode: ``default``, ``reduce-overhead`` with CUDA graphs, ``max-autotune``, ...)
has Trainer compile the model, on any device, with batch widths padded to few shapes: SmolLM2's eager steps
are bound by issuing thousands of small operators from Python (docs/llm-on-gpu.md), which compiling fuses and
CUDA graphs replay at once. Like ``liger`` and ``micro_batch_size`` it changes no result beyond rounding, so it
stays out of the stage keys.
``decode_graphs`` picks how recommendations are decoded (``bench.decode.constrained_beam_search``'s ``graphs``):
``auto`` (default) runs each beam-search forward as one CUDA-graph replay over a static KV cache on a GPU and the
dynamic cache elsewhere, ``on`` the static cache everywhere (eagerly on a CPU), ``off`` the dynamic cache; the
same lists up to rounding, so it stays out of the stage keys too (issue 44.3).
``checkpoint_epochs`` saves the whole training state after every epoch, so that a stage killed mid-way resumes
there (GPU profiles; on a CPU a SmolLM2 checkpoint, weights and AdamW state, costs more than the few steps it
protects).
"""

from __future__ import annotations

from typing import Any

from bench.errors import GRBenchError
from methods.llm.backbone import DTYPES, PAPER_BACKBONE, SMOLLM2, TINY, short_name
from methods.llm.prompts import CPT_CORPORA

SHARED: dict[str, dict[str, Any]] = {
    # seconds: a tiny random Qwen3, a few optimizer steps per stage
    "smoke": {
        "backbone": TINY, "dtype": "float32", "bf16": False,
        "sid_quantizer": "rkmeans", "sid_codebook_size": 256, "sid_epochs": 5,
        "max_history": 5, "micro_batch_size": 4, "gradient_checkpointing": False, "checkpoint_epochs": False,
        "group_by_length": True, "liger": False, "compile": "off",
        "cpt_corpus": "train", "cpt_item_lines": True, "cpt_items_per_line": 3, "cpt_max_length": 256,
        "cpt_epochs": 1, "cpt_lr": 1e-3, "cpt_batch_size": 4, "cpt_max_steps": 3,
        "beam_width": 10, "infer_batch_size": 16, "decode_graphs": "auto",
    },
    # the 2-core CPU budget: a SmolLM2 step of 4 CPT lines takes ~2.5 s on 2 quiet cores (2-5x that on a busy
    # machine), so tens of steps a stage, short histories, and a higher CPT learning rate so that so few steps move
    # the new rows at all; the main job (every method, ml-100k, 200 test users) must stay under 30 minutes
    "quick": {
        "backbone": SMOLLM2, "dtype": "float32", "bf16": False,
        "sid_quantizer": "rqvae", "sid_codebook_size": 256, "sid_epochs": 200,
        "max_history": 5, "micro_batch_size": 4, "gradient_checkpointing": False, "checkpoint_epochs": False,
        "group_by_length": True, "liger": False, "compile": "off",
        "cpt_corpus": "train", "cpt_item_lines": True, "cpt_items_per_line": 3, "cpt_max_length": 160,
        "cpt_epochs": 1, "cpt_lr": 1e-3, "cpt_batch_size": 4, "cpt_max_steps": 30,
        "beam_width": 10, "infer_batch_size": 16, "decode_graphs": "auto",
    },
    # the study's recipe with SmolLM2 on one GPU: 3 CPT epochs at 1e-4. Micro-batches of 32, so that CPT and pause
    # pretraining take their 32 lines in one forward: SmolLM2's steps are bound by launching kernels (GPU run 3:
    # 30 CPT steps of 64 lines in one forward each, with Liger's kernels, took 11 s; 30 of 32 lines in two forwards
    # 21 s). Trainer's length-grouped order (by global batch) and its token-mean loss over accumulated
    # micro-batches make it the same step up to rounding. Memory about doubles (CPT peaked at 14.3 GB with 16)
    "small": {
        "backbone": SMOLLM2, "dtype": "float32", "bf16": True,
        "sid_quantizer": "rqvae", "sid_codebook_size": 256, "sid_epochs": 200,
        "max_history": 50, "micro_batch_size": 32, "gradient_checkpointing": False, "checkpoint_epochs": True,
        "group_by_length": True, "liger": False, "compile": "off",
        "cpt_corpus": "train", "cpt_item_lines": True, "cpt_items_per_line": 20, "cpt_max_length": 1024,
        "cpt_epochs": 3, "cpt_lr": 1e-4, "cpt_batch_size": 32, "cpt_max_steps": 0,
        "beam_width": 10, "infer_batch_size": 16, "decode_graphs": "auto",
    },
    # the study: Qwen3-1.7B (float32 master weights, bf16 mixed precision), whole purchase sequences per CPT line
    # (truncated at 4096 tokens, as OneRec-Think's alignment script), global batch 64 (its 8 GPUs x 8)
    "paper": {
        "backbone": PAPER_BACKBONE, "dtype": "float32", "bf16": True,
        "sid_quantizer": "rqvae", "sid_codebook_size": 256, "sid_epochs": 200,
        "max_history": 50, "micro_batch_size": 4, "gradient_checkpointing": True, "checkpoint_epochs": True,
        "group_by_length": True, "liger": False, "compile": "off",
        "cpt_corpus": "train", "cpt_item_lines": True, "cpt_items_per_line": 0, "cpt_max_length": 4096,
        "cpt_epochs": 3, "cpt_lr": 1e-4, "cpt_batch_size": 64, "cpt_max_steps": 0,
        "beam_width": 10, "infer_batch_size": 16, "decode_graphs": "auto",
    },
}

# What determines the SIDs and the CPT checkpoint (its cache key); the rest are hardware or later-stage knobs.
SID_SETTINGS = ("sid_quantizer", "sid_codebook_size", "sid_epochs")
# group_by_length changes the order examples are batched in, so it decides every checkpoint from CPT on
BACKBONE_SETTINGS = ("backbone", "dtype", "bf16", "gradient_checkpointing", "group_by_length")
CPT_SETTINGS = ("cpt_corpus", "cpt_item_lines", "cpt_items_per_line", "cpt_max_length", "cpt_epochs", "cpt_lr",
                "cpt_batch_size", "cpt_max_steps")

# decode_graphs -> constrained_beam_search's graphs: auto (None) is CUDA graphs on a GPU, the dynamic cache elsewhere
DECODE_GRAPHS: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def decode_graphs(settings: dict[str, Any]) -> bool | None:
    """The ``graphs`` argument of ``constrained_beam_search`` that the ``decode_graphs`` setting asks for."""
    return DECODE_GRAPHS[settings.get("decode_graphs", "auto")]


def llm_profiles(own: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each profile's shared settings plus the method's own (``own[profile]``)."""
    return {profile: {**shared, **own.get(profile, {})} for profile, shared in SHARED.items()}


def check_shared_settings(method: str, settings: dict[str, Any]) -> None:
    """Rejects impossible shared settings before any work starts."""
    if settings["dtype"] not in DTYPES:
        raise GRBenchError(f"{method}: dtype {settings['dtype']!r}: expected one of {', '.join(DTYPES)}")
    if settings["cpt_corpus"] not in CPT_CORPORA:
        raise GRBenchError(f"{method}: cpt_corpus {settings['cpt_corpus']!r}: expected one of {', '.join(CPT_CORPORA)}"
                           " (paper: the study's corpus, which also lists each user's validation item)")
    if settings.get("decode_graphs", "auto") not in DECODE_GRAPHS:
        raise GRBenchError(f"{method}: decode_graphs {settings['decode_graphs']!r}: expected one of "
                           f"{', '.join(DECODE_GRAPHS)}")
    if settings["beam_width"] < 10:
        raise GRBenchError(f"{method}: beam_width must be at least 10 (the top-10 list), got {settings['beam_width']}")
    positive = [key for key, value in settings.items()
                if key.endswith(("batch_size", "_epochs", "_lr", "_max_length")) and not isinstance(value, bool)]
    for key in positive:
        if settings[key] <= 0:
            raise GRBenchError(f"{method}: {key} must be positive, got {settings[key]}")
    from methods.llm.stages import Schedule, compile_mode, micro_batches  # stages imports this module

    try:
        compile_mode(settings)
    except GRBenchError as error:
        raise GRBenchError(f"{method}: {error}") from None

    for stage in {key.split("_")[0] for key in settings if key.endswith("_batch_size")} - {"infer", "micro"}:
        try:  # the rule training applies, checked before any work starts
            micro_batches(Schedule(lr=1.0, epochs=1, batch_size=settings[f"{stage}_batch_size"]),
                          settings["micro_batch_size"])
        except GRBenchError as error:
            raise GRBenchError(f"{method}: {stage}_batch_size: {error}") from None


def shared_variant(settings: dict[str, Any], stage_steps: tuple[str, ...]) -> list[str]:
    """Words for the leaderboard: backbone, a capped step budget, a corpus that sees validation items."""
    words = [short_name(settings["backbone"])]
    capped = [f"{stage.upper()} {settings[f'{stage}_max_steps']}" for stage in stage_steps
              if settings[f"{stage}_max_steps"] > 0]
    if capped:
        words.append(" + ".join(capped) + " steps")
    if settings["cpt_corpus"] == "paper":
        words.append("study's CPT corpus (sees validation items)")
    if settings["sft_targets"] != 1:
        words.append(f"{settings['sft_targets']} SFT targets a user")
    return words
