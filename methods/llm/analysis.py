"""The analyses the PauseRec study reports on its LLM models (DESIGN.md, "The study's recipes", item 5).

Plain functions over a model, its tokenizer, the :class:`~methods.llm.backbone.SidVocabulary` and the
:class:`~bench.sid.SemanticIds`, so that they run on any cached stage checkpoint:

- :func:`metadata_recovery`: does CPT ground the SIDs? Given an item's SID, a 2-shot prompt written as the CPT
  corpus writes items, greedy decoding must produce the item's title (exact match) and its categories (exact match
  of the first 1, 2 and 3 levels).
- :func:`embedding_pca`: where the pause embedding lies relative to text and SID token embeddings, stage by stage
  (PCA plot plus distances in the full space).
- :func:`pause_attention`: what each pause position attends to in the prompt (heatmap).

Figures are drawn and written by :mod:`bench.figures` (Agg canvas, no pyplot; atomic, reproducible PNGs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.errors import GRBenchError
from bench.figures import new_figure, save_png
from bench.sid import SemanticIds
from methods.llm.backbone import SidVocabulary
from methods.llm.prompts import CATEGORY_SEPARATOR, item_description, title_and_categories

CATEGORY_LEVELS = (1, 2, 3)
MAX_EXAMPLES = 5
MAX_TICK_LABELS = 64


# --- metadata recovery -------------------------------------------------------------------------------------------


def _query_prefix(description: str, sid: str) -> str:
    """The description up to and including the quote that opens its first field: ``<SID>, its title is "``.

    Derived from :func:`item_description` rather than written out, so the probe stays the CPT format."""
    opening = description.index('"', len(sid))
    return description[: opening + 1]


def _answer(generated: str) -> tuple[str, bool]:
    """The quoted answer a continuation gives, and whether its closing quote was found.

    The closing quote is the first ``"`` followed by ``,``, a line break or the end of the text (the CPT line goes on
    with ``", its categories are "`` or ends), so a title with an inner ``12" brush`` quote survives. Without one
    (the model ran out of tokens or left the format) the answer is the first line."""
    for index, char in enumerate(generated):
        if char == '"' and (index + 1 == len(generated) or generated[index + 1] in ",\n"):
            return generated[:index], True
    return generated.split("\n", 1)[0], False


def _shots(rng: np.random.Generator, pool: np.ndarray, item: int, shots: int) -> list[int]:
    """``shots`` distinct items of ``pool``, never ``item`` (drawn one more than needed, the query dropped)."""
    candidates = pool[pool != item]
    if len(candidates) < shots:
        raise GRBenchError(f"metadata recovery needs {shots} other items with text for its shots, the catalog has "
                           f"{len(candidates)}")
    return [int(i) for i in rng.choice(candidates, size=shots, replace=False)]


@contextlib.contextmanager
def _left_padding(tokenizer: Any) -> Iterator[None]:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def greedy_continuations(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int,
                         batch_size: int) -> list[str]:
    """Greedy continuations of ``prompts`` (batched, left-padded, special tokens dropped from the text)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = _device(model)
    outputs: list[str] = []
    with _left_padding(tokenizer), _eval_mode(model), torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start:start + batch_size]), add_special_tokens=False, padding=True,
                              return_tensors="pt")
            input_ids = batch["input_ids"].to(device)
            generated = model.generate(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device),
                                       max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                       pad_token_id=pad_id)
            new_tokens = generated[:, input_ids.shape[1]:]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True,
                                                  clean_up_tokenization_spaces=False))
    return outputs


