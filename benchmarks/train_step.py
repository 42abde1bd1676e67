"""What bounds an LLM training step: the same batches timed under the recipe's kernels and the alternatives.

GPU run 3 found SmolLM2's training steps far below the GPU (CPT at 2.2% MFU, and three trainers sharing one H200
each as fast as one alone), which points at the CPU launching kernels rather than at the GPU computing them.
This script measures that directly, outside ``Trainer``: for each variant and batch size it times ``--steps``
optimizer steps (forward, backward, AdamW) on random batches of ``--length`` tokens after warm-up steps, and
prints tokens/s, MFU against the GPU's measured bf16 matrix rate and the *launch share*: the part of a step the
CPU spends issuing it before the GPU is waited for (near 100%: the GPU waits for Python; low: the GPU is busy).

Variants (``--variants``, comma-separated):

- ``recipe``: float32 weights with bf16 autocast, as the ``small`` profile trains (float32 alone on a CPU);
- ``bf16``: bfloat16 weights, no autocast (fewer casts; a different optimiser numerically, for speed only);
- ``liger``: the recipe with Liger's fused kernels, applied as ``Trainer`` applies them (``liger=true``; CUDA);
- ``compile``: the recipe with ``torch.compile`` (CUDA; the first steps compile and are not timed).

``--train embeddings`` trains only the SID rows of the embeddings, as CPT and pause pretraining do; ``all`` every
parameter, as SFT does. Comparing its tokens/s with the MFU benchmark of ``scripts/device/run.sh`` (the same
model through ``Trainer``) shows what ``Trainer`` adds.

    python benchmarks/train_step.py --batch 2 --length 32 --steps 2                # tiny random Qwen3, a CPU
    python benchmarks/train_step.py --model smollm2 --batch 16,64 --length 400     # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compat import attention_without_cudnn  # noqa: E402
from bench.costs import (  # noqa: E402
    attention_flops,
    bf16_matmul_tflops,
    model_flops_utilisation,
    synchronize,
    training_flops_per_token,
)
from benchmarks.decode import SID_LEVELS, add_sid_tokens, batch_sizes, smollm2, tiny_qwen3  # noqa: E402
from methods.llm.stages import attention_shape, only_rows_trainable  # noqa: E402

VARIANTS = ("recipe", "bf16", "liger", "compile")
MODELS: dict[str, Callable[[int], torch.nn.Module]] = {
    "tiny": tiny_qwen3, "smollm2": lambda seed: smollm2(), "narrow": lambda seed: narrow_smollm2(seed)}
CUDA_ONLY = ("liger", "compile")


def variant_names(text: str) -> list[str]:
    """``"recipe,liger"`` -> ``["recipe", "liger"]``, each one of :data:`VARIANTS`, for ``--variants``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(VARIANTS)}, got {text!r}")
    return names


def prepared(base: torch.nn.Module, variant: str, device: torch.device) -> tuple[torch.nn.Module, Callable]:
    """A fresh copy of ``base`` on ``device`` set up for ``variant``, and the context its forward runs in."""
    model = copy.deepcopy(base)
    if variant == "bf16":
        model.to(torch.bfloat16)
    model.to(device).train()
    model.config.use_cache = False
    if variant == "liger":
        from transformers.integrations.liger import apply_liger_kernel

        apply_liger_kernel(model, {})
    if variant == "compile":
        model = torch.compile(model)
    autocast = variant != "bf16" and device.type == "cuda"  # the recipe's mixed precision (bf16=true on a GPU)
    return model, lambda: torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()


