"""Whether this machine's ``scaled_dot_product_attention`` backward returns NaN on masked rows that attend to
nothing (pytorch#196678: cuDNN's kernel, H100/H200, torch 2.11+, widths 64 past a multiple of 128), with torch's
default kernels and inside :func:`bench.compat.attention_without_cudnn`, which every LLM training stage uses.

    python benchmarks/sdpa_backward.py    # a few seconds on a GPU

It runs left-padded attention as the training stages do (a causal mask, the first rows of one sequence
padding that attends to nothing), SmolLM2's head size, in bf16, and prints the non-finite query gradients per
width. On a CPU it runs the same in float32 (no cuDNN there: a check of the script itself).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def left_padded_query_gradient(width: int, padding: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The query gradient of one attention over two rows, the second left-padded by ``padding`` positions."""
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (2, 9, width, 64)  # SmolLM2: 9 query heads of 64
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=generator) for _ in range(3))
    q.requires_grad_()
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    keys = torch.ones(2, width, dtype=torch.bool, device=device)
    keys[1, :padding] = False  # the pad rows of the second sequence attend to nothing
    mask = causal[None, None] & keys[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.backward(torch.randn(out.shape, device=device, dtype=dtype, generator=generator))
    return q.grad


def main(argv: list[str] | None = None) -> int:
    from bench.compat import attention_without_cudnn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="640,704,768,1728", help="comma-separated widths")
    parser.add_argument("--padding", type=int, default=100, help="pad positions of the second row")
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    if min(widths) <= args.padding or args.padding < 1:
        parser.error("--padding must be at least 1 and below every width")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    cudnn = torch.backends.cudnn.version() if device == "cuda" else None
    print(f"torch {torch.__version__}, cuDNN {cudnn}, {name}, {dtype}")
    for label, guard in (("default kernels", None), ("attention_without_cudnn", attention_without_cudnn)):
        for width in widths:
            if guard is None:
                grad = left_padded_query_gradient(width, args.padding, device, dtype)
            else:
                with guard():
                    grad = left_padded_query_gradient(width, args.padding, device, dtype)
            bad = int((~torch.isfinite(grad)).sum())
            print(f"{label:>24}, width {width:>5}: {bad} non-finite query gradients of {grad.numel()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
