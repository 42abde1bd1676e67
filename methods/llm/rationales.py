"""Rationales for OneRec-Think-style CoT SFT: the study's two templates, a teacher-LLM plug-in, and perturbations.

A rationale explains a purchase: it is built from the history the model sees (the prompt's last ``max_history``
items) and the item bought next. In CoT SFT that item is the training target (the last training item), in the
perturbation analysis the validation target; a test item never enters a rationale.

Templates (DESIGN.md, "The study's recipes" 4, verbatim):

- ``template-category``: ``The user is likely to buy items in the {target category} category.``
- ``template-extended``: ``The user demonstrates interest in {frequent categories} products. By identifying the
  user's preference in {characteristics}, we can predict the user's purchase of {target categories}, for example,
  a {item title}.``

How the slots are filled (the study names them only), and why:

- an item's categories are the catalog's ``categories`` list: a path from the root on Amazon (``Beauty > Skin Care >
  Face``), the genres on MovieLens (listed alphabetically, so "deepest" there means the last genre listed);
- *target category*: the most specific category of the target, the last entry of its list (a leaf such as
  ``Face`` says more than the root ``Beauty`` every Amazon Beauty item shares);
- *target categories*: the target's whole list as the catalog text writes it (``A > B > C``, the CPT corpus's
  form; OneRec-Think's own reasoning-activation data writes the full category string there too);
- *frequent categories*: the (at most) two most frequent most-specific categories of the history items, ties to
  the more recent one, ``A and B``;
- *characteristics*: the (at most) three most frequent title words of the history items (letters only, at least
  three of them, common English and packaging words left out), ties to the more recent one: the product
  attributes a category does not name (``matte``, ``shampoo``); the frequent categories when no word is left;
- *item title*: the target's title.

Without the text a template's slot needs (no categories for the target; or, for the extended template, no
title) the rationale is empty, so the example reads ``<think></think>`` as in SFT (OneRec-Think's data does the
same for items without metadata).

``teacher``: a rationale written by a teacher LLM behind an OpenAI-compatible chat-completions endpoint, given
the history and the next item (:class:`TeacherClient`); answers are cached on disk, keyed by endpoint, model and
messages, so that a rerun makes no request.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter

import numpy as np
import pandas as pd

from bench.errors import GRBenchError
from bench.paths import cache_dir
from bench.results import write_atomically
from methods.llm.prompts import CATEGORY_SEPARATOR, THINK_CLOSE, THINK_OPEN, title_and_categories

TEMPLATE_CATEGORY = "The user is likely to buy items in the {target_category} category."
TEMPLATE_EXTENDED = (
    "The user demonstrates interest in {frequent_categories} products. By identifying the user's preference in "
    "{characteristics}, we can predict the user's purchase of {target_categories}, for example, a {item_title}."
)
TEMPLATES = {"template-category": TEMPLATE_CATEGORY, "template-extended": TEMPLATE_EXTENDED}
RATIONALES = (*TEMPLATES, "teacher")
FREQUENT_CATEGORIES = 2
CHARACTERISTICS = 3
STOP_WORDS = frozenset(
    "the and for with from this that your you our its are was were has have had not but all any can will into "
    "out off over under more most new set pack count size ounce ounces inch inches piece pieces edition "
    "version volume vol part".split()
)
WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]")
TEACHER_SYSTEM = "You explain the purchases of online shoppers, briefly and concretely."
TEACHER_MAX_WORDS = 60
TEACHER_API_KEY_ENV = "GRBENCH_TEACHER_API_KEY"  # sent as a bearer token when set (hosted endpoints need one)


# ------------------------------------------------------------------------------------------- catalog text

def categories_of(catalog: pd.DataFrame, item: int) -> list[str]:
    """An item's category list (a path from the root, or genres); empty when it has none."""
    categories = catalog["categories"].iloc[item]
    return [str(c) for c in categories] if categories is not None else []


def title_words(title: str | None) -> list[str]:
    """Lower-cased content words of a title (letters only, at least three, no stop words)."""
    if not title:
        return []
    return [word for word in (w.lower() for w in WORD.findall(title)) if len(word) >= 3 and word not in STOP_WORDS]


