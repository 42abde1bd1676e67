"""How fast PauseRec's pause pretraining lengthens the ``<pause>`` row, from a CPT stage that is already trained.

Why: in GPU run 2 PauseRec's implicit SFT became NaN (seed 1, step 43 of 295) after pause pretraining. With
tied embeddings the pause row is also an output row that is never a target, so the study's learning rate
(1e-3, AdamW) pushes its logit down at every position, and an overlong row was the first suspect
(docs/llm-on-gpu.md). This script runs the first ``--steps`` steps of the ``pause`` stage exactly as the
``pauserec`` method does (same corpus, initialisation, trainable row and learning rate), on this machine, and
prints the pause row's L2 norm beside the mean norm of the backbone's own rows every ``--every`` steps. It
reads the CPT stage from ``results/stages`` (where the GPU runs' CPT stages are committed) or trains it first
when missing, in a cache of its own; it writes nothing else.

    python benchmarks/pause_row.py --seed 1 --steps 40 --batch 4    # about 6 minutes on 2 CPU cores

``--batch`` lines a step (the ``small`` recipe's is 32: fine on a GPU, slow on a CPU). Adam moves each
coordinate by about the learning rate a step whatever the batch, but a smaller batch's noisier gradient
points less consistently, so on a CPU the growth is a lower bound of the recipe's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--profile", default="small")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40, help="pause steps to run")
    parser.add_argument("--batch", type=int, default=4, help="lines a step (the small recipe: 32)")
    parser.add_argument("--every", type=int, default=5, help="print the norms every this many steps")
    parser.add_argument("--stages", type=Path, default=ROOT / "results" / "stages",
                        help="trained stages to start from (copied into a temporary cache)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if min(args.steps, args.batch, args.every) < 1:
        parser.error("--steps, --batch and --every must be at least 1")

    cache = Path(tempfile.mkdtemp(prefix="grbench-pause-row-"))
    if args.stages.is_dir():
        shutil.copytree(args.stages, cache, dirs_exist_ok=True)
    os.environ["GRBENCH_CACHE"] = str(cache)  # read by bench.paths.cache_dir at every call
    try:
        return run(args, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run(args: argparse.Namespace, cache: Path) -> int:
    from transformers import TrainerCallback

    from bench.data import load_dataset
    from bench.registry import RunContext
    from bench.split import leave_last_out
    from methods.llm.stages import LLMRecipe, PaddingCollator, Schedule, only_rows_trainable, pad_token_id, train
    from methods.pauserec import PauseRec, init_pause, pause_corpus, pause_row_norms

    settings = PauseRec.settings_for(args.profile, {"pause_batch_size": str(args.batch),
                                                    "micro_batch_size": str(args.batch)})
    context = RunContext(seed=args.seed, profile=args.profile, device=args.device, cache_dir=cache / "run",
                         log=print)
    data = leave_last_out(load_dataset(args.dataset)).train_view()
    recipe = LLMRecipe("pauserec", settings, context, data)
    recipe.semantic_ids()
    print(f"CPT stage {recipe.cpt.folder.name}: {'from ' + str(args.stages) if recipe.cpt.done else 'trained now'}")
    model, tokenizer, vocab = recipe.after_cpt()
    init_pause(model, vocab, tokenizer, "pretrained", args.seed)

    def show(step: int) -> None:
        norms = pause_row_norms(model, vocab)
        print(f"step {step:>4}: pause row norm {norms['pause_row_norm']:.4f}, mean token row norm "
              f"{norms['mean_token_row_norm']:.4f}", flush=True)

    class NormsThenStop(TrainerCallback):
        def on_step_end(self, arguments, state, control, **kwargs):
            if state.global_step % args.every == 0 or state.global_step == args.steps:
                show(state.global_step)
            control.should_training_stop = state.global_step >= args.steps

    examples = pause_corpus(recipe, tokenizer, vocab)
    # the recipe's learning-rate schedule (linear decay over the whole stage at its own batch size), stopped early
    recipe_batch = PauseRec.settings_for(args.profile, {})["pause_batch_size"]
    recipe_steps = settings["pause_epochs"] * -(-len(examples) // recipe_batch)
    print(f"{len(examples)} pause lines; the recipe's stage: {recipe_steps} steps of {recipe_batch}; "
          f"here the first {args.steps} of that schedule, {args.batch} lines a step")
    show(0)
    schedule = replace(Schedule.of(settings, "pause"), max_steps=recipe_steps)  # its batch: --batch
    with only_rows_trainable(model, [vocab.pause_id]):
        train(model, examples, PaddingCollator(pad_token_id(tokenizer)), schedule, settings=settings,
              context=context, folder=cache / "pause", description="pause steps", callbacks=[NormsThenStop()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
