"""Hostile input: property-based tests of the loaders, the CLI and the semantic-ID cache.

Every input either loads into exactly what a simple, independent reading of the documented format
gives, or fails with a :class:`GRBenchError` that names the file (and the line, where there is one).
Any other exception, or data that differs from the reference reading, is a bug.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import json
import math
import re
import tempfile
import unicodedata
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from bench import sid
from bench.cli import main
from bench.data import load_dataset, sources
from bench.errors import DataError, GRBenchError
from bench.profiles import PROFILES
from bench.registry import methods
from bench.sid import SidConfig, build_semantic_ids, load_cached
from bench.split import leave_last_out

FUZZ = settings(max_examples=50, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=12)

TEXT = st.characters(exclude_categories=("Cs",))  # any character that can be written as UTF-8
SAFE_ID_CHARS = st.sampled_from("abcXYZ0129_-.é漢\ufeff\u200b")  # never whitespace or control characters
HOSTILE_CHARS = st.sampled_from(["\x00", "\r", "\x0b", "\x0c", "\x1c", "\x7f", "\x85", "\xa0", "\u2028", "\u3000"])
# JSON values of every type, for fields that should hold one type
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(TEXT, max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=3), inner, max_size=3),
    max_leaves=6,
)


@contextlib.contextmanager
def folder() -> Iterator[Path]:
    """A fresh folder per hypothesis example (pytest's tmp_path is shared by all examples of a test)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def is_id(value: object) -> bool:
    """The documented id rule: a non-empty string (or integer), no whitespace, no control characters."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return False
    text = str(value)
    return bool(text) and not any(c.isspace() or unicodedata.category(c) == "Cc" for c in text)


def load_or_error(spec: str):
    """The dataset, or the GRBenchError loading it raised; any other exception fails the test."""
    try:
        return load_dataset(spec), None
    except GRBenchError as error:
        return None, error


def assert_names(error: Exception | None, path: Path, line: int | None = None) -> None:
    assert isinstance(error, DataError), f"expected a DataError naming {path}, got {error!r}"
    message = str(error)
    assert str(path) in message, message
    if line:
        assert re.search(rf"{re.escape(str(path))}, line {line}\b", message), (line, message)
    assert "\n" not in message and len(message) < 2000


def rows_of(dataset) -> list[tuple[str, str, float]]:
    return list(dataset.interactions.itertuples(index=False, name=None))


# ------------------------------------------------------------------------------------------ seq:<path>


def reference_sequences(data: bytes) -> dict[str, list[str]] | int:
    """The documented sequence format read independently: ``{user: items}``, or the number of the first
    bad line (0 when no line has data)."""
    result: dict[str, list[str]] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return number
        if any(c not in " \t" and (c.isspace() or unicodedata.category(c) == "Cc") for c in text):
            return number
        ids = [token for token in re.split("[ \t]+", text) if token]
        if not ids:
            continue
        if len(ids) < 2 or ids[0] in result:
            return number
        result[ids[0]] = ids[1:]
    return result or 0


SEPARATORS = st.sampled_from([" ", "\t", "  \t "])
ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])
NOT_UTF8 = st.sampled_from([b"\xff", b"\xc3", b"\xe9t\xe9", b"\xed\xa0\x80"])  # the last: an encoded surrogate


def rare(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in ``one_in`` draws (shrinking goes to False: the well-formed case)."""
    return draw(st.sampled_from([False] * (one_in - 1) + [True]))


def token(draw: st.DrawFn, common: list[str]) -> str:
    """Mostly one of ``common`` or a safe id; sometimes any text, or an id with a hostile character."""
    kind = draw(st.sampled_from(["common"] * 5 + ["safe"] * 3 + ["any", "hostile"]))
    if kind == "common":
        return draw(st.sampled_from(common))
    if kind == "safe":
        return draw(st.text(SAFE_ID_CHARS, min_size=1, max_size=4))
    if kind == "any":
        return draw(st.text(TEXT, min_size=1, max_size=3))
    return draw(st.text(SAFE_ID_CHARS, max_size=2)) + draw(HOSTILE_CHARS) + draw(st.text(SAFE_ID_CHARS, max_size=2))


@st.composite
def sequence_files(draw: st.DrawFn) -> bytes:
    """Mostly well-formed files, with duplicate users, hostile characters, odd line endings, a byte order
    mark and bytes that are not UTF-8 mixed in."""
    lines = []
    for number in range(draw(st.integers(0, 6))):
        user = f"u{number}" if not rare(draw, 6) else token(draw, ["u0", "u1", "u2"])  # sometimes a duplicate
        items = [token(draw, ["10", "11", "12", "13"]) for _ in range(draw(st.integers(0 if rare(draw, 8) else 1, 5)))]
        ending = "\n" if not rare(draw, 5) else draw(ENDINGS)
        indent = "" if not rare(draw, 4) else draw(st.sampled_from([" ", "\t"]))
        lines.append(indent + draw(SEPARATORS).join([user, *items]) + ending)
    data = "".join(lines).encode()
    if rare(draw, 6):
        data = codecs.BOM_UTF8 + data
    if data and rare(draw, 8):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(NOT_UTF8) + data[at:]
    return data


@FUZZ
@given(data=st.one_of(sequence_files(), sequence_files(), sequence_files(), st.binary(max_size=200)))
def test_sequence_file_loads_exactly_or_names_the_line(data: bytes) -> None:
    with folder() as tmp:
        path = tmp / "fuzz.txt"
        path.write_bytes(data)
        expected = reference_sequences(data)
        dataset, error = load_or_error(f"seq:{path}")
        event("loaded" if error is None else "error")
        if isinstance(expected, dict):
            assert error is None, f"well-formed input rejected: {error}"
            assert rows_of(dataset) == [(user, item, float(position)) for user, items in expected.items()
                                        for position, item in enumerate(items)]
            assert list(dataset.catalog["item"]) == list(dict.fromkeys(i for items in expected.values() for i in items))
        else:
            assert_names(error, path, line=expected)
            assert expected or "no interactions" in str(error)


def test_huge_lines_load_and_a_huge_bad_line_gives_a_short_message(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    path.write_text("u " + " ".join(str(i) for i in range(200_000)) + "\nv 1 2 3\n")
    dataset = load_dataset(f"seq:{path}")
    assert len(dataset.interactions) == 200_003 and dataset.interactions.item.iloc[-4] == "199999"
    path.write_text("1 2 3\n" + "x" * 3_000_000 + "\n")
    with pytest.raises(DataError, match=r"huge.txt, line 2: only one id 'xxx") as error:
        load_dataset(f"seq:{path}")
    assert len(str(error.value)) < 1000


@pytest.mark.parametrize("argument", ["~no-such-user-grbench/x.txt", "x" * 300, "a\nb/" + "y" * 300, "."])
def test_unusable_sequence_paths_are_data_errors(argument: str) -> None:
    with pytest.raises(DataError) as error:
        load_dataset(f"seq:{argument}")
    assert "\n" not in str(error.value)


def reference_items(data: bytes) -> dict[str, dict] | int:
    """``<stem>.items.jsonl`` read independently: ``{item: row}`` or the number of the first bad line."""
    rows: dict[str, dict] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return number
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except (ValueError, RecursionError):
            return number
        if not isinstance(row, dict) or not is_id(row.get("item")) or str(row["item"]) in rows:
            return number
        if any(row.get(key) is not None and not isinstance(row[key], str) for key in ("title", "brand")):
            return number
        categories = row.get("categories")
        if categories is not None and not (isinstance(categories, list) and all(isinstance(c, str)
                                                                                for c in categories)):
            return number
        rows[str(row["item"])] = {"title": row.get("title"), "brand": row.get("brand"), "categories": categories or []}
    return rows


@st.composite
def item_files(draw: st.DrawFn) -> bytes:
    """Mostly well-typed rows for distinct items; sometimes a repeated item, a field of another type, a
    title that is not UTF-8, or a garbage line."""
    lines = []
    for item in draw(st.permutations(["a", "b", "c", "e", "z", 7]))[: draw(st.integers(0, 5))]:
        if rare(draw, 12):
            lines.append(draw(st.binary(max_size=30)))
            continue
        if rare(draw, 10):
            item = draw(st.sampled_from(["a", "a b", "", None, True, 1.5]) | JSON_VALUES)
        row = {"item": item}
        if draw(st.booleans()):
            row["title"] = draw(st.text(TEXT, max_size=8) | st.none()) if not rare(draw, 8) else draw(JSON_VALUES)
        if draw(st.booleans()):
            row["categories"] = (draw(st.lists(st.text(TEXT, max_size=4), max_size=3)) if not rare(draw, 8)
                                 else draw(JSON_VALUES))
        if draw(st.booleans()):
            row["brand"] = draw(st.text(TEXT, max_size=5)) if not rare(draw, 8) else draw(JSON_VALUES)
        line = json.dumps(row, ensure_ascii=draw(st.booleans())).encode()
        if "title" in row and rare(draw, 6):  # a title that is not UTF-8
            line = line.replace(b'"title": "', b'"title": "caf\xe9 \xff', 1)
        lines.append(line)
    return b"\n".join(lines) + b"\n"


@FUZZ
@given(items=item_files())
def test_item_metadata_loads_exactly_or_names_the_line(items: bytes) -> None:
    with folder() as tmp:
        path = tmp / "shop.txt"
        path.write_text("u1 a b c d\nu2 b c d e\nu3 a c\n")
        metadata = tmp / "shop.items.jsonl"
        metadata.write_bytes(items)
        expected = reference_items(items)
        dataset, error = load_or_error(f"seq:{path}")
        event("loaded" if error is None else "error")
        if isinstance(expected, int):
            assert_names(error, metadata, line=expected)
            return
        assert error is None, f"well-formed metadata rejected: {error}"
        catalog = dataset.catalog.set_index("item")
        for item, row in expected.items():
            assert catalog.loc[item, "title"] == row["title"] and catalog.loc[item, "brand"] == row["brand"]
            assert catalog.loc[item, "categories"] == row["categories"]
        # items without a metadata row (or without a title) are kept, and counted by the split
        split = leave_last_out(dataset)
        untitled = [i for i in split.item_ids[1:] if expected.get(i, {}).get("title") is None]
        assert split.stats["items_without_text"] == len(untitled)


@FUZZ
@given(attributes=st.one_of(st.binary(max_size=40), JSON_VALUES.map(json.dumps).map(str.encode),
                            *[st.dictionaries(st.sampled_from(["a", "b", "zz", "7"]), st.lists(st.integers(-3, 3),
                                              max_size=3), max_size=3).map(json.dumps).map(str.encode)] * 2,
                            st.dictionaries(st.sampled_from(["a", "", "a b", "\x00"]),
                                            st.lists(st.integers(-3, 3), max_size=3) | JSON_VALUES,
                                            max_size=3).map(json.dumps).map(str.encode)))
def test_attribute_file_loads_exactly_or_is_named(attributes: bytes) -> None:
    with folder() as tmp:
        path = tmp / "shop.txt"
        path.write_text("u1 a b c\n")
        (tmp / "shop_item2attributes.json").write_bytes(attributes)
        dataset, error = load_or_error(f"seq:{path}")
        event("loaded" if error is None else "error")
        try:
            mapping = json.loads(attributes.decode("utf-8-sig"))
        except (ValueError, RecursionError):
            mapping = None
        valid = isinstance(mapping, dict) and all(
            is_id(item) and isinstance(ids, list) and all(type(a) is int for a in ids) for item, ids in mapping.items())
        if not valid:
            assert_names(error, tmp / "shop_item2attributes.json")
            return
        assert error is None, f"well-formed attributes rejected: {error}"
        stored = {row.item: row.attributes for row in dataset.catalog.itertuples()}
        assert {item: stored[item] for item in mapping} == mapping
        assert all(attributes is None for item, attributes in stored.items() if item not in mapping)


# -------------------------------------------------------------------------------------------- ml-100k

INTER_HEADER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEADER = b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"


def reference_inter(body: bytes) -> list[tuple[str, str, float]] | int:
    """The interactions after the header, read independently; or the bad line reported (0: no rows): the
    first with the wrong number of fields, else the first with a bad id or timestamp."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return body[:error.start].count(b"\n") + 2
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    table = [line.split("\t") if line else [] for line in lines]
    short = [number for number, fields in enumerate(table, start=2) if len(fields) != 4]
    if short:
        return short[0]
    rows = []
    for number, fields in enumerate(table, start=2):
        if not is_id(fields[0]) or not is_id(fields[1]):
            return number
        try:
            timestamp = float(fields[3])
        except ValueError:
            return number
        if not math.isfinite(timestamp):
            return number
        rows.append((fields[0], fields[1], timestamp))
    return rows or 0


ANY_FIELD = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\t\n\r"), max_size=4)
ODD_TIMESTAMPS = ["", "nan", "-inf", "1e400", " 7", "1_000", "-5", "soon", "0x10"]


@st.composite
def inter_bodies(draw: st.DrawFn) -> bytes:
    """Mostly well-formed rows (users repeat: a user has many lines); sometimes a bad id, an odd
    timestamp, a wrong number of fields, or a byte that is not UTF-8."""
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        user = draw(st.sampled_from(["1", "2", "3"])) if not rare(draw, 8) else draw(ANY_FIELD)
        item = draw(st.sampled_from(["1", "2", "50"])) if not rare(draw, 8) else draw(ANY_FIELD)
        kind = draw(st.sampled_from(["int"] * 4 + ["float", "odd", "any"]))
        timestamp = {"int": st.integers(-10**6, 10**10).map(str), "float": st.floats().map(repr),
                     "odd": st.sampled_from(ODD_TIMESTAMPS), "any": ANY_FIELD}[kind]
        fields = [user, item, "3", draw(timestamp)]
        if rare(draw, 10):
            fields = fields[: draw(st.integers(0, 3))] + draw(st.lists(ANY_FIELD, max_size=2))
        rows.append("\t".join(fields))
    data = ("\n".join(rows) + draw(st.sampled_from(["", "\n"]))).encode()
    if data and rare(draw, 8):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(NOT_UTF8) + data[at:]
    return data


@dataclass
class MovieLensFolder:
    path: Path | None = None


@pytest.fixture
def movielens(monkeypatch: pytest.MonkeyPatch) -> MovieLensFolder:
    """Points the ml-100k loader at a folder each example fills (as tests/test_loaders.py does)."""
    where = MovieLensFolder()
    monkeypatch.setattr("bench.data.movielens.ml100k_dir", lambda: where.path)
    return where


@FUZZ
@given(body=st.one_of(inter_bodies(), inter_bodies(), inter_bodies(), st.binary(max_size=120)),
       title=st.binary(max_size=20).map(lambda b: bytes(c for c in b if c not in b"\t\n\r")))
def test_movielens_files_load_exactly_or_name_the_line(movielens: MovieLensFolder, body: bytes, title: bytes) -> None:
    with folder() as tmp:
        movielens.path = tmp
        (tmp / "ml-100k.inter").write_bytes(INTER_HEADER + body)
        # titles are Latin-1 in the real file: any byte is a character, nothing is an error
        (tmp / "ml-100k.item").write_bytes(ITEM_HEADER + b"1\t" + title + b"\t1995\tComedy Drama\n")
        dataset, error = load_or_error("ml-100k")
        event("loaded" if error is None else "error")
        if b"\r" in body:  # csv also ends lines at a lone \r; the reference reading does not model that
            assert error is None or str(tmp / "ml-100k.inter") in str(error)
            return
        expected = reference_inter(body)
        if isinstance(expected, int):
            assert_names(error, tmp / "ml-100k.inter", line=expected)
            assert expected or "no interactions" in str(error)
            return
        assert error is None, f"well-formed input rejected: {error}"
        assert rows_of(dataset) == expected
        assert dataset.catalog.iloc[0].title == title.decode("latin-1") + " (1995)"


# ----------------------------------------------------------------------------------------- Amazon 2014

REVIEW_IDS = ("reviewerID", "asin")


def review(user: object, item: object, time: object, text: str = "fine") -> str:
    return json.dumps({"reviewerID": user, "asin": item, "reviewText": text, "unixReviewTime": time})


CORE = [review(f"u{u}", f"i{i}", 100 + (i * 7 + u) % 3) for u in range(5) for i in range(5)]  # survives a 5-core


def reference_reviews(data: bytes) -> list[tuple[str, str, float]] | int:
    """Reviews read independently, 5-core filtered, in (user, time) order with file order breaking ties;
    or the first bad line (0: no reviews, -1: none left after the 5-core)."""
    events = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text, undecodable = raw.decode("utf-8"), False
        except UnicodeDecodeError:
            text, undecodable = raw.decode("utf-8", errors="replace"), True
        try:
            row = json.loads(text)
        except (ValueError, RecursionError):
            return number
        if not isinstance(row, dict) or any(key not in row for key in (*REVIEW_IDS, "unixReviewTime")):
            return number
        if any(not isinstance(row[key], str) or not is_id(row[key]) or (undecodable and "\ufffd" in row[key])
               for key in REVIEW_IDS):
            return number
        time = row["unixReviewTime"]
        if isinstance(time, bool) or not isinstance(time, (int, float)):
            return number
        try:
            seconds = float(time)
        except OverflowError:
            return number
        if not math.isfinite(seconds):
            return number
        events.append((row["reviewerID"], row["asin"], seconds))
    if not events:
        return 0
    while True:
        users, items = Counter(e[0] for e in events), Counter(e[1] for e in events)
        kept = [e for e in events if users[e[0]] >= 5 and items[e[1]] >= 5]
        if len(kept) == len(events):
            break
        events = kept
    return sorted(events, key=lambda e: (e[0], e[2])) if events else -1


@st.composite
def review_files(draw: st.DrawFn) -> bytes:
    """A 5-core plus reviews that are mostly well-formed (users with few reviews fall to the core filter);
    sometimes an id or time of another type or value, bytes that are not UTF-8, or a garbage line."""
    lines = [line.encode() for line in CORE] if not rare(draw, 10) else []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["review"] * 6 + ["odd id", "odd time", "not utf-8", "missing key", "garbage"]))
        if kind == "garbage":
            lines.insert(draw(st.integers(0, len(lines))), draw(st.binary(max_size=40)))
            continue
        row = {"reviewerID": draw(st.sampled_from(["u1", "u2", "new"])), "asin": draw(st.sampled_from(["i1", "i3"])),
               "unixReviewTime": draw(st.integers(-10**12, 10**12) | st.floats(-1e12, 1e12)), "reviewText": "ok"}
        if kind == "odd id":
            row[draw(st.sampled_from(REVIEW_IDS))] = draw(
                JSON_VALUES | st.text(SAFE_ID_CHARS | HOSTILE_CHARS, max_size=3))
        elif kind == "odd time":
            row["unixReviewTime"] = draw(st.sampled_from([math.nan, math.inf, 10**400, True, "May"]) | JSON_VALUES)
        elif kind == "missing key":
            del row[draw(st.sampled_from([*REVIEW_IDS, "unixReviewTime"]))]
        line = json.dumps(row).encode()
        if kind == "not utf-8":  # harmless in the review text, an error in an id
            target = draw(st.sampled_from([b'"ok"', b'"reviewerID": "', b'"asin": "']))
            line = line.replace(target, target + b"\xe9\xff", 1)
        lines.insert(draw(st.integers(0, len(lines))), line)
    return b"\n".join(lines) + b"\n"


@st.composite
def meta_files(draw: st.DrawFn) -> tuple[bytes, dict[str, bytes], bool]:
    """Meta lines with titles of arbitrary bytes for some of i0..i4; sometimes a garbage line."""
    titles = draw(st.dictionaries(st.sampled_from([f"i{i}" for i in range(5)]),
                                  st.binary(max_size=12).map(lambda b: bytes(c for c in b if c not in b"'\\\n\r\x00")),
                                  max_size=5))
    lines = [b"{'asin': '" + item.encode() + b"', 'title': '" + title + b"'}" for item, title in titles.items()]
    garbage = rare(draw, 6)
    if garbage:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.binary(min_size=1, max_size=30)))
    return b"\n".join(lines) + b"\n", titles, garbage


@pytest.fixture
def amazon_folder(monkeypatch: pytest.MonkeyPatch) -> Path:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    from bench.data.amazon import amazon_dir

    amazon_dir().mkdir(parents=True, exist_ok=True)
    return amazon_dir()


@FUZZ
@given(reviews=review_files(), meta=meta_files())
def test_amazon_files_load_exactly_or_name_the_line(amazon_folder: Path, reviews: bytes, meta) -> None:
    meta_bytes, titles, garbage = meta
    reviews_path, meta_path = amazon_folder / "reviews_Beauty_5.json.gz", amazon_folder / "meta_Beauty.json.gz"
    reviews_path.write_bytes(gzip.compress(reviews))
    meta_path.write_bytes(gzip.compress(meta_bytes))
    dataset, error = load_or_error("beauty")
    event("loaded" if error is None else "error")
    expected = reference_reviews(reviews)
    if isinstance(expected, int):
        assert_names(error, reviews_path, line=max(expected, 0))
        return
    if garbage and error is not None:  # a garbage meta line is an error unless it names an item not reviewed
        assert_names(error, meta_path)
        return
    assert error is None, f"well-formed input rejected: {error}"
    assert rows_of(dataset) == expected
    items = sorted({e[1] for e in expected})
    catalog = dataset.catalog.set_index("item")
    assert list(catalog.index) == items
    shown = {item: (titles[item].decode("utf-8", errors="replace").strip() or None) for item in items if item in titles}
    for item in items:
        assert catalog.loc[item, "title"] == shown.get(item)
    assert dataset.info["items_without_meta"] == len([i for i in items if i not in titles])
    undecodable = sum("\ufffd" in (title or "") for title in shown.values())
    assert dataset.info.get("items_with_undecodable_text", 0) == undecodable


def test_empty_files_are_named_errors(tmp_path: Path, movielens: MovieLensFolder, amazon_folder: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=rf"{re.escape(str(empty))}: no interactions"):
        load_dataset(f"seq:{empty}")
    movielens.path = tmp_path
    (tmp_path / "ml-100k.item").write_bytes(ITEM_HEADER)
    (tmp_path / "ml-100k.inter").write_bytes(b"")
    with pytest.raises(DataError, match=r"ml-100k.inter, line 1: header lacks columns"):
        load_dataset("ml-100k")
    (tmp_path / "ml-100k.inter").write_bytes(INTER_HEADER)
    with pytest.raises(DataError, match=r"ml-100k.inter: no interactions"):
        load_dataset("ml-100k")
    reviews, meta = amazon_folder / "reviews_Beauty_5.json.gz", amazon_folder / "meta_Beauty.json.gz"
    meta.write_bytes(b"")  # no meta at all: every item is counted as without meta
    for content in (b"", gzip.compress(b""), gzip.compress(b"\n \n")):
        reviews.write_bytes(content)
        with pytest.raises(DataError, match=rf"{re.escape(str(reviews))}: no reviews"):
            load_dataset("beauty")
    reviews.write_bytes(gzip.compress("\n".join(CORE).encode()))
    dataset = load_dataset("beauty")
    assert dataset.info["items_without_meta"] == 5 and not dataset.has_text


# ------------------------------------------------------------------------------------------------- CLI


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of ``python -m bench ARGV``; argparse's own errors exit through SystemExit(2)."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    assert isinstance(status, int)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def assert_one_error_line(status: int, err: str) -> None:
    assert status == 2
    lines = [line for line in err.split("\n") if line.strip()]
    assert lines and re.match(r"(python -m bench( \w+)?: )?error: ", lines[-1]), err
    assert sum(bool(re.match(r"(python -m bench( \w+)?: )?error: ", line)) for line in lines) == 1, err


NO_COMMA = st.text(st.characters(exclude_categories=("Cs",), exclude_characters=","), max_size=15)
SMALL_SYNTHETIC = "synthetic:users=20,items=12"


@FUZZ
@given(which=st.sampled_from(["methods", "profile", "datasets"]), value=NO_COMMA)
def test_cli_fuzzed_names_exit_2_with_one_error_line(capsys, monkeypatch, which: str, value: str) -> None:
    spec = value.strip()
    name = spec.partition(":")[0]
    if which == "methods":  # a known method would train: keep to unknown names
        assume(spec and spec != "all" and name not in methods())
    elif which == "profile":
        assume(value not in PROFILES)
    else:  # known sources other than seq could be large (synthetic:users=10**9) or download (beauty)
        assume(spec and (name not in sources() or name == "seq"))
    with folder() as tmp:
        monkeypatch.chdir(tmp)  # a fuzzed relative seq: path finds nothing
        options = {"methods": "pop", "profile": "smoke", "datasets": SMALL_SYNTHETIC, which: value}
        status, err = run_cli(["run", *(f"--{key}={text}" for key, text in options.items()), f"--out={tmp / 'out'}"],
                              capsys)
        assert_one_error_line(status, err)
        assert not (tmp / "out" / "results.jsonl").exists()


@FEW
@given(extra=st.lists(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n"), max_size=8),
                      max_size=2))
def test_cli_listing_commands_take_no_arguments(capsys, extra: list[str]) -> None:
    """(argparse quotes an unknown argument as it is: one with a newline would make two lines)"""
    assume(not any(arg.startswith("-h") or arg.startswith("--h") for arg in extra))  # help exits 0
    for command in ("datasets", "methods"):
        status, err = run_cli([command, *extra], capsys)
        if extra:
            assert_one_error_line(status, err)
        else:
            assert status == 0


@st.composite
def appended_lines(draw: st.DrawFn) -> bytes:
    data = draw(sequence_files())
    return data.removeprefix(codecs.BOM_UTF8)


BASE_SEQUENCES = "".join(f"base{u} " + " ".join(f"i{(u * 5 + k) % 12}" for k in range(4 + u % 3)) + "\n"
                         for u in range(20))  # 20 users, 12 items: enough for a smoke run's top 10


@FEW
@given(extra=appended_lines())
def test_cli_pop_on_a_fuzzed_sequence_file(capsys, extra: bytes) -> None:
    with folder() as tmp:
        path = tmp / "fuzz.txt"
        data = BASE_SEQUENCES.encode() + extra
        path.write_bytes(data)
        out = tmp / "out"
        status, err = run_cli(["run", "--methods=pop", "--profile=smoke", f"--datasets=seq:{path}", f"--out={out}"],
                              capsys)
        expected = reference_sequences(data)
        event(f"exit {status}")
        if isinstance(expected, dict):
            assert status == 0, err
            assert len((out / "results.jsonl").read_text().splitlines()) == 1
        else:
            assert_one_error_line(status, err)
            assert f"error: {path}, line {expected}" in err
            assert not (out / "results.jsonl").exists()


# Command-line values the loaders never see: out-of-range seeds, unusable paths, datasets too small to rank.
@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_cli_out_of_range_seed_is_a_clear_error(tmp_path, capsys, seed: str) -> None:
    status, err = run_cli(["run", "--methods=pop", "--profile=smoke", f"--datasets={SMALL_SYNTHETIC}",
                           f"--seeds={seed}", f"--out={tmp_path}"], capsys)
    assert_one_error_line(status, err)


def test_cli_nul_byte_in_out_is_a_clear_error(capsys) -> None:
    status, err = run_cli(["run", "--methods=pop", "--profile=smoke", "--out=a\x00b"], capsys)
    assert_one_error_line(status, err)


@pytest.mark.parametrize("lines", ["1 a b c d\n2 b c d e\n3 a c e\n",
                                   "".join(f"{u} {u % 12} {(u + 1) % 12} {(u + 2) % 12}\n" for u in range(16))],
                         ids=["3 items", "16 users"])
def test_cli_tiny_dataset_runs_or_is_a_clear_error(tmp_path, capsys, lines: str) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text(lines)
    status, err = run_cli(["run", "--methods=pop", "--profile=smoke", f"--datasets=seq:{path}",
                           f"--out={tmp_path / 'out'}"], capsys)
    if lines.count("\n") == 3:  # 5 items: no top-10 of distinct items exists
        assert_one_error_line(status, err)
        assert "5 items; top-10 rankings of distinct items need at least 10" in err
    else:  # 16 users: too few for a timed latency batch, which the record says instead of a number
        assert status == 0, err


# ----------------------------------------------------------------------------------- semantic-ID cache

SID_CONFIG = SidConfig(quantizer="rkmeans", source="collaborative", codebook_size=8, batch_size=64, svd_dim=8)


def sid_train():
    return leave_last_out(load_dataset("synthetic:users=40,items=30")).train_view()


def npz(codes: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, codes=codes)
    return buffer.getvalue()


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[str, object]:
    """One way to damage a cache entry: (what, how)."""
    what = draw(st.sampled_from(["truncate codes", "flip codes", "replace codes", "edit meta", "truncate meta"]))
    if what in ("truncate codes", "truncate meta"):
        return what, draw(st.floats(0, 1, exclude_max=True))
    if what == "flip codes":
        return what, (draw(st.floats(0, 1, exclude_max=True)), draw(st.integers(1, 255)))
    if what == "replace codes":
        return what, draw(st.sampled_from(["unknown token", "negative code", "float", "duplicate sid", "padding",
                                           "shape", "text", "npy"]))
    key = draw(st.sampled_from(["codebook_sizes", "fingerprint", "version", "source", "config", "stats"]))
    value = draw(JSON_VALUES | st.lists(st.integers(-2, 2**70), min_size=4, max_size=4))
    if key == "source":
        assume(not isinstance(value, str))
    if key in ("config", "stats"):
        assume(not isinstance(value, dict))
    return what, (key, value, draw(st.booleans()))


def damaged_codes(codes: np.ndarray, sizes: tuple[int, ...], how: str) -> bytes:
    codes = codes.copy()
    if how == "unknown token":
        codes[3, 1] = sizes[1]  # <s_b_{size}>: a token outside the vocabulary
    elif how == "negative code":
        codes[2, 0] = -1
    elif how == "float":
        return npz(codes + 0.5)
    elif how == "duplicate sid":
        codes[2] = codes[1]
    elif how == "padding":
        codes[0] = 0
    elif how == "shape":
        codes = codes[:-1]
    elif how == "text":
        return npz(codes.astype(str))
    elif how == "npy":
        buffer = io.BytesIO()
        np.save(buffer, codes)
        return buffer.getvalue()
    return npz(codes)


@FUZZ
@given(corruption=corruptions())
def test_a_damaged_sid_cache_is_never_used(capsys, corruption) -> None:
    train = sid_train()
    built = build_semantic_ids(train, SID_CONFIG)
    folder_, (what, how) = built.cache_path, corruption
    codes_path, meta_path = folder_ / sid.CODES_FILE, folder_ / sid.META_FILE
    codes_bytes, meta_text = codes_path.read_bytes(), meta_path.read_text()
    if what == "truncate codes":
        codes_path.write_bytes(codes_bytes[: int(how * len(codes_bytes))])
    elif what == "flip codes":
        at, mask = int(how[0] * len(codes_bytes)), how[1]
        codes_path.write_bytes(codes_bytes[:at] + bytes([codes_bytes[at] ^ mask]) + codes_bytes[at + 1:])
    elif what == "replace codes":
        codes_path.write_bytes(damaged_codes(built.codes, built.codebook_sizes, how))
    elif what == "truncate meta":
        meta_path.write_text(meta_text[: int(how * len(meta_text))])
    else:
        key, value, delete = how
        meta = json.loads(meta_text)
        if delete:
            del meta[key]
        else:
            meta[key] = value
        assume(meta != json.loads(meta_text))
        meta_path.write_text(json.dumps(meta))
    loaded = load_cached(folder_, built.fingerprint, train.n_items)
    event(f"{what}: {'loaded' if loaded is not None else 'rebuilt'}")
    err = capsys.readouterr().err
    if loaded is None:
        assert "unreadable" in err and (str(codes_path) in err or str(meta_path) in err), err
    else:  # only damage that changes nothing it holds (a zip header's timestamp, say) may load
        np.testing.assert_array_equal(loaded.codes, built.codes)
        assert (loaded.codebook_sizes, loaded.source, loaded.config, loaded.stats) == (
            built.codebook_sizes, built.source, built.config, built.stats)


def test_unknown_sid_tokens_in_the_cache_are_rebuilt_not_used(capsys) -> None:
    train = sid_train()
    built = build_semantic_ids(train, SID_CONFIG)
    codes_path = built.cache_path / sid.CODES_FILE
    codes_path.write_bytes(damaged_codes(built.codes, built.codebook_sizes, "unknown token"))
    rebuilt = build_semantic_ids(train, SID_CONFIG)
    assert not rebuilt.from_cache
    assert f"{codes_path} is unreadable" in capsys.readouterr().err
    np.testing.assert_array_equal(rebuilt.codes, built.codes)
    assert build_semantic_ids(train, SID_CONFIG).from_cache  # the rebuild repaired the entry