def most_frequent(values_per_item: Sequence[Sequence[str]], count: int) -> list[str]:
    """The ``count`` most frequent values over items in time order; ties go to the more recent value."""
    counts: Counter[str] = Counter()
    last_seen: dict[str, int] = {}
    for position, values in enumerate(values_per_item):
        for value in values:
            counts[value] += 1
            last_seen[value] = position
    return sorted(counts, key=lambda value: (-counts[value], -last_seen[value]))[:count]


def enumeration(words: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


@dataclass(frozen=True)
class RationaleSlots:
    """The values a template is filled with (see the module docstring); None where the catalog lacks the text."""

    target_category: str | None
    target_categories: str | None
    frequent_categories: str | None
    characteristics: str | None
    item_title: str | None


def rationale_slots(catalog: pd.DataFrame, history: Sequence[int], target: int) -> RationaleSlots:
    """The slots for a purchase of ``target`` after ``history``."""
    title, _ = title_and_categories(catalog, target)
    target_path = categories_of(catalog, target)
    frequent = most_frequent([categories_of(catalog, int(item))[-1:] for item in history], FREQUENT_CATEGORIES)
    words = most_frequent([title_words(title_and_categories(catalog, int(item))[0]) for item in history],
                          CHARACTERISTICS)
    return RationaleSlots(
        target_category=target_path[-1] if target_path else None,
        target_categories=CATEGORY_SEPARATOR.join(target_path) if target_path else None,
        frequent_categories=enumeration(frequent) if frequent else None,
        characteristics=enumeration(words or frequent) if words or frequent else None,
        item_title=title,
    )


def template_rationale(kind: str, catalog: pd.DataFrame, history: Sequence[int], target: int) -> str:
    """The ``kind`` template filled for a purchase of ``target`` after ``history`` ("" when a slot it uses has no
    text)."""
    if kind not in TEMPLATES:
        raise GRBenchError(f"rationale template {kind!r}: expected one of {', '.join(TEMPLATES)}")
    slots = vars(rationale_slots(catalog, history, target))
    used = [field for _, field, _, _ in Formatter().parse(TEMPLATES[kind]) if field]
    return "" if any(slots[field] is None for field in used) else TEMPLATES[kind].format(**slots)


# ------------------------------------------------------------------------------------------- perturbations

def _tidy(text: str) -> str:
    return re.sub(r"\s+([,.])", r"\1", re.sub(r"\s+", " ", text)).strip()


def remove_target_category(text: str, catalog: pd.DataFrame, target: int) -> str:
    """``text`` without any mention of the target's categories: its whole path first, then each category name
    (longest first, whole words), wherever it stands (also inside the frequent categories)."""
    path = categories_of(catalog, target)
    for name in [CATEGORY_SEPARATOR.join(path), *sorted(path, key=len, reverse=True)]:
        if name:
            text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", "", text)
    return _tidy(text)


def drop_words(text: str, count: int, rng: np.random.Generator) -> str:
    """``text`` with ``count`` words (split at spaces) removed at random positions."""
    words = text.split()
    dropped = set(rng.choice(len(words), size=min(count, len(words)), replace=False).tolist()) if words else set()
    return " ".join(word for position, word in enumerate(words) if position not in dropped)


def add_noise_words(text: str, count: int, rng: np.random.Generator, vocabulary: Sequence[str]) -> str:
    """``text`` with ``count`` words of ``vocabulary`` inserted at random positions."""
    words = text.split()
    for _ in range(count):
        words.insert(int(rng.integers(len(words) + 1)), vocabulary[int(rng.integers(len(vocabulary)))])
    return " ".join(words)


def noise_vocabulary(catalog: pd.DataFrame) -> list[str]:
    """Every title word of the catalog (catalog text only, no interaction): where noise words come from."""
    titles = catalog["title"].iloc[1:]
    words = sorted({word for title in titles if isinstance(title, str) for word in title_words(title)})
    if not words:
        raise GRBenchError("the catalog's titles hold no word to draw noise words from")
    return words


# ------------------------------------------------------------------------------------------- teacher LLM

def teacher_prompt(catalog: pd.DataFrame, history: Sequence[int], target: int,
                   max_words: int = TEACHER_MAX_WORDS) -> str:
    """What the teacher reads: the history (title and categories, oldest first) and the next purchase."""

    def described(item: int) -> str:
        title, categories = title_and_categories(catalog, int(item))
        return (title or "an item without a title") + (f" (categories: {categories})" if categories else "")

    lines = [f"{position}. {described(item)}" for position, item in enumerate(history, 1)]
    return ("A user bought these items, oldest first:\n" + "\n".join(lines) +
            f"\nThe user's next purchase was: {described(target)}.\nIn at most {max_words} words, explain which "
            "preferences shown by the history lead to this next purchase. Answer with the explanation only.")


def clean_teacher_text(text: str) -> str:
    """The teacher's answer as one line, without a reasoning model's own ``<think>`` block (its ``</think>`` would
    end the rationale early)."""
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    return _tidy(text.replace(THINK_OPEN, " "))


@dataclass(frozen=True)
class TeacherClient:
    """Rationales from an OpenAI-compatible chat-completions endpoint, cached on disk.

    ``url``: the server's base (``http://host:8000/v1``) or the full ``.../chat/completions`` endpoint. Greedy
    (temperature 0) so that the teacher's answer is reproducible wherever the server allows it."""

    url: str
    model: str
    timeout: float = 120.0
    max_tokens: int = 256
    folder: Path | None = None  # default: <GRBENCH_CACHE>/teacher-rationales

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def cache_path(self, messages: list[dict[str, str]]) -> Path:
        key = json.dumps({"url": self.endpoint, "model": self.model, "messages": messages}, sort_keys=True)
        folder = self.folder if self.folder is not None else cache_dir() / "teacher-rationales"
        return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def rationale(self, prompt: str) -> str:
        """The teacher's answer to ``prompt``: from the cache, else one request (then cached)."""
        messages = [{"role": "system", "content": TEACHER_SYSTEM}, {"role": "user", "content": prompt}]
        path = self.cache_path(messages)
        if path.is_file():
            return json.loads(path.read_text())["rationale"]
        answer = clean_teacher_text(self.request(messages))
        write_atomically(path, json.dumps({"endpoint": self.endpoint, "model": self.model, "messages": messages,
                                           "rationale": answer}, indent=1).encode())
        return answer

    def request(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get(TEACHER_API_KEY_ENV):
            headers["Authorization"] = f"Bearer {os.environ[TEACHER_API_KEY_ENV]}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:200]
            raise GRBenchError(f"teacher endpoint {self.endpoint} answered HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:  # refused, unknown host, timeout
            reason = getattr(error, "reason", error)
            raise GRBenchError(f"teacher endpoint {self.endpoint} is unreachable ({reason}); start an "
                               "OpenAI-compatible server there (e.g. `vllm serve <model>`) and set teacher_url and "
                               "teacher_model, or use rationale=template-category") from None
        except json.JSONDecodeError:
            raise GRBenchError(f"teacher endpoint {self.endpoint} did not answer with JSON") from None
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise GRBenchError(f"teacher endpoint {self.endpoint} returned no chat completion: "
                               f"{json.dumps(reply)[:200]}") from None


@dataclass(frozen=True)
class RationaleWriter:
    """Writes the rationale of one purchase in the configured way (a template, or the teacher)."""

    kind: str
    catalog: pd.DataFrame
    teacher: TeacherClient | None = None

    def __post_init__(self) -> None:
        if self.kind not in RATIONALES:
            raise GRBenchError(f"rationale {self.kind!r}: expected one of {', '.join(RATIONALES)}")
        if self.kind == "teacher" and self.teacher is None:
            raise GRBenchError("rationale=teacher needs teacher_url and teacher_model (an OpenAI-compatible endpoint)")

    def write(self, history: Sequence[int], target: int) -> str:
        if self.kind == "teacher":
            return self.teacher.rationale(teacher_prompt(self.catalog, history, target))
        return template_rationale(self.kind, self.catalog, history, target)
