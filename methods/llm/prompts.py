"""The texts the LLM methods train and predict on, exactly as the PauseRec study writes them (DESIGN.md).

- Item description (CPT): ``<SID>, its title is "<title>", its categories are "<A > B > C>"``.
- User line (CPT): ``The user has purchased the following items: <item>; <item>; ...;``.
- Recommendation chat: the system prompt :data:`SYSTEM_PROMPT`; user ``The user has purchased the following
  items: <SID>; <SID>; ...;``; assistant ``<think></think> <SID>``. System and user turns go through the
  tokenizer's own chat template; the assistant turn is written literally after the template's generation
  prompt, so that the training text and the inference prompt are the same characters on every backbone (Qwen3's
  template would otherwise rewrite a finished assistant turn's ``<think>`` block).

Every function takes plain strings or item ids, so PauseRec (pauses in the assistant prefix, titles in the
user turn) reuses them with other arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bench.sid import SID_BEGIN, SemanticIds
from bench.split import TrainData
from methods.llm.backbone import PAUSE

SYSTEM_PROMPT = (
    "You are a professional recommendation expert who needs to recommend the next possible purchase for users "
    "based on their purchase history. Please predict the most likely next product that the user will purchase "
    "based on the user's historical purchase information."
)
HISTORY_PREFIX = "The user has purchased the following items: "
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ASSISTANT_PREFIX = "<think></think> "
CATEGORY_SEPARATOR = " > "
CPT_CORPORA = ("train", "paper")


def history_text(items: Iterable[str]) -> str:
    """``The user has purchased the following items: a; b; c;`` for already written items ``a, b, c``."""
    return HISTORY_PREFIX + "; ".join(items) + ";"


def sid_history(sids: SemanticIds, history: Sequence[int]) -> str:
    """The SFT user turn: the history's SIDs."""
    return history_text(sids.sid_string(int(item)) for item in history)


def described_history(sids: SemanticIds, catalog: pd.DataFrame, history: Sequence[int]) -> str:
    """PauseRec's user turn: each history item with its SID, title and categories (:func:`item_description`)."""
    return history_text(item_description(sids, catalog, int(item)) for item in history)


def think_prefix(rationale: str) -> str:
    """The assistant turn before the SID with an explicit rationale (OneRec-Think): ``<think>{rationale}</think> ``.
    An empty rationale gives SFT's :data:`ASSISTANT_PREFIX`."""
    return f"{THINK_OPEN}{rationale}{THINK_CLOSE} "


def pause_prefix(pauses: int) -> str:
    """PauseRec's assistant turn before the SID: ``<think> <pause><pause>... </think> `` with ``pauses`` pauses."""
    return "<think> " + PAUSE * pauses + " </think> "


def title_and_categories(catalog: pd.DataFrame, item: int) -> tuple[str | None, str | None]:
    title = catalog["title"].iloc[item]
    categories = catalog["categories"].iloc[item]
    title = str(title) if isinstance(title, str) and title else None
    joined = CATEGORY_SEPARATOR.join(map(str, categories)) if categories is not None and len(categories) else None
    return title, joined


def item_description(sids: SemanticIds, catalog: pd.DataFrame, item: int) -> str:
    """``<SID>, its title is "<title>", its categories are "<A > B > C>"`` (a missing part is left out)."""
    title, categories = title_and_categories(catalog, item)
    text = sids.sid_string(item)
    if title is not None:
        text += f', its title is "{title}"'
    if categories is not None:
        text += f', its categories are "{categories}"'
    return text


def item_text_to_sid(sids: SemanticIds, catalog: pd.DataFrame, item: int) -> str | None:
    """The reverse grounding line, text first: ``The item whose title is "<title>" and whose categories are
    "<A > B>" is <SID>`` (None for an item without text)."""
    title, categories = title_and_categories(catalog, item)
    parts = ([f'whose title is "{title}"'] if title is not None else []) + \
        ([f'whose categories are "{categories}"'] if categories is not None else [])
    if not parts:
        return None
    return f"The item {' and '.join(parts)} is {sids.sid_string(item)}"


def cpt_sequences(data: TrainData, corpus: str) -> list[np.ndarray]:
    """The purchase sequences CPT reads: training items only (``train``), or, as the study did (``paper``),
    each user's purchases up to and including the validation item. A test target is never visible here."""
    if corpus == "train":
        return [np.asarray(seq) for seq in data.train_sequences]
    if corpus == "paper":
        return [np.append(seq, target) for seq, target in zip(data.train_sequences, data.valid_targets)]
    raise ValueError(f"CPT corpus {corpus!r}: expected one of {CPT_CORPORA}")


def cpt_corpus(data: TrainData, sids: SemanticIds, *, corpus: str = "train", items_per_line: int = 0,
               item_lines: bool = True) -> list[str]:
    """The item-grounding corpus: user lines (each item as :func:`item_description`, ``items_per_line`` items a
    line, 0 for a whole sequence), then, with ``item_lines``, both directions for every item of the catalog:
    SID then text, and text then SID (:func:`item_text_to_sid`). Item lines carry catalog text only, no
    interaction, so they cover all items (every item's SID must be learnt to be recommended)."""
    return [line for _, line in cpt_corpus_rows(data, sids, corpus=corpus, items_per_line=items_per_line,
                                                item_lines=item_lines)]


def cpt_corpus_rows(data: TrainData, sids: SemanticIds, *, corpus: str = "train", items_per_line: int = 0,
                    item_lines: bool = True) -> list[tuple[int | None, str]]:
    """:func:`cpt_corpus` with the user each line was written from (None for item lines), for the leakage audit."""
    rows: list[tuple[int | None, str]] = []
    for user, sequence in enumerate(cpt_sequences(data, corpus)):
        step = items_per_line if items_per_line > 0 else max(len(sequence), 1)
        for start in range(0, len(sequence), step):
            chunk = sequence[start:start + step]
            rows.append((user, history_text(item_description(sids, data.catalog, int(item)) for item in chunk)))
    if item_lines:
        for item in range(1, data.n_items + 1):
            rows.append((None, item_description(sids, data.catalog, item)))
            reverse = item_text_to_sid(sids, data.catalog, item)
            if reverse is not None:
                rows.append((None, reverse))
    return rows


def chat_head(tokenizer: Any, user_text: str, assistant_prefix: str = "") -> str:
    """System and user turn through the tokenizer's chat template, then ``assistant_prefix`` written literally:
    what a model continues when it writes its own assistant turn (OneRec-Think's rationale after ``<think>``)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + assistant_prefix


def chat_prompt(tokenizer: Any, user_text: str, assistant_prefix: str = ASSISTANT_PREFIX) -> str:
    """System and user turn through the tokenizer's chat template, then the assistant turn up to its SID:
    ``... assistant\\n<think></think> <|sid_begin|>`` (what constrained decoding continues)."""
    return chat_head(tokenizer, user_text, assistant_prefix) + SID_BEGIN


def recent(history: Sequence[int], max_items: int) -> Sequence[int]:
    """The last ``max_items`` items of a history (all of them for ``max_items <= 0``)."""
    return history[-max_items:] if max_items > 0 else history