def metadata_recovery(model: Any, tokenizer: Any, sids: SemanticIds, catalog: pd.DataFrame, items: Sequence[int], *,
                      shots: int = 2, max_new_tokens: int = 48, batch_size: int = 16, seed: int = 0) -> dict:
    """The study's CPT grounding check: given an item's SID, can the model write its title and categories?

    Each query is ``shots`` lines of other items written as the CPT corpus writes them (:func:`item_description`,
    one per line), then the queried item's SID and the opening of a field: ``<SID>, its title is "`` (shots with
    title and categories), or ``<SID>, its categories are "`` (shots written with categories only). Greedy
    decoding; the answer ends at the closing quote. Title: exact match. Categories: exact match of the first 1, 2,
    3 levels, each over the items that have that many levels (``category_level_counts``; a level no item has
    scores None). Items without a title are left out of the title score (``skipped_no_title``), items without
    categories out of the category scores (``skipped_no_categories``). Shots are drawn per query from the whole
    catalog's items that have the field, by a generator seeded by ``seed``, never the queried item.
    """
    items = [int(item) for item in items]
    catalog_items = np.arange(1, sids.n_items + 1)
    text = [title_and_categories(catalog, int(item)) for item in catalog_items]
    titled = catalog_items[[title is not None for title, _ in text]]
    categorised = catalog_items[[categories is not None for _, categories in text]]
    categories_only = catalog.assign(title=None)  # item_description without the title: the category shots
    rng = np.random.default_rng(seed)

    title_queries, category_queries = [], []  # (item, expected, prompt)
    for item in items:
        title, categories = title_and_categories(catalog, item)
        sid = sids.sid_string(item)
        if title is not None:
            lines = [item_description(sids, catalog, shot) for shot in _shots(rng, titled, item, shots)]
            query = _query_prefix(item_description(sids, catalog, item), sid)
            title_queries.append((item, title, "\n".join([*lines, query])))
        if categories is not None:
            lines = [item_description(sids, categories_only, shot) for shot in _shots(rng, categorised, item, shots)]
            query = _query_prefix(item_description(sids, categories_only, item), sid)
            category_queries.append((item, categories, "\n".join([*lines, query])))

    generated = greedy_continuations(model, tokenizer, [q[2] for q in title_queries + category_queries],
                                     max_new_tokens=max_new_tokens, batch_size=batch_size)
    title_answers = [_answer(text) for text in generated[:len(title_queries)]]
    category_answers = [_answer(text) for text in generated[len(title_queries):]]

    title_hits = [answer == expected for (_, expected, _), (answer, _) in zip(title_queries, title_answers)]
    level_hits: dict[int, list[bool]] = {level: [] for level in CATEGORY_LEVELS}
    for (_, expected, _), (answer, _) in zip(category_queries, category_answers):
        want, got = expected.split(CATEGORY_SEPARATOR), answer.split(CATEGORY_SEPARATOR)
        for level in CATEGORY_LEVELS:
            if len(want) >= level:
                level_hits[level].append(got[:level] == want[:level])

    result: dict[str, Any] = {
        "items": len(title_queries),
        "queried": len(items),
        "skipped_no_title": len(items) - len(title_queries),
        "skipped_no_categories": len(items) - len(category_queries),
        "shots": shots,
        "title_exact": float(np.mean(title_hits)) if title_hits else None,
        "title_unterminated": sum(not closed for _, closed in title_answers),
    }
    for level in CATEGORY_LEVELS:
        hits = level_hits[level]
        result[f"category_level_{level}"] = float(np.mean(hits)) if hits else None
    result["category_level_counts"] = {level: len(level_hits[level]) for level in CATEGORY_LEVELS}
    result["category_unterminated"] = sum(not closed for _, closed in category_answers)
    result["examples"] = [(item, expected, answer) for (item, expected, _), (answer, _)
                          in zip(title_queries[:MAX_EXAMPLES], title_answers)]
    result["category_examples"] = [(item, expected, answer) for (item, expected, _), (answer, _)
                                   in zip(category_queries[:MAX_EXAMPLES], category_answers)]
    return result


# --- embedding PCA -----------------------------------------------------------------------------------------------


def _input_embeddings(model: Any) -> np.ndarray:
    return model.get_input_embeddings().weight.detach().float().cpu().numpy()


