"""Speed of ReaRec's fused training loss vs its readable autograd form, on one batch shaped like Amazon Beauty's.

ReaRec's loss scores every training position's ``K + 1`` reasoning states against every item; on Beauty
(12,101 items, batches of 256 users, about 1,400 positions) that is the bulk of an epoch on a CPU. The
fused loss (``methods.rearec.fused_reasoning_loss``) computes value and gradients chunk by chunk; this script
checks that both forms agree and prints their forward + backward times and the ratio.

    python benchmarks/rearec_loss.py                     # ERL, Beauty-sized batch
    python benchmarks/rearec_loss.py --scheme prl --items 18357 --rows 1500   # PRL, Sports-sized
    python benchmarks/rearec_loss.py --chunks 8,16,64    # the fused loss at several chunk sizes

On a machine shared with other jobs, ``--threads 1`` (with ``taskset``) gives steadier timings.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.rearec import PROFILES, erl_loss, fused_reasoning_loss, prl_loss  # noqa: E402

LossOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def forward_backward(loss_of: LossOf, states: torch.Tensor, items: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Loss value and the states' gradient after one forward + backward pass."""
    states, items = states.clone().requires_grad_(True), items.clone().requires_grad_(True)
    loss = loss_of(states, items)
    loss.backward()
    return loss.item(), states.grad


def seconds(loss_of: LossOf, states: torch.Tensor, items: torch.Tensor, repeats: int) -> float:
    """Mean wall time of a forward + backward pass, after one warm-up pass."""
    forward_backward(loss_of, states, items)
    start = time.perf_counter()
    for _ in range(repeats):
        forward_backward(loss_of, states, items)
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheme", choices=("erl", "prl"), default="erl")
    parser.add_argument("--rows", type=int, default=1400, help="training positions in the batch")
    parser.add_argument("--items", type=int, default=12101, help="catalogue size (Beauty: 12,101)")
    parser.add_argument("--steps", type=int, default=2, help="reasoning steps K")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--chunks", default="16", help="comma-separated chunk sizes (rows) of the fused loss")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settings = {**PROFILES["small"], "scheme": args.scheme, "reasoning_steps": args.steps}
    states = 0.3 * torch.randn(args.rows, args.steps + 1, args.dim)
    items = 0.1 * torch.randn(args.items, args.dim)
    positives = torch.randint(0, args.items, (args.rows,))

    def readable(s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if args.scheme == "erl":
            return erl_loss(s, e, positives, settings["temperature"], settings["diversity_weight"], "official")
        return prl_loss(s, e, positives, settings["temperature"], settings["temperature_decay"])

    reference_value, reference_grad = forward_backward(readable, states, items)
    reference_seconds = seconds(readable, states, items, args.repeats)
    print(f"{args.scheme.upper()}, {args.rows} positions x {args.steps + 1} states x {args.items} items, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"readable (autograd)   {reference_seconds * 1000:8.1f} ms   loss {reference_value:.6f}")
    for chunk in (int(c) for c in args.chunks.split(",")):
        def fused(s: torch.Tensor, e: torch.Tensor, chunk: int = chunk) -> torch.Tensor:
            return fused_reasoning_loss(s, e, positives, settings, chunk=chunk)

        value, grad = forward_backward(fused, states, items)
        gap = ((grad - reference_grad).abs().max() / reference_grad.abs().max()).item()
        fused_seconds = seconds(fused, states, items, args.repeats)
        print(f"fused, chunk {chunk:5d}   {fused_seconds * 1000:8.1f} ms   loss {value:.6f}   "
              f"max gradient gap {gap:.1e}   {reference_seconds / fused_seconds:.2f}x")


if __name__ == "__main__":
    main()