def narrow_smollm2(seed: int) -> torch.nn.Module:
    """A random model of SmolLM2-135M's shape (30 Llama layers, 9 query and 3 key-value heads, tied embeddings,
    49,152 tokens) at width 72 instead of 576: as many operators a step as SmolLM2, few FLOPs, so a CPU counts
    what a step issues."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=72, intermediate_size=192, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(config)


# operators that only make views of a tensor or allocate one: no kernel runs for them on a GPU
VIEWS_AND_ALLOCATIONS = {f"aten::{name}" for name in (
    "as_strided", "view", "_unsafe_view", "reshape", "_reshape_alias", "transpose", "t", "permute", "expand",
    "slice", "select", "unsqueeze", "squeeze", "alias", "detach", "unflatten", "split", "split_with_sizes", "chunk",
    "narrow", "lift_fresh", "empty", "empty_strided", "empty_like", "resize_")}


def operators_a_step(model: torch.nn.Module, forward_context: Callable, batch: dict[str, torch.Tensor],
                     optimizer: torch.optim.Optimizer) -> tuple[int, int, int | None]:
    """One more step under torch.profiler: (operator calls, the innermost of them that compute rather than view
    or allocate, GPU kernels or None on a CPU). On a GPU each computing operator launches a kernel."""
    from torch.profiler import ProfilerActivity, profile

    cuda = batch["input_ids"].is_cuda
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as profiler:
        one_step(model, forward_context, batch, optimizer)
        synchronize()
    operators = [event for event in profiler.events() if event.name.startswith("aten::")]
    # an operator that calls others (linear -> mm, to -> copy_) launches nothing itself: count the innermost ones
    innermost = [event for event in operators if not any(child.name.startswith("aten::")
                                                         for child in event.cpu_children)]
    calls = len(operators)
    computing = sum(1 for event in innermost if event.name not in VIEWS_AND_ALLOCATIONS)
    kernels = sum(1 for event in profiler.events() if event.device_type == torch.autograd.DeviceType.CUDA) \
        if cuda else None
    return calls, computing, kernels


def one_step(model: torch.nn.Module, forward_context: Callable, batch: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer) -> None:
    with forward_context():
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_steps(model: torch.nn.Module, forward_context: Callable, batch: dict[str, torch.Tensor],
               optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> tuple[float, float]:
    """Seconds per step (synchronised) and the share of it the CPU spent issuing the step's work."""
    issued = total = 0.0
    for step in range(warmup + steps):
        synchronize()
        began = time.perf_counter()
        one_step(model, forward_context, batch, optimizer)
        launched = time.perf_counter()
        synchronize()
        if step >= warmup:
            issued += launched - began
            total += time.perf_counter() - began
    return total / steps, issued / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="tiny",
                        help="narrow: SmolLM2's 30 layers at width 72, to count its operators on a CPU")
    parser.add_argument("--batch", type=batch_sizes, default=[16], help="examples a step; comma-separated for several")
    parser.add_argument("--length", type=int, default=400, help="tokens an example (ml-100k's CPT lines: about 380)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile's steps among them)")
    parser.add_argument("--train", choices=["embeddings", "all"], default="embeddings")
    parser.add_argument("--variants", type=variant_names, default=list(VARIANTS))
    parser.add_argument("--codes", type=int, default=256, help="SID codes a level (rows added to the vocabulary)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    args = parser.parse_args(argv)
    if args.length < 2 or args.steps < 1 or args.warmup < 0:
        parser.error("--length must be at least 2, --steps at least 1 and --warmup at least 0")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    base = MODELS[args.model](args.seed)
    vocabulary = base.get_input_embeddings().num_embeddings
    add_sid_tokens(base, SID_LEVELS * args.codes, args.seed)
    sid_rows = list(range(vocabulary, vocabulary + SID_LEVELS * args.codes))
    parameters = base.num_parameters()
    rate = bf16_matmul_tflops() if device.type == "cuda" else None
    print(f"model: {args.model} ({parameters / 1e6:.1f} M parameters), device {device}, training {args.train}, "
          f"{args.length} tokens an example, bf16 matmul rate "
          f"{'n/a' if rate is None else f'{rate:.0f} TFLOP/s'}")
    generator = torch.Generator().manual_seed(args.seed)
    with attention_without_cudnn():  # the attention kernels every training stage runs with
        time_variants(args, base, sid_rows, parameters, rate, vocabulary, device, generator)
    return 0


def time_variants(args: argparse.Namespace, base: torch.nn.Module, sid_rows: list[int], parameters: int,
                  rate: float | None, vocabulary: int, device: torch.device, generator: torch.Generator) -> None:
    """Times each variant at each batch size and prints a line for it."""
    for variant in args.variants:
        if variant in CUDA_ONLY and device.type != "cuda":
            print(f"{variant}: skipped (needs a CUDA GPU)")
            continue
        for size in args.batch:
            ids = torch.randint(3, vocabulary, (size, args.length), generator=generator).to(device)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
            model, forward_context = prepared(base, variant, device)
            with only_rows_trainable(model, sid_rows) if args.train == "embeddings" else contextlib.nullcontext():
                trainable = [p for p in model.parameters() if p.requires_grad]
                optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0)
                seconds, launch_share = time_steps(model, forward_context, batch, optimizer, args.steps, args.warmup)
                calls, computing, kernels = operators_a_step(model, forward_context, batch, optimizer)
            tokens = size * args.length
            flops = training_flops_per_token(parameters, sum(p.numel() for p in trainable))
            attention = attention_flops(*attention_shape(base), size * args.length ** 2)
            mfu = model_flops_utilisation(tokens, flops, seconds) if rate is not None else None
            with_attention = model_flops_utilisation(tokens, flops, seconds, attention) if rate is not None else None
            print(f"{variant:>8} batch {size:>4}: {1000 * seconds:9.1f} ms/step {tokens / seconds:11.0f} tokens/s  "
                  f"MFU {'n/a' if mfu is None else f'{100 * mfu:5.1f}%'} "
                  f"({'n/a' if with_attention is None else f'{100 * with_attention:5.1f}%'} with attention)  "
                  f"launch share {launch_share:4.0%}  "
                  f"operators {calls} ({computing} computing)" + ("" if kernels is None else f", {kernels} kernels"))
            del model, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
