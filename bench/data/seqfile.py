"""``seq:<path>``: one user a line, ``user item item ...`` in time order (the S3-Rec / TIGER files).

Optional metadata beside the file, found by the file's stem:
- ``<stem>_item2attributes.json``: ``{"item": [attribute ids]}`` as published with S3-Rec (no text);
- ``<stem>.items.jsonl``: one ``{"item", "title", "categories", "brand"}`` object a line.
The position in the line is the timestamp: the file already is in time order.

Ids are separated by spaces or tabs; lines end in ``\n`` or ``\r\n`` (a UTF-8 byte order mark at the
start is ignored). Any other whitespace or control character in a line (binary data, a lone ``\r``
of old Mac line endings) is an error naming the line and column, as are a user listed twice, a
line that is not UTF-8, and a metadata row that repeats an item or has fields of the wrong type.
Items of the sequences without a metadata row have no title; the split counts them
(``items_without_text``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from bench.data import dataset_name, register_source
from bench.data.base import ID_FORMAT, Dataset, id_problem, make_catalog, make_interactions
from bench.errors import DataError

LINE_FORMAT = "'user item item ...': ids separated by spaces or tabs, at least a user and one item"
# In a line (its \n or \r\n ending taken off): whitespace other than space and tab, control characters.
BAD_CHARACTER = re.compile(r"[^\S \t]|[\x00-\x08\x0a-\x1f\x7f-\x9f]")
ITEM_FORMAT = '{"item": ..., "title": ..., "categories": [...], "brand": ...}'


def utf8_lines(path: Path, expected: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of ``path``, decoded as UTF-8 (a byte order mark at the start is
    ignored); a line that is not UTF-8 is an error naming it."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                yield line_number, raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise DataError(path, "not UTF-8 text", line=line_number, expected=expected) from None


def read_sequences(path: Path) -> tuple[list[str], list[str], list[float]]:
    """Parses the sequence file into parallel user/item/position lists, with line-precise errors."""
    if not path.is_file():
        raise DataError(path, "file not found", expected=f"a sequence file of lines {LINE_FORMAT}")
    users: list[str] = []
    items: list[str] = []
    positions: list[float] = []
    first_line_of: dict[str, int] = {}
    for line_number, text in utf8_lines(path, LINE_FORMAT):
        text = text.removesuffix("\n").removesuffix("\r")
        bad = BAD_CHARACTER.search(text)
        if bad:
            raise DataError(path, f"character {bad[0]!r} at column {bad.start() + 1} (binary data, or lines "
                            "not ending in \\n?)", line=line_number, expected=LINE_FORMAT)
        tokens = text.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            raise DataError(path, f"only one id {tokens[0]!r}", line=line_number, expected=LINE_FORMAT)
        user = tokens[0]
        if user in first_line_of:
            raise DataError(path, f"user {user!r} already listed on line {first_line_of[user]}",
                            line=line_number, expected="one line per user")
        first_line_of[user] = line_number
        users.extend([user] * (len(tokens) - 1))
        items.extend(tokens[1:])
        positions.extend(range(len(tokens) - 1))
    if not users:
        raise DataError(path, "no interactions", expected=f"lines {LINE_FORMAT}")
    return users, items, [float(p) for p in positions]


def metadata_paths(path: Path) -> tuple[Path, Path]:
    """The items file and the attributes file that belong to sequence file ``path`` (either may be absent)."""
    return path.with_name(f"{path.stem}.items.jsonl"), path.with_name(f"{path.stem}_item2attributes.json")


def read_item_metadata(path: Path, known_items: set[str] | None = None) -> list[dict]:
    """Reads whichever metadata file sits beside ``path``; an empty list where there is none.

    With ``known_items`` (the items of the sequence file), metadata must describe exactly those: a row of another
    item is an error naming its line or field (the metadata belongs to another file), and so is an items file
    without a row for each of them (a file cut short). Without it, other items' rows are kept here and dropped by
    the split, and items without a row have no text, as a ``seq:`` file's metadata may describe another
    catalogue."""
    items_path, attributes_path = metadata_paths(path)

    def check_known(item: str, where: Path, **position: int | str) -> None:
        if known_items is not None and item not in known_items:
            raise DataError(where, f"item {item!r} is not in {path.name}", **position,
                            expected=f"metadata of the items of {path.name} only")

    rows: list[dict] = []
    if items_path.is_file():
        first_line_of: dict[str, int] = {}
        for line_number, line in utf8_lines(items_path, ITEM_FORMAT):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as error:
                raise DataError(items_path, f"invalid JSON ({_json_problem(error)})", line=line_number,
                                expected=ITEM_FORMAT) from None
            if not isinstance(row, dict) or "item" not in row:
                raise DataError(items_path, "no 'item' key", line=line_number, expected="a JSON object")
            _check_item_row(items_path, line_number, row)
            item = str(row["item"])
            check_known(item, items_path, line=line_number)
            if item in first_line_of:
                raise DataError(items_path, f"item {item!r} already listed on line {first_line_of[item]}",
                                line=line_number, expected="one line per item")
            first_line_of[item] = line_number
            rows.append({**row, "item": item})
        missing = sorted(set(known_items or ()) - set(first_line_of), key=lambda item: (len(item), item))
        if missing:
            raise DataError(items_path, f"no row for {len(missing):,} of the {len(known_items or ()):,} items of "
                            f"{path.name} (e.g. item {missing[0]!r}): cut short?",
                            expected=f"one row per item of {path.name}")
    if attributes_path.is_file():
        try:
            mapping = json.loads(attributes_path.read_text(encoding="utf-8-sig"))
        except (ValueError, RecursionError) as error:
            raise DataError(attributes_path, f"invalid JSON ({_json_problem(error)})",
                            expected="{item: [attribute ids]}") from None
        if not isinstance(mapping, dict):
            raise DataError(attributes_path, "not a JSON object", expected="{item: [attribute ids]}")
        by_item = {row["item"]: row for row in rows}
        for item, attribute_ids in mapping.items():
            problem = id_problem(item)
            if problem:
                raise DataError(attributes_path, problem, field=str(item), expected=ID_FORMAT)
            if not isinstance(attribute_ids, list) or not all(
                    isinstance(a, int) and not isinstance(a, bool) for a in attribute_ids):
                raise DataError(attributes_path, "attributes are not a list of integers", field=str(item),
                                expected="a list of integer attribute ids")
            check_known(str(item), attributes_path, field=str(item))
            by_item.setdefault(str(item), {"item": str(item)})["attributes"] = attribute_ids
        rows = list(by_item.values())
    return rows


def _json_problem(error: Exception) -> str:
    """What json.loads disliked: a syntax error, bad UTF-8 or a too long number (ValueErrors), deep nesting."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return error.msg if isinstance(error, json.JSONDecodeError) else str(error)


