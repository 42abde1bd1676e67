"""``seq:<path>``: one user a line, ``user item item ...`` in time order (the S3-Rec / TIGER files).

Optional metadata beside the file, found by the file's stem:
- ``<stem>_item2attributes.json``: ``{"item": [attribute ids]}`` as published with S3-Rec (no text);
- ``<stem>.items.jsonl``: one ``{"item", "title", "categories", "brand"}`` object a line.
The position in the line is the timestamp: the file already is in time order.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.data import register_source
from bench.data.base import Dataset, make_catalog, make_interactions
from bench.errors import DataError

LINE_FORMAT = "'user item item ...': whitespace-separated ids, at least a user and one item"


def read_sequences(path: Path) -> tuple[list[str], list[str], list[float]]:
    """Parses the sequence file into parallel user/item/position lists, with line-precise errors."""
    if not path.is_file():
        raise DataError(path, "file not found", expected=f"a sequence file of lines {LINE_FORMAT}")
    users: list[str] = []
    items: list[str] = []
    positions: list[float] = []
    first_line_of: dict[str, int] = {}
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(path, "not UTF-8 text", line=line_number, expected=LINE_FORMAT) from None
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


def read_item_metadata(path: Path) -> list[dict]:
    """Reads whichever metadata file sits beside ``path``; an empty list where there is none."""
    attributes_path = path.with_name(f"{path.stem}_item2attributes.json")
    items_path = path.with_name(f"{path.stem}.items.jsonl")
    rows: list[dict] = []
    if items_path.is_file():
        with items_path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(items_path, f"invalid JSON ({error.msg})", line=line_number,
                                    expected='{"item": ..., "title": ..., "categories": [...], "brand": ...}') from None
                if not isinstance(row, dict) or "item" not in row:
                    raise DataError(items_path, "no 'item' key", line=line_number, expected="a JSON object")
                rows.append({**row, "item": str(row["item"])})
    if attributes_path.is_file():
        try:
            mapping = json.loads(attributes_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(attributes_path, f"invalid JSON ({error})", expected="{item: [attribute ids]}") from None
        if not isinstance(mapping, dict):
            raise DataError(attributes_path, "not a JSON object", expected="{item: [attribute ids]}")
        by_item = {row["item"]: row for row in rows}
        for item, attribute_ids in mapping.items():
            if not isinstance(attribute_ids, list) or not all(isinstance(a, int) for a in attribute_ids):
                raise DataError(attributes_path, "attributes are not a list of integers", field=str(item),
                                expected="a list of integer attribute ids")
            by_item.setdefault(str(item), {"item": str(item)})["attributes"] = attribute_ids
        rows = list(by_item.values())
    return rows


@register_source("seq", "a 'user item item ...' file in time order (e.g. the shared Amazon files)",
                 argument="<path>", argument_required=True)
def load_sequence_file(argument: str | None) -> Dataset:
    path = Path(str(argument)).expanduser()
    users, items, positions = read_sequences(path)
    metadata = read_item_metadata(path)
    catalog = make_catalog(metadata) if metadata else make_catalog([{"item": i} for i in dict.fromkeys(items)])
    if "attributes" not in catalog.columns:
        catalog["attributes"] = None
    return Dataset(f"seq:{path.stem}", make_interactions(users, items, positions), catalog,
                   source=f"sequence file {path.resolve()}")
