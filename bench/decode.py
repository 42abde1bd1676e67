"""Constrained decoding of semantic IDs: a prefix trie over the valid SIDs and a batched beam search.

Every generative recommender in the suite (TIGER's T5, the LLM methods' causal LMs) names its next item by
decoding the item's SID, a fixed-length sequence of L code tokens. :func:`constrained_beam_search` returns,
per user, the top-K distinct items whose SIDs have the highest sequence log-probability found by a beam
search that only ever follows valid SID prefixes, so every returned item exists.

Why a hand-written beam search rather than ``model.generate(..., prefix_allowed_tokens_fn=...)``:

- ``generate`` repeats each prompt ``num_beams`` times *before* encoding it; here each prompt is encoded
  once and its KV cache (or encoder output) is expanded to the beams afterwards.
- ``generate`` asks a Python callback for the allowed tokens of every beam at every step and runs top-k
  over ``num_beams x vocabulary`` candidates. Here the trie is a dense table per level: the log-probabilities
  are restricted to the few hundred token ids that occur at the current level (one column gather), validity
  is one tensor index into the table, and top-k runs over ``beams x level tokens`` candidates.
- The beam search keeps no finished/running bookkeeping: every SID has the same length, so all beams end
  together and no length penalty or early stopping applies.

Scores are exact sequence log-probabilities, normalised over the model's full vocabulary (as ``generate``
computes them), so the ranking equals ``generate``'s with the same beam width; ``tests/test_decode.py``
checks this on tiny causal and encoder-decoder models.

Memory: level ``l`` of the trie is an ``(n_prefixes_l, n_level_tokens_l)`` int32 table, at most
``n_items x n_level_tokens`` entries (about 12 MB for 12k items and 256 codes a level).

On a GPU, at the leaderboards' batch of 16, a decoder-only model's forwards are bound by launching kernels, not
by computing (issue 44.3). There :class:`_StaticCausalLM` runs them on fixed shapes over a static KV cache, each
forward one CUDA-graph replay (``graphs`` in :func:`constrained_beam_search`); the dynamic cache stays the
reference and the path of encoder-decoders and CPUs.
"""

from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from bench.errors import GRBenchError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class _TrieTensors:
    """The trie's tables as tensors on one device (what the beam search indexes)."""

    level_tokens: tuple[torch.Tensor, ...]
    children: tuple[torch.Tensor, ...]
    leaf_items: torch.Tensor
    largest_token: int  # on the host: checking the vocabulary must not wait for the GPU