def embedding_pca(models: dict[str, Any], vocab: SidVocabulary, path: Path, *, text_sample: int = 2000,
                  seed: int = 0) -> dict:
    """Where the pause token's input embedding lies relative to text and SID tokens, stage by stage.

    For each named model (e.g. ``{"after CPT": m1, "after pause pretraining": m2, "after implicit SFT": m3}``):
    the input-embedding rows of ``text_sample`` original text tokens (rows below ``vocab.original_rows``, the same
    seeded sample for every stage), every SID code token and the pause token; one PCA(2) per stage (the stages'
    spaces differ), one subplot each, saved as a PNG at ``path``. Returns, per stage, the explained variance ratio
    of the two components and the Euclidean distance, in the full embedding space, of the pause embedding to the
    mean of all original text rows (the "text-token mean" initialisation) and to the mean of the SID code rows
    (the "SID-token mean" initialisation).
    """
    from sklearn.decomposition import PCA

    if not models:
        raise GRBenchError("embedding PCA needs at least one model")
    rng = np.random.default_rng(seed)
    text_rows = np.sort(rng.choice(vocab.original_rows, size=min(text_sample, vocab.original_rows), replace=False))
    code_rows = np.asarray(vocab.code_ids, dtype=np.int64)
    figure = new_figure(4.5 * len(models), 4.2)
    axes = figure.subplots(1, len(models), squeeze=False)[0]
    stats: dict[str, dict[str, Any]] = {}
    for axis, (name, model) in zip(axes, models.items()):
        weights = _input_embeddings(model)
        text, codes, pause = weights[text_rows], weights[code_rows], weights[vocab.pause_id]
        text_mean, sid_mean = weights[: vocab.original_rows].mean(0), codes.mean(0)
        pca = PCA(n_components=2, random_state=seed)
        points = pca.fit_transform(np.concatenate([text, codes, pause[None]]))
        axis.scatter(*points[: len(text)].T, s=4, alpha=0.4, color="tab:gray", label=f"text tokens ({len(text)})")
        axis.scatter(*points[len(text):-1].T, s=8, alpha=0.7, color="tab:blue", label=f"SID tokens ({len(codes)})",
                     zorder=2)
        # an outline only: SID rows barely moved by a short CPT sit where the pause starts, and must stay visible
        axis.scatter(*points[-1], s=220, marker="*", facecolors="none", edgecolors="tab:red", linewidths=1.5,
                     label="<pause>", zorder=3)
        ratio = [float(r) for r in pca.explained_variance_ratio_]
        axis.set_title(name)
        axis.set_xlabel(f"PC1 ({ratio[0]:.1%})")
        axis.set_ylabel(f"PC2 ({ratio[1]:.1%})")
        axis.legend(loc="best", fontsize="small")
        stats[name] = {
            "explained_variance_ratio": ratio,
            "pause_to_text_mean": float(np.linalg.norm(pause - text_mean)),
            "pause_to_sid_mean": float(np.linalg.norm(pause - sid_mean)),
            "text_mean_to_sid_mean": float(np.linalg.norm(text_mean - sid_mean)),
        }
    save_png(figure, path)
    return stats


# --- pause attention ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """Eager attention for the duration (SDPA and flash kernels return no attention weights), then the model's own.

    Uses transformers' ``set_attn_implementation``; a model without it is left as it is."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = hasattr(model, "set_attn_implementation") and previous not in (None, "eager")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(previous)


def _tick_labels(tokenizer: Any, input_ids: Sequence[int]) -> list[str]:
    labels = []
    for token in input_ids:
        text = tokenizer.decode([int(token)], skip_special_tokens=False).replace("\n", "\\n").replace(" ", "␣")
        labels.append(text if len(text) <= 14 else text[:13] + "…")
    return labels


def pause_attention(model: Any, tokenizer: Any, input_ids: list[int], pause_id: int, path: Path, *,
                    layer: int = -1) -> np.ndarray:
    """What each pause position reads: its attention over the sequence, averaged over the heads of ``layer``.

    One forward pass with attention weights (eager attention for the pass, the model's own implementation
    restored afterwards). Returns a ``(n_pauses, seq_len)`` array whose row ``k`` is the softmax row of the
    ``k``-th pause position: causal, so it sums to 1 over the positions up to and including the pause itself and
    is 0 after it. A heatmap (token strings on the x axis, thinned to about 64 labels, the pauses always shown;
    ``pause 1..k`` on the y axis) is saved as a PNG at ``path``.
    """
    ids = [int(token) for token in input_ids]
    positions = [index for index, token in enumerate(ids) if token == pause_id]
    if not positions:
        raise GRBenchError(f"pause attention: the input ({len(ids)} tokens) holds no pause token (id {pause_id})")
    with _eager_attention(model), _eval_mode(model), torch.no_grad():
        output = model(input_ids=torch.tensor([ids], device=_device(model)), output_attentions=True)
    attentions = getattr(output, "attentions", None)
    if not attentions or attentions[layer] is None:
        raise GRBenchError(f"pause attention: {type(model).__name__} returned no attention weights (it needs an "
                           "attention implementation that exposes them, such as eager)")
    weights = attentions[layer][0].float().mean(0).cpu().numpy()  # (seq, seq), heads averaged
    rows = weights[positions]

    n_layers = len(attentions)
    figure = new_figure(min(max(6.0, 0.2 * min(len(ids), MAX_TICK_LABELS) + 2.0), 18.0), 2.2 + 0.3 * len(positions))
    axis = figure.subplots()
    image = axis.imshow(rows, aspect="auto", cmap="viridis", interpolation="nearest")
    labels = _tick_labels(tokenizer, ids)
    step = max(1, -(-len(ids) // MAX_TICK_LABELS))
    ticks = sorted(set(range(0, len(ids), step)) | set(positions))  # the pauses always named
    axis.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=6)
    axis.set_yticks(range(len(positions)), [f"pause {k}" for k in range(1, len(positions) + 1)], fontsize=7)
    axis.set_title(f"attention of each pause position, layer {layer % n_layers + 1} of {n_layers}, heads averaged",
                   fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.03)
    save_png(figure, path)
    return rows
