"""The padded width of every optimizer step of an LLM stage, in the order ``Trainer`` feeds it, without training.

Why: GPU runs 2 and 4 found PauseRec's implicit SFT diverge (NaN gradients, finite loss) at one step per seed, the
same on every retry. cuDNN's attention backward (torch 2.11+, H100/H200; pytorch#196678) returns NaN query
gradients when a mask is passed, the width is 64 past a multiple of 128, and a query row attends to nothing, as
left padding's pad rows do. This script lists the steps whose width is 64 past a multiple of 128: for the
``small`` recipe on ml-100k the first of them is, for each seed, the step that diverged (seeds 0, 1, 2: steps
44, 42, 115), which is why every stage now trains without that kernel (:func:`bench.compat.attention_without_cudnn`).

    python benchmarks/batch_widths.py --stage implicit_sft --seed 1    # about 1.5 minutes on 2 CPU cores

It builds the stage's examples as the method does (SIDs, expanded vocabulary, prompts) and walks ``Trainer``'s
own data loader (its seed, length grouping and epochs); nothing trains. The micro-batch is the stage's batch,
as on a GPU with the recipe's ``micro_batch_size``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("sft", "implicit_sft")
TILE = 128  # cuDNN's key tile: widths of TILE * n + TILE / 2 fail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--profile", default="small")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stage", choices=STAGES, default="implicit_sft",
                        help="sft (the sft method's stage) or implicit_sft (pauserec's)")
    parser.add_argument("--epochs", type=int, default=0, help="walk this many epochs (0: the stage's own)")
    args = parser.parse_args(argv)
    if args.epochs < 0:
        parser.error("--epochs must be 0 (the stage's) or more")
    widths = step_widths(args)
    failing = [step for step, width in enumerate(widths, start=1) if width % TILE == TILE // 2]
    print(f"{args.stage} on {args.dataset} ({args.profile}), seed {args.seed}: {len(widths)} optimizer steps, "
          f"widths {min(widths)}-{max(widths)} (median {int(np.median(widths))})")
    print(f"steps {TILE // 2} past a multiple of {TILE} wide: "
          + (", ".join(f"{step} ({widths[step - 1]})" for step in failing) if failing else "none"))
    return 0


def step_widths(args: argparse.Namespace) -> list[int]:
    """The width of each optimizer step (one micro-batch a step, as the recipe's GPU runs take them)."""
    from bench.data import load_dataset
    from bench.registry import RunContext
    from bench.split import leave_last_out
    from methods.llm.stages import PaddingCollator, Schedule, pad_token_id
    from methods.pauserec import PauseRec
    from methods.sft import NextItemSFT

    method_class = PauseRec if args.stage == "implicit_sft" else NextItemSFT
    settings = method_class.settings_for(args.profile, {})
    schedule = Schedule.of(settings, "isft" if args.stage == "implicit_sft" else "sft")
    if args.epochs:
        schedule = replace(schedule, epochs=args.epochs)
    settings["micro_batch_size"] = schedule.batch_size  # one micro-batch a step, as the recipe on a GPU
    context = RunContext(seed=args.seed, profile=args.profile, device="cpu",
                         cache_dir=Path(tempfile.mkdtemp(prefix="grbench-widths-")), log=print)
    data = leave_last_out(load_dataset(args.dataset)).train_view()
    method = method_class(settings, context)
    method.training_inputs(data)  # SIDs, tokenizer and vocabulary, as fit builds them; nothing trains
    if args.stage == "implicit_sft":
        examples = method.implicit_sft_examples(data)
    else:
        examples = method.recipe.sft_examples(method.tokenizer, method.vocab, settings["sft_loss_tokens"])
    model, _, _ = method.recipe.expanded_backbone()
    collator = PaddingCollator(pad_token_id(method.tokenizer), left=True)
    return loader_widths(model, examples, collator, schedule, settings, context)


def loader_widths(model: Any, examples: Sequence[Any], collator: Any, schedule: Any, settings: dict[str, Any],
                  context: Any) -> list[int]:
    """The width of every micro-batch ``methods.llm.stages.train`` would feed, in order: ``Trainer``'s own data
    loader over the schedule's epochs, cut at ``max_steps`` (tests/test_batch_widths_benchmark.py checks the
    order against a real ``train``)."""
    from transformers import Trainer, TrainingArguments

    from methods.llm.stages import Examples, collator_for, trainer_arguments

    trainer_args = TrainingArguments(**trainer_arguments(schedule, settings, context, context.cache_dir))
    collator = collator_for(collator, liger=trainer_args.use_liger_kernel, compiled=trainer_args.torch_compile)
    trainer = Trainer(model=model, args=trainer_args, train_dataset=Examples(examples), data_collator=collator)
    loader = trainer.get_train_dataloader()
    widths: list[int] = []
    for _ in range(int(schedule.epochs)):  # each pass reseeds its sampler by the pass's number, as Trainer's epochs
        widths.extend(int(batch["input_ids"].shape[1]) for batch in loader)
    if schedule.max_steps > 0:
        widths = widths[:schedule.max_steps * trainer_args.gradient_accumulation_steps]
    return widths

if __name__ == "__main__":
    sys.exit(main())