def _check_item_row(path: Path, line_number: int, row: dict) -> None:
    """An item row's id and text fields have the types the catalog holds; anything else is an error."""
    problem = id_problem(row["item"])
    if problem:
        raise DataError(path, problem, line=line_number, field="item", expected=ID_FORMAT)
    for key in ("title", "brand"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise DataError(path, f"{key} {row[key]!r} is not text", line=line_number, field=key,
                            expected="a string or null")
    categories = row.get("categories")
    if categories is not None and not (isinstance(categories, list) and all(isinstance(c, str) for c in categories)):
        raise DataError(path, f"categories {categories!r} are not a list of strings", line=line_number,
                        field="categories", expected="a list of strings or null")


@register_source("seq", "a 'user item item ...' file in time order (e.g. the shared Amazon files)",
                 argument="<path>", argument_required=True)
def load_sequence_file(argument: str | None) -> Dataset:
    try:
        path = Path(str(argument)).expanduser()
    except RuntimeError as error:  # ~name of an unknown user
        raise DataError(str(argument), f"cannot expand the path ({error})", expected="a file path") from None
    try:
        users, items, positions = read_sequences(path)
        metadata = read_item_metadata(path)
    except OSError as error:  # unreadable, a name too long, ...
        raise DataError(error.filename or path, f"cannot read ({error.strerror or error})") from None
    catalog = make_catalog(metadata) if metadata else make_catalog([{"item": i} for i in dict.fromkeys(items)])
    if "attributes" not in catalog.columns:
        catalog["attributes"] = None
    return Dataset(dataset_name(f"seq:{path}"), make_interactions(users, items, positions), catalog,
                   source=f"sequence file {path.resolve()}")