@dataclass(frozen=True, eq=False)
class SIDTrie:
    """A prefix trie over all valid SIDs, stored as one dense table per level.

    The nodes of level ``l`` are the distinct SID prefixes of length ``l`` (level 0 has the root alone),
    numbered in lexicographic order. ``level_tokens[l]`` holds the sorted token ids that occur at SID
    position ``l``; ``children[l][node, j]`` is the node of level ``l + 1`` reached from ``node`` by token
    ``level_tokens[l][j]``, or -1 if that prefix is not valid. The nodes of level L (the depth) are the
    items: ``leaf_items[leaf]`` is the item id of that leaf.
    """

    level_tokens: tuple[np.ndarray, ...]
    children: tuple[np.ndarray, ...]
    leaf_items: np.ndarray
    _on_device: dict[str, _TrieTensors] = field(default_factory=dict, repr=False)  # filled by on()

    @classmethod
    def from_item_tokens(cls, item_tokens: Any, item_ids: Any = None) -> SIDTrie:
        """Builds the trie from one row of SID token ids per item.

        ``item_tokens``: ``(n_items, L)`` integer token ids in the model's vocabulary; ``item_ids``:
        ``(n_items,)`` the item id of each row (default: the row index). Raises GRBenchError for ragged,
        empty or non-integer input, and for two items with the same SID.
        """
        try:
            tokens = np.asarray(item_tokens)
        except ValueError as error:  # NumPy refuses ragged nested lists
            raise GRBenchError(f"SID token rows must all have the same length ({error})") from None
        if tokens.dtype == object or tokens.ndim != 2:
            raise GRBenchError(f"SID tokens must be an (n_items, L) integer array; got shape {tokens.shape} "
                               "(are the SIDs of different lengths?)")
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise GRBenchError(f"SID tokens must have at least one item and one level; got shape {tokens.shape}")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise GRBenchError(f"SID tokens must be integer token ids; got dtype {tokens.dtype}")
        if tokens.min() < 0:
            raise GRBenchError("SID token ids must be non-negative")
        tokens = tokens.astype(np.int64)
        n_items, depth = tokens.shape
        ids = np.arange(n_items, dtype=np.int64) if item_ids is None else np.asarray(item_ids)
        if ids.shape != (n_items,) or not np.issubdtype(ids.dtype, np.integer):
            raise GRBenchError(f"item ids must be {n_items} integers, one per SID row; got shape {ids.shape}")

        level_tokens, children = [], []
        node_of_item = np.zeros(n_items, dtype=np.int64)  # every item starts at the root
        n_nodes = 1
        for level in range(depth):
            tokens_here = np.unique(tokens[:, level])
            column = np.searchsorted(tokens_here, tokens[:, level])
            edges, child_of_item = np.unique(node_of_item * len(tokens_here) + column, return_inverse=True)
            table = np.full((n_nodes, len(tokens_here)), -1, dtype=np.int32)
            table[edges // len(tokens_here), edges % len(tokens_here)] = np.arange(len(edges), dtype=np.int32)
            level_tokens.append(tokens_here)
            children.append(table)
            node_of_item, n_nodes = child_of_item.reshape(-1), len(edges)

        if n_nodes != n_items:
            _, first_row, counts = np.unique(node_of_item, return_index=True, return_counts=True)
            shared = node_of_item == node_of_item[first_row[np.argmax(counts)]]
            raise GRBenchError(f"{n_items - n_nodes} duplicate SIDs: items {ids[shared].tolist()[:5]} all have "
                               f"SID {tokens[shared][0].tolist()}; every item needs a unique SID")
        leaf_items = np.empty(n_items, dtype=np.int64)
        leaf_items[node_of_item] = ids
        for array in (*level_tokens, *children, leaf_items):
            array.flags.writeable = False  # the device copies made by on() must never go stale
        return cls(tuple(level_tokens), tuple(children), leaf_items)

    @property
    def depth(self) -> int:
        """L, the number of tokens of every SID."""
        return len(self.children)

    @property
    def n_items(self) -> int:
        return len(self.leaf_items)

    def node_of(self, prefix: Sequence[int]) -> int:
        """The node reached by a SID prefix (at level ``len(prefix)``), or -1 if the prefix is not valid."""
        if len(prefix) > self.depth:
            return -1
        node = 0
        for level, token in enumerate(prefix):
            column = int(np.searchsorted(self.level_tokens[level], token))
            if column == len(self.level_tokens[level]) or self.level_tokens[level][column] != token:
                return -1
            node = int(self.children[level][node, column])
            if node < 0:
                return -1
        return node

    def item_of(self, sid: Sequence[int]) -> int | None:
        """The item id of a complete SID, or None if no item has it."""
        leaf = self.node_of(sid) if len(sid) == self.depth else -1
        return None if leaf < 0 else int(self.leaf_items[leaf])

    def allowed_next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """The token ids that continue a valid SID prefix (empty for an invalid or complete one)."""
        node = self.node_of(prefix)
        if node < 0 or len(prefix) >= self.depth:
            return []
        level = len(prefix)
        return self.level_tokens[level][self.children[level][node] >= 0].tolist()

    def on(self, device: torch.device | str) -> _TrieTensors:
        """The tables as tensors on ``device``, copied once per device."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = _TrieTensors(
                level_tokens=tuple(torch.tensor(t, device=device) for t in self.level_tokens),
                children=tuple(torch.tensor(c, device=device) for c in self.children),
                leaf_items=torch.tensor(self.leaf_items, device=device),
                largest_token=max(int(tokens[-1]) for tokens in self.level_tokens),
            )
        return self._on_device[key]


def prefix_allowed_tokens_fn(trie: SIDTrie, prompt_length: int) -> Callable[[int, torch.Tensor], list[int]]:
    """A ``prefix_allowed_tokens_fn`` for Hugging Face ``generate`` that follows the same trie (a reference).

    ``prompt_length`` is where the SID starts in the sequences ``generate`` passes: the padded prompt length
    for a decoder-only model, 1 (the decoder start token) for an encoder-decoder. ``generate`` may keep
    beams whose prefix is already invalid (with score -inf) when there are fewer valid continuations than
    it keeps candidates; those get the whole level's tokens, since an empty list makes ``generate`` fail.
    """

    def allowed(batch_id: int, sequence: torch.Tensor) -> list[int]:
        prefix = sequence[prompt_length:].tolist()
        tokens = trie.allowed_next_tokens(prefix)
        if not tokens:
            tokens = trie.level_tokens[min(len(prefix), trie.depth - 1)].tolist()
        return tokens

    return allowed


class SIDAfterMarker:
    """A logits processor for Hugging Face ``generate`` (sampling) that keeps the SID a completion writes valid.

    Free text may come first (OneRec-Think's rationale); once a row has generated ``begin_id`` after its prompt,
    its next ``trie.depth`` tokens may only follow valid SID prefixes and the one after them is ``end_id``. Rows
    outside a SID are left alone. It is called as ``processor(input_ids, scores)`` like a transformers
    ``LogitsProcessor``, and built per ``generate`` call, since ``prompt_length`` (the padded prompt width) says
    where each row's own tokens start (the prompt holds SIDs of its own)."""

    def __init__(self, trie: SIDTrie, begin_id: int, end_id: int, prompt_length: int) -> None:
        self.trie, self.begin_id, self.end_id, self.prompt_length = trie, begin_id, end_id, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length:]
        rows = (generated == self.begin_id).any(dim=1).nonzero().flatten().tolist()
        # a few dozen rows of a few dozen tokens: the trie walk in Python costs less than the copy, made once
        for row, tokens in zip(rows, generated[rows].tolist()):
            prefix = tokens[tokens.index(self.begin_id) + 1:]
            allowed = self.trie.allowed_next_tokens(prefix) if len(prefix) < self.trie.depth else (
                [self.end_id] if len(prefix) == self.trie.depth else [])  # past the end: finished, padded
            if allowed:
                keep = scores[row, allowed]
                scores[row] = float("-inf")
                scores[row, allowed] = keep
        return scores


class _ModelSteps(Protocol):
    """The model-specific half of the beam search, for one batch of users.

    ``first_logits`` encodes the prompts once and returns the next-token logits ``(n_users, vocab)``.
    ``next_logits`` reorders (and, after the first step, expands) the model's state so that row ``r`` continues
    the state of row ``parent_rows[r]``, feeds ``tokens[r]`` and returns the logits ``(len(parent_rows), vocab)``.
    """

    def first_logits(self) -> torch.Tensor: ...

    def next_logits(self, parent_rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor: ...


def _check_prompts(prompts: Sequence[Sequence[int]]) -> None:
    for user, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise GRBenchError(f"prompt {user} is empty; the model needs at least one token to condition on")


def pad_prompts(prompts: Sequence[Sequence[int]], pad_token_id: int, side: str, device: torch.device,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads token-id lists to one ``(n, max_len)`` tensor; returns it and its attention mask."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        span = slice(width - len(prompt), width) if side == "left" else slice(0, len(prompt))
        input_ids[row, span] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids.to(device), attention_mask.to(device)


# transformers 5.24 renamed the KV cache of every forward and output from ``past_key_values`` to ``cache`` (the
# old name still works there, with a deprecation warning on each run); 5.23, which the GPU image has, knows
# only the old name. These two helpers pick whichever the installed version has.
def _cache_keyword(model: PreTrainedModel) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper takes **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _returned_cache(output: Any) -> Any:
    return output.cache if "cache" in getattr(output, "__dataclass_fields__", {}) else output.past_key_values


def _reorder_cache(cache: Any, parent_rows: torch.Tensor) -> None:
    if not hasattr(cache, "reorder_cache"):
        raise GRBenchError(f"the model returned a {type(cache).__name__} as its cache, which cannot be reordered "
                           "for beam search; a transformers Cache (e.g. DynamicCache) is needed")
    cache.reorder_cache(parent_rows)  # index_select on the batch dimension: also expands B rows to B x beams


class _CausalLMSteps:
    """Decoder-only models: left-padded prompts, explicit position ids, one token a step with the KV cache."""

    def __init__(self, model: PreTrainedModel, prompts: Sequence[Sequence[int]], pad_token_id: int,
                 device: torch.device):
        self.model = model
        self.cache_keyword = _cache_keyword(model)
        self.input_ids, self.attention_mask = pad_prompts(prompts, pad_token_id, "left", device)
        # Left padding shifts each prompt: positions count real tokens only, as generate() computes them.
        self.positions = (self.attention_mask.cumsum(-1) - 1).clamp_min(0)
        self.cache: Any = None

    def first_logits(self) -> torch.Tensor:
        output = self.model(input_ids=self.input_ids, attention_mask=self.attention_mask,
                            position_ids=self.positions, use_cache=True, logits_to_keep=1)
        self.cache = _returned_cache(output)
        self.positions = self.positions[:, -1:]
        return output.logits[:, -1]

    def next_logits(self, parent_rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        _reorder_cache(self.cache, parent_rows)
        self.attention_mask = self.attention_mask.index_select(0, parent_rows)
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(len(parent_rows), 1)], 1)
        self.positions = self.positions.index_select(0, parent_rows) + 1
        output = self.model(input_ids=tokens[:, None], attention_mask=self.attention_mask,
                            position_ids=self.positions, use_cache=True, **{self.cache_keyword: self.cache})
        self.cache = _returned_cache(output)
        return output.logits[:, -1]


class _EncoderDecoderSteps:
    """Encoder-decoder models (TIGER's T5): encode once, decode from the decoder start token with the cache."""

    def __init__(self, model: PreTrainedModel, prompts: Sequence[Sequence[int]], pad_token_id: int,
                 device: torch.device):
        self.model = model
        self.cache_keyword = _cache_keyword(model)
        input_ids, self.attention_mask = pad_prompts(prompts, pad_token_id, "right", device)
        self.encoder_states = model.get_encoder()(input_ids=input_ids, attention_mask=self.attention_mask)[0]
        start = model.config.decoder_start_token_id
        if start is None:
            raise GRBenchError(f"{type(model).__name__} has no decoder_start_token_id in its config")
        self.start_tokens = torch.full((len(prompts), 1), start, dtype=torch.long, device=device)
        self.cache: Any = None

    def _decode(self, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        from transformers.modeling_outputs import BaseModelOutput  # lazily: the trie alone needs no transformers

        output = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=self.encoder_states),
                            attention_mask=self.attention_mask, decoder_input_ids=decoder_input_ids,
                            use_cache=True, **{self.cache_keyword: self.cache})
        self.cache = _returned_cache(output)
        return output.logits[:, -1]

    def first_logits(self) -> torch.Tensor:
        return self._decode(self.start_tokens)

    def next_logits(self, parent_rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        _reorder_cache(self.cache, parent_rows)  # self- and cross-attention caches
        self.encoder_states = self.encoder_states.index_select(0, parent_rows)
        self.attention_mask = self.attention_mask.index_select(0, parent_rows)
        return self._decode(tokens[:, None])


def _run_graphed(function: Callable[[], torch.Tensor], graphs: bool, rewind: Callable[[], None] = lambda: None,
                 pool: Any = None) -> Callable[[], torch.Tensor]:
    """``function`` itself, or (``graphs``, on CUDA) a replay of it captured once into a CUDA graph.

    ``function`` must read and write only fixed tensors (its inputs are filled in place before each call); the
    capture runs it twice on a side stream first (lazy initialisations, cuBLAS workspaces), as PyTorch's
    CUDA-graph recipe asks, each after ``rewind()``; whatever runs next must reset the state those runs left.
    Nothing captured may wait for the GPU (no ``.item()``, no output sizes read from tensors). The replay returns
    the same output tensor every time, overwritten by the next replay. Graphs given the same memory ``pool``
    share their temporaries, which is safe for graphs that never run at the same time.
    """
    if not graphs:
        return function
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            rewind()
            function()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: other threads' CUDA calls (a monitor, say) do not break this thread's capture
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        output = function()

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return replay


@dataclass
class _PrefillInputs:
    """The fixed inputs of one prefill width (``bucket`` tokens a prompt) and its captured run."""

    input_ids: torch.Tensor  # (rows, bucket), left-padded
    positions: torch.Tensor  # (rows, bucket)
    mask: torch.Tensor  # (rows, 1, bucket, width): additive, causal over the prompt cache's first bucket slots
    run: Callable[[], torch.Tensor] = lambda: torch.empty(0)


class _StaticCausalLM:
    """Decoder-only models on fixed-shape tensors, so that each forward is one CUDA-graph replay (issue 44.3).

    At batch 16 the dynamic path (:class:`_CausalLMSteps`) spends its time launching the few thousand small
    kernels of each forward, not computing. Here every tensor a forward touches keeps its shape and address from
    call to call: ``rows`` users (a smaller batch is padded with copies of its last prompt), a prompt cache of
    ``rows`` rows and a beam cache of ``rows x beam_width`` rows (two transformers ``StaticCache``) of ``width``
    prompt slots (then ``depth - 1`` SID slots), and explicit 4D additive attention masks and position ids.
    A batch's prompts are left-padded to the next multiple of ``PREFILL_BUCKET`` (32) tokens, so that short
    prompts do not pay for the longest, each such width with its own captured prefill: the prompt forward into
    the prompt cache's first slots, then each prompt's keys and values copied to its beams' rows. The step (beam
    rows reordered in place by ``index_select`` + ``copy_``, then the one-token forward) is captured once. On
    CUDA each is captured on first use and replayed after; on the CPU the same functions run eagerly, which is
    what the tests check against the dynamic path.

    A user's beams keep fixed rows ``user * beam_width + j``; steps with fewer beams (a first level with
    fewer tokens than beams) fill the spare rows with copies and drop their logits. ``model`` may be a weak
    proxy: the decoder is kept between calls (:func:`_static_decoder`) and must not keep the model alive.
    """

    PREFILL_BUCKET = 32

    def __init__(self, model: PreTrainedModel, rows: int, beam_width: int, width: int, depth: int,
                 pad_token_id: int, device: torch.device, graphs: bool):
        from transformers import StaticCache  # lazily: the trie alone needs no transformers

        self.model, self.rows, self.beam_width, self.width = model, rows, beam_width, width
        self.pad_token_id, self.device, self.graphs = pad_token_id, device, graphs
        self.cache_keyword = _cache_keyword(model)
        config = model.config.get_text_config(decoder=True)
        self.dtype = model.get_input_embeddings().weight.dtype
        self.masked = torch.finfo(self.dtype).min  # additive masks, as eager and SDPA attention both take them
        heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.prompt_cache = StaticCache(config=config, max_cache_len=width)
        self.beam_cache = StaticCache(config=config, max_cache_len=width + depth - 1)
        for cache, batch in ((self.prompt_cache, rows), (self.beam_cache, rows * beam_width)):
            cache.early_initialization(batch, heads, head_dim, self.dtype, device)
            if any(type(layer).__name__ != "StaticLayer" or not hasattr(layer, "cumulative_length")
                   for layer in cache.layers):
                raise GRBenchError(f"{type(model).__name__}'s cache has layers other than full-attention "
                                   "StaticLayers (sliding windows?); decode it with graphs=False")
        beams = rows * beam_width
        # the step's fixed inputs, filled in place before each replay
        self.tokens = torch.zeros((beams, 1), dtype=torch.long, device=device)
        self.parent_rows = torch.zeros(beams, dtype=torch.long, device=device)
        self.positions = torch.zeros((beams, 1), dtype=torch.long, device=device)
        self.beam_mask = torch.zeros((beams, 1, 1, width + depth - 1), dtype=self.dtype, device=device)
        self.prompt_lengths = torch.zeros((beams, 1), dtype=torch.long, device=device)
        self.prefills: dict[int, _PrefillInputs] = {}
        # one memory pool for all its graphs (each prefill width has one): they never run at the same time, and each
        # one's output stays referenced by its replay, so none can take over another's live memory, in any order
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        if depth > 1:  # a one-token SID has no step
            self.step = _run_graphed(self._step, graphs, rewind=self._rewind, pool=self.pool)
        self.current: _PrefillInputs | None = None
        self.n_users, self.beams, self.level = rows, 1, 0
        self.key: tuple[Any, ...] = ()  # what it was built for (_static_decoder)
        self.agrees: bool | None = None  # whether its first batch matched the dynamic path (auto checks once)

    @classmethod
    def bucket(cls, width: int) -> int:
        """``width`` rounded up to a multiple of ``PREFILL_BUCKET``."""
        return -(-width // cls.PREFILL_BUCKET) * cls.PREFILL_BUCKET

    def _forward(self, **inputs: Any) -> torch.Tensor:
        return self.model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1]

    def _prefill(self, inputs: _PrefillInputs) -> torch.Tensor:
        for layer in self.prompt_cache.layers:
            layer.cumulative_length.zero_()  # StaticLayer writes at (and then advances) this position
        logits = self._forward(input_ids=inputs.input_ids, attention_mask=inputs.mask, position_ids=inputs.positions,
                               **{self.cache_keyword: self.prompt_cache})
        bucket = inputs.input_ids.shape[1]
        for prompt, beams in zip(self.prompt_cache.layers, self.beam_cache.layers):
            for source, target in ((prompt.keys, beams.keys), (prompt.values, beams.values)):
                # each prompt row to its beam_width rows by a broadcasting copy (repeat_interleave may synchronise)
                per_user = target.view(self.rows, self.beam_width, *target.shape[1:])
                per_user[:, :, :, :bucket].copy_(source[:, None, :, :bucket])
        self._rewind()
        return logits

    def _rewind(self) -> None:
        for layer in self.beam_cache.layers:
            layer.cumulative_length.fill_(self.width)  # the first SID token goes right after the prompt slots

    def _step(self) -> torch.Tensor:
        for layer in self.beam_cache.layers:  # in place: the graph keeps reading these addresses
            layer.keys.copy_(layer.keys.index_select(0, self.parent_rows))
            layer.values.copy_(layer.values.index_select(0, self.parent_rows))
        return self._forward(input_ids=self.tokens, attention_mask=self.beam_mask, position_ids=self.positions,
                             **{self.cache_keyword: self.beam_cache})

    def _prefill_inputs(self, width: int) -> _PrefillInputs:
        """The prefill of the bucket that holds ``width``-token prompts, captured on its first use."""
        bucket = min(self.width, self.bucket(width))
        if bucket not in self.prefills:
            inputs = _PrefillInputs(
                input_ids=torch.full((self.rows, bucket), self.pad_token_id, dtype=torch.long, device=self.device),
                positions=torch.zeros((self.rows, bucket), dtype=torch.long, device=self.device),
                mask=torch.zeros((self.rows, 1, bucket, self.width), dtype=self.dtype, device=self.device))
            inputs.run = _run_graphed(functools.partial(self._prefill, inputs), self.graphs, pool=self.pool)
            self.prefills[bucket] = inputs
        return self.prefills[bucket]

    def load(self, prompts: Sequence[Sequence[int]]) -> _StaticCausalLM:
        """Fills the fixed inputs with one batch of at most ``rows`` prompts; returns itself as its steps."""
        self.n_users = len(prompts)
        padded = list(prompts) + [prompts[-1]] * (self.rows - len(prompts))
        input_ids, attention_mask = pad_prompts(padded, self.pad_token_id, "left", self.device)
        self.current = inputs = self._prefill_inputs(input_ids.shape[1])
        bucket, start = inputs.input_ids.shape[1], inputs.input_ids.shape[1] - input_ids.shape[1]
        inputs.input_ids.fill_(self.pad_token_id)
        inputs.input_ids[:, start:] = input_ids
        valid = torch.zeros((self.rows, self.width), dtype=torch.bool, device=self.device)  # the prompt slots
        valid[:, start:bucket] = attention_mask.bool()
        # position ids count real tokens only, as generate() computes them for left-padded prompts
        inputs.positions.copy_((valid[:, :bucket].long().cumsum(-1) - 1).clamp_min(0))
        causal = torch.ones((bucket, self.width), dtype=torch.bool, device=self.device).tril()
        inputs.mask.copy_(self._additive(causal & valid[:, None, None, :]))
        self.beam_mask.fill_(self.masked)
        self.beam_mask[:, 0, 0, :self.width] = self._additive(valid).repeat_interleave(self.beam_width, 0)
        self.prompt_lengths.copy_(valid.sum(-1, keepdim=True).repeat_interleave(self.beam_width, 0))
        self.beams, self.level = 1, 0
        return self

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(allowed, dtype=self.dtype).masked_fill_(~allowed, self.masked)

    def first_logits(self) -> torch.Tensor:
        assert self.current is not None, "load() a batch first"
        return self.current.run()[:self.n_users]

    def next_logits(self, parent_rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        new_beams = len(parent_rows) // self.n_users
        # the search numbers rows user * beams + beam; here a user's beams start at row user * beam_width
        parents = (parent_rows // self.beams * self.beam_width + parent_rows % self.beams).view(self.n_users, -1)
        tokens = tokens.view(self.n_users, -1)
        spare = self.beam_width - new_beams  # fewer beams than rows: repeat the first beam
        parents = torch.cat([parents, parents[:, :1].expand(-1, spare)], 1)
        tokens = torch.cat([tokens, tokens[:, :1].expand(-1, spare)], 1)
        users = self.n_users * self.beam_width
        self.parent_rows[:users] = parents.view(-1)
        self.tokens[:users, 0] = tokens.view(-1)
        self.level += 1
        self.positions.copy_(self.prompt_lengths + self.level - 1)
        self.beam_mask[:, 0, 0, self.width + self.level - 1] = 0.0  # the token fed now becomes visible
        logits = self.step()[:users].view(self.n_users, self.beam_width, -1)
        self.beams = new_beams
        return logits[:, :new_beams].reshape(self.n_users * new_beams, -1)


def _beam_search(trie: _TrieTensors, steps: _ModelSteps, beam_width: int, k: int,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model-independent beam search over the trie for one batch: ``(items, scores)``, each ``(n_users, k)``.

    State per user: ``beams`` live prefixes (one at the start, the prompt; at most ``beam_width`` later), each a
    trie node with its summed log-probability; row ``user * beams + beam`` of the model's state belongs to it.
    Beam search never extends the same prefix twice, so the final beams are distinct items.
    """
    logits = steps.first_logits()
    largest_token = trie.largest_token
    if largest_token >= logits.shape[-1]:
        raise GRBenchError(f"SID token id {largest_token} is outside the model's vocabulary ({logits.shape[-1]} "
                           "logits); were the SID tokens added to it and its embeddings resized?")
    n_users = logits.shape[0]
    scores = logits.new_zeros((n_users, 1), dtype=torch.float32)
    nodes = torch.zeros((n_users, 1), dtype=torch.long, device=logits.device)
    user_offsets = torch.arange(n_users, device=logits.device)[:, None]
    for level, level_tokens in enumerate(trie.level_tokens):
        beams, n_tokens = scores.shape[1], len(level_tokens)
        logits = logits.float()
        # log-softmax over the full vocabulary, evaluated at this level's token ids only
        log_probs = logits.index_select(1, level_tokens) - logits.logsumexp(-1, keepdim=True)
        children = trie.children[level][nodes]  # (n_users, beams, n_tokens), -1 where the prefix is invalid
        candidates = scores[:, :, None] + log_probs.view(n_users, beams, n_tokens)
        candidates = candidates.masked_fill(children < 0, float("-inf"))
        # fewer valid continuations than beams (e.g. few items) leaves -inf beams: they stay -inf and rank last
        scores, best = candidates.view(n_users, -1).topk(min(beam_width, beams * n_tokens), dim=1)
        nodes = children.view(n_users, -1).gather(1, best).long().clamp_min(0)
        if level + 1 < len(trie.level_tokens):
            parent_rows = (best // n_tokens + user_offsets * beams).view(-1)
            logits = steps.next_logits(parent_rows, level_tokens[best % n_tokens].view(-1))
    return trie.leaf_items[nodes[:, :k]], scores[:, :k]


def _static_wanted(model: PreTrainedModel, device: torch.device, graphs: bool | None) -> bool:
    """Whether to decode with :class:`_StaticCausalLM` (see ``graphs`` in :func:`constrained_beam_search`)."""
    if graphs is False:
        return False
    attention = getattr(model.config, "_attn_implementation", None)
    unsupported = ("it is an encoder-decoder" if getattr(model.config, "is_encoder_decoder", False) else
                   f"its attention is {attention!r}, which takes no 4D additive mask"
                   if attention not in ("sdpa", "eager") else None)
    if graphs and unsupported:
        raise GRBenchError(f"{type(model).__name__} cannot be decoded with graphs=True: {unsupported}")
    return graphs is True or (unsupported is None and device.type == "cuda")


# One static decoder per model, kept between calls (the runner decodes 16 users a call): capturing its graphs costs
# several forwards. A weak key, so that it goes with its model; one per model, so that a new batch size frees the
# memory of the last.
_STATIC_DECODERS: weakref.WeakKeyDictionary[Any, _StaticCausalLM] = weakref.WeakKeyDictionary()
_STATIC_GIVEN_UP: weakref.WeakSet[Any] = weakref.WeakSet()  # models auto decodes with the dynamic cache (warned once)


def _static_decoder(model: PreTrainedModel, users: int, batch_size: int, beam_width: int, width: int, depth: int,
                    pad_token_id: int, device: torch.device) -> _StaticCausalLM:
    """The model's static decoder for ``users`` prompts of up to ``width`` tokens in batches of ``batch_size``.

    The kept one where it fits: as many rows as the batch or (a last, smaller call, such as the runner's last 16
    users) more, but no more than ``batch_size``, and room enough. Otherwise a new one, of ``min(batch_size,
    users)`` rows and room for ``width`` tokens rounded up to a prefill bucket: a later call with longer prompts
    builds a bigger one, a few captures in a whole evaluation, where a power-of-two room would double the KV cache.
    The parameters' addresses are part of the key: a captured graph reads the weights where they were, so a model
    whose tensors were replaced (resized embeddings, say) needs new graphs."""
    key = (beam_width, depth, pad_token_id, str(device), tuple(p.data_ptr() for p in model.parameters()))
    rows = min(batch_size, users)
    decoder = _STATIC_DECODERS.get(model)
    if decoder is None or decoder.key != key or not rows <= decoder.rows <= batch_size or decoder.width < width:
        _STATIC_DECODERS.pop(model, None)
        decoder = None  # the old one's memory goes before the new one's is taken
        decoder = _StaticCausalLM(weakref.proxy(model), rows, beam_width, _StaticCausalLM.bucket(width), depth,
                                  pad_token_id, device, graphs=device.type == "cuda")
        decoder.key = key
        _STATIC_DECODERS[model] = decoder
    return decoder


def _steps_maker(model: PreTrainedModel, prompts: Sequence[Sequence[int]], tables: _TrieTensors, k: int,
                 beam_width: int, batch_size: int, pad_token_id: int, graphs: bool | None,
                 ) -> Callable[[Sequence[Sequence[int]]], _ModelSteps]:
    """The function that gives each batch of prompts its model steps, static or dynamic.

    Under auto (``graphs=None``) the static path must never cost a ranking: a decoder that cannot be built or
    captured, or whose first batch disagrees with the dynamic path, is given up for the model with one warning,
    and the dynamic cache decodes from then on."""
    device = next(model.parameters()).device
    dynamic_steps = _EncoderDecoderSteps if getattr(model.config, "is_encoder_decoder", False) else _CausalLMSteps

    def dynamic(batch: Sequence[Sequence[int]]) -> _ModelSteps:
        return dynamic_steps(model, batch, pad_token_id, device)

    def give_up(reason: str) -> Callable[[Sequence[Sequence[int]]], _ModelSteps]:
        _STATIC_DECODERS.pop(model, None)
        _STATIC_GIVEN_UP.add(model)
        warnings.warn(f"decoding with the dynamic cache from now on: {reason}", stacklevel=4)
        return dynamic

    if not _static_wanted(model, device, graphs) or (graphs is None and model in _STATIC_GIVEN_UP):
        return dynamic
    try:
        static = _static_decoder(model, len(prompts), batch_size, beam_width, max(map(len, prompts)),
                                 len(tables.level_tokens), pad_token_id, device)
    except Exception as error:  # a model or transformers version the static path does not fit, a failed capture
        if graphs:
            raise
        return give_up(f"the static cache failed ({type(error).__name__}: {error})")
    if graphs is None and static.agrees is None:  # auto: a new decoder checks itself against the dynamic path
        first = prompts[:batch_size]
        _, fast = _beam_search(tables, static.load(first), beam_width, k)
        _, reference = _beam_search(tables, dynamic(first), beam_width, k)
        static.agrees = torch.allclose(fast, reference, rtol=0, atol=0.05)
        if not static.agrees:
            return give_up("the static cache's scores differ from the dynamic one's by up to "
                           f"{(fast - reference).abs().max().item():.3g} on its first batch")
    if graphs:
        return static.load

    def static_or_dynamic(batch: Sequence[Sequence[int]]) -> _ModelSteps:
        try:
            return static.load(batch)  # may capture the prefill of a new prompt width
        except Exception as error:
            give_up(f"the static cache failed ({type(error).__name__}: {error})")
            return dynamic(batch)

    return static_or_dynamic


def constrained_beam_search(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    trie: SIDTrie,
    k: int,
    *,
    beam_width: int = 10,
    batch_size: int = 16,
    pad_token_id: int | None = None,
    graphs: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` distinct items per prompt by trie-constrained beam search, best first.

    ``model``: a Hugging Face causal LM or encoder-decoder (``config.is_encoder_decoder``) whose vocabulary
    contains the trie's token ids. ``prompts``: one list of token ids per user, of any lengths (for a causal
    LM, everything before the first SID token, e.g. ending in ``<|sid_begin|>``). Users are decoded
    ``batch_size`` at a time with ``beam_width`` beams, on the model's device, in eval mode and without
    gradients (the model's training mode is restored afterwards).

    ``graphs`` picks how a decoder-only model runs its forwards: True, on fixed-shape tensors and a static KV
    cache (:class:`_StaticCausalLM`, kept with the model for the next call), each forward captured into a CUDA
    graph on first use on a GPU and run eagerly elsewhere; False, the dynamic cache that grows and is
    re-indexed each step; None (auto, the default), the graphs on CUDA, where a new static decoder's first batch
    is decoded both ways and the graphs are kept only if the scores agree (a guard for the GPU path, which the
    CPU tests cannot reach; a disagreement or a failed capture falls back to the dynamic cache for the model, with
    a warning), and the dynamic cache elsewhere. Encoder-decoder models always use the dynamic
    cache. Both give the same items and scores up to float rounding.

    Returns ``(item_ids, scores)``: int64 ``(n_users, k)`` and float32 ``(n_users, k)``, where a score is the
    sum of the log-probabilities of the item's L SID tokens.
    """
    if not 1 <= k <= beam_width:
        raise GRBenchError(f"k={k} must be between 1 and the beam width ({beam_width})")
    if k > trie.n_items:
        raise GRBenchError(f"k={k} is more than the {trie.n_items} items that have a SID")
    if batch_size < 1:
        raise GRBenchError(f"batch size must be positive; got {batch_size}")
    _check_prompts(prompts)
    device = next(model.parameters()).device
    tables = trie.on(device)
    if pad_token_id is None:
        pad_token_id = getattr(model.config, "pad_token_id", None)
        pad_token_id = 0 if pad_token_id is None else pad_token_id  # masked out, so any valid id will do

    item_ids = np.empty((len(prompts), k), dtype=np.int64)
    scores = np.empty((len(prompts), k), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            make_steps = _steps_maker(model, prompts, tables, k, beam_width, batch_size, pad_token_id, graphs)
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start:start + batch_size]
                items, batch_scores = _beam_search(tables, make_steps(batch), beam_width, k)
                if not torch.isfinite(batch_scores).all():
                    raise GRBenchError("the model gave non-finite log-probabilities to valid SID tokens "
                                       "(NaN or overflowing logits?)")
                item_ids[start:start + len(batch)] = items.cpu().numpy()
                scores[start:start + len(batch)] = batch_scores.cpu().numpy()
    finally:
        model.train(was_training)
    return item_ids, scores
