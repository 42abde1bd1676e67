"""MovieLens-100k from the ``recbole`` wheel (``recbole/dataset_example/ml-100k``): the offline default.

Every rating counts as an interaction (implicit feedback, as in RecBole's sequential benchmarks).
Titles come from ``movie_title`` (with the release year appended), genres from ``class`` as categories.
Interactions need ids without whitespace or control characters and a finite timestamp (negative ones
are kept: they only order events); anything else, or an interactions file that is not UTF-8, is an
error naming the file, line and field. The item file is Latin-1, so any byte decodes.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from bench.compat import package_dir
from bench.data import register_source
from bench.data.base import ID_FORMAT, Dataset, id_problem, make_catalog, make_interactions
from bench.errors import DataError


def ml100k_dir() -> Path:
    """The ml-100k folder inside the installed recbole wheel."""
    return package_dir("recbole") / "dataset_example" / "ml-100k"


def read_atomic_file(path: Path, columns: list[str], encoding: str) -> list[dict[str, str]]:
    """Reads a RecBole atomic file (tab-separated, ``name:type`` header) keeping only ``columns``."""
    if not path.is_file():
        raise DataError(path, "file not found", expected="the ml-100k files shipped in the recbole wheel")
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        raise DataError(path, f"not {encoding} text", line=data[:error.start].count(b"\n") + 1) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        header = [name.split(":")[0] for name in next(reader, [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(path, f"header lacks columns {missing}", line=1, expected=f"columns {columns}")
        index = [header.index(c) for c in columns]
        rows = []
        for line_number, fields in enumerate(reader, start=2):
            if len(fields) != len(header):
                raise DataError(path, f"{len(fields)} fields", line=line_number, expected=f"{len(header)}")
            rows.append({c: fields[i] for c, i in zip(columns, index)})
    except csv.Error as error:  # e.g. a field over csv's size limit
        raise DataError(path, f"unreadable line ({error})", line=reader.line_num) from None
    return rows


@register_source("ml-100k", "MovieLens-100k (943 users, 1,682 movies, titles and genres), from the recbole wheel")
def load_ml100k(argument: str | None = None) -> Dataset:
    folder = ml100k_dir()
    inter_path = folder / "ml-100k.inter"
    inter = read_atomic_file(inter_path, ["user_id", "item_id", "timestamp"], "utf-8")
    if not inter:
        raise DataError(inter_path, "no interactions", expected="tab-separated lines after the header")
    timestamps = []
    for line_number, row in enumerate(inter, start=2):
        for field in ("user_id", "item_id"):
            problem = id_problem(row[field])
            if problem:
                raise DataError(inter_path, problem, line=line_number, field=field, expected=ID_FORMAT)
        try:
            timestamp = float(row["timestamp"])
        except ValueError:
            timestamp = math.nan
        if not math.isfinite(timestamp):
            raise DataError(inter_path, f"bad timestamp {row['timestamp']!r}", line=line_number,
                            field="timestamp", expected="a finite number")
        timestamps.append(timestamp)
    items = read_atomic_file(folder / "ml-100k.item", ["item_id", "movie_title", "release_year", "class"],
                             "latin-1")
    catalog = make_catalog(
        {
            "item": row["item_id"],
            "title": f"{row['movie_title']} ({row['release_year']})" if row["release_year"] else row["movie_title"],
            "categories": row["class"].split(),
            "brand": None,
        }
        for row in items
    )
    interactions = make_interactions([r["user_id"] for r in inter], [r["item_id"] for r in inter], timestamps)
    return Dataset("ml-100k", interactions, catalog, source=f"recbole wheel: {folder}")
