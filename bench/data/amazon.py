"""``beauty``, ``sports``, ``toys``: the Amazon review data 2014 (McAuley lab), 5-core, with item text.

Two forms of the same data are read, and the dataset records which one it came from (``info["form"]``):

- **S3-Rec** (preferred: the study, TIGER and the published baselines use it): ``$GRBENCH_DATA/amazon2014-s3rec/``
  with ``<Category>.txt`` (one user a line, items in time order, as released with S3-Rec) and, where present,
  ``<Category>.items.jsonl`` (titles and category paths) and ``<Category>_item2attributes.json``. The sequence
  file must be the release itself (its sha256 is checked); metadata must describe exactly its items.
- **McAuley** (downloaded when the S3-Rec form is absent): the raw review and meta files, 5-core filtered here.
  Ties in time and the filter make its split differ from S3-Rec's, so its rows never share a table with them
  (another split fingerprint).

HTML entities in titles and categories (``&amp;``, ``&quot;``, kept in the raw metadata) are decoded, so that the
text models read is the same whichever form or category it came from.

The McAuley files live in ``$GRBENCH_DATA/amazon2014/``: ``reviews_<Category>_5.json.gz`` (JSON
lines) and ``meta_<Category>.json.gz`` (one Python literal dict a line). They are downloaded on first
use, resumably; files put there by hand are used as they are, without touching the network.

A completed download is checked to decompress fully and its sha256 is written beside it
(``<file>.sha256``, ``sha256sum`` format), so a file that later changes or rots is reported instead of
silently giving other numbers.

Hostile or damaged content: a review needs string ids without whitespace or control characters and a
finite number as its time (negative ones are kept: they only order events), else the load fails naming
the file and line; undecodable bytes are allowed only in the review fields that are not read. A file
with no reviews, or none left after the 5-core filter, is an error. Undecodable bytes in a meta line
become U+FFFD; the items whose title, brand or categories hold one are counted in the dataset's
``info["items_with_undecodable_text"]`` (present only where there are some). Reviewed items without a
meta line are counted in ``info["items_without_meta"]`` and have no text.
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import html
import http.client
import json
import math
import re
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from rich import progress as rp
from rich.console import Console

from bench.data import register_source
from bench.data.base import ID_FORMAT, Dataset, id_problem, make_catalog, make_interactions
from bench.data.seqfile import metadata_paths, read_item_metadata, read_sequences
from bench.errors import DataError, GRBenchError
from bench.paths import data_dir

BASE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
# source name -> (category, the published size of its 5-core file)
CATEGORIES = {
    "beauty": ("Beauty", "22,363 users, 12,101 items, 198,502 reviews"),
    "sports": ("Sports_and_Outdoors", "35,598 users, 18,357 items, 296,337 reviews"),
    "toys": ("Toys_and_Games", "19,412 users, 11,924 items, 167,597 reviews"),
}
TITLES = {"beauty": "Beauty", "sports": "Sports", "toys": "Toys"}  # as the study's tables name them
# Official checksums by file name. None are published, so this stays empty unless someone verifies one.
KNOWN_SHA256: dict[str, str] = {}
S3REC_FOLDER = "amazon2014-s3rec"
# sha256 of the sequence files as released with S3-Rec (RUCAIBox/CIKM2020-S3Rec, data/), as the shared data
# folder's README lists them: a file cut short or edited would silently give other users and other numbers
S3REC_SHA256 = {
    "Beauty.txt": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
    "Sports_and_Outdoors.txt": "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
    "Toys_and_Games.txt": "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f",
}
S3REC_FORM = "S3-Rec release"
MCAULEY_FORM = "McAuley 5-core files, filtered here"
CORE = 5
TIMEOUT_S = 10  # urllib's one timeout: connecting (fail at once offline) and each read of a transfer
ATTEMPTS = 5  # a transfer that stalls after making progress is resumed this many times in all
CHUNK = 1 << 20
REVIEW_KEYS = ("reviewerID", "asin", "unixReviewTime")
REVIEW_FORMAT = "a JSON object with keys reviewerID, asin and unixReviewTime"
META_FORMAT = "a Python literal dict with an 'asin' key"
GZIP_ERRORS = (OSError, EOFError, zlib.error)  # bad header or CRC, truncation, bad deflate data
# Finds a meta line's asin without parsing it: ast.literal_eval is the slow part of loading, and
# most meta lines describe items that have no 5-core reviews.
ASIN_PATTERN = re.compile(rb"""['"]asin['"]\s*:\s*['"]([^'"]*)['"]""")


def amazon_dir() -> Path:
    """Where the Amazon 2014 files are kept (and where to put them by hand)."""
    return data_dir() / "amazon2014"


def file_names(category: str) -> tuple[str, str]:
    """The reviews and meta file names of a category, as published."""
    return f"reviews_{category}_5.json.gz", f"meta_{category}.json.gz"


# ---------------------------------------------------------------------------------------------- download


def download(url: str, target: Path) -> None:
    """Fetches ``url`` to ``target`` through ``<target>.part``, resuming whatever an earlier run left.

    A connection that cannot be opened fails at once; one that breaks after delivering bytes is
    resumed up to ``ATTEMPTS`` times. Raises ``OSError`` or ``http.client.HTTPException``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    for attempt in range(1, ATTEMPTS + 1):
        before = _size(part)
        try:
            _fetch(url, part)
            break
        except (OSError, http.client.HTTPException):
            if attempt == ATTEMPTS or _size(part) <= before:
                raise
    part.replace(target)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _fetch(url: str, part: Path) -> None:
    """One request: asks for the bytes after the end of ``part`` and appends them."""
    offset = _size(part)
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the .part is as long as the file or longer: start over
            part.unlink()
            return _fetch(url, part)
        raise
    with response:
        start, total = _resume_point(response, offset)
        name = url.rsplit("/", 1)[-1]
        with part.open("ab" if start else "wb") as handle, _progress(name, total, start) as advance:
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                advance(len(chunk))
    if total is not None and _size(part) != total:
        raise ConnectionError(f"connection closed after {_size(part):,} of {total:,} bytes")


def _resume_point(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """Where the response's body starts in the file, and the file's total size if the server says."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range") or ""
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
        if not match or int(match[1]) != offset:
            raise ConnectionError(f"asked for bytes from {offset}, got Content-Range {content_range!r}")
        return offset, int(match[2]) if match[2].isdigit() else None
    length = response.headers.get("Content-Length") or ""  # a 200 answer is the whole file: Range ignored
    return 0, int(length) if length.isdigit() else None


@contextmanager
def _progress(name: str, total: int | None, completed: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr where the size is known; otherwise nothing to show progress against."""
    if total is None:
        yield lambda _: None
        return
    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.DownloadColumn(),
               rp.TransferSpeedColumn(), rp.TimeRemainingColumn())
    with rp.Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(name, total=total, completed=completed)
        yield functools.partial(progress.advance, task)


def _download_failure(url: str, error: Exception, paths: tuple[Path, Path]) -> str:
    reason = error.reason if type(error) is urllib.error.URLError else error
    partial = [p.name for p in paths if p.with_name(p.name + ".part").is_file()]
    return (
        f"could not download {url} ({reason}). Without a network, get {paths[0].name} and {paths[1].name} "
        f"from {BASE_URL} elsewhere and put them at {paths[0]} and {paths[1]}; GRBENCH_DATA sets the data "
        f"directory (now {data_dir()})" + ("; run again to resume the partial download" if partial else "")
    )


def local_paths(category: str) -> tuple[Path, Path]:
    """Where the category's reviews and meta files are (or will be once downloaded)."""
    reviews_name, meta_name = file_names(category)
    return amazon_dir() / reviews_name, amazon_dir() / meta_name


def pending_downloads(category: str, argument: str | None = None) -> list[Path]:
    """The category's files not downloaded yet (none where its S3-Rec form is here)."""
    if uses_s3rec(category):
        return []
    return [path for path in local_paths(category) if not path.is_file()]


def s3rec_sequences(category: str) -> Path:
    """Where the category's S3-Rec sequence file is (its metadata files sit beside it)."""
    return data_dir() / S3REC_FOLDER / f"{category}.txt"


def uses_s3rec(category: str) -> bool:
    """Whether the category loads from its S3-Rec form: its sequence file is in the data directory. S3-Rec
    metadata without the sequence file is an error: it says the S3-Rec form was meant, and loading the McAuley
    files instead (other users, another split) would not be what was asked for."""
    sequences = s3rec_sequences(category)
    if sequences.is_file():
        return True
    stray = [path for path in metadata_paths(sequences) if path.exists()]
    if stray:
        raise DataError(stray[0], f"{sequences.name} is not beside it: the S3-Rec form of {category} needs its "
                        "sequence file", expected=f"{sequences} (as released with S3-Rec), or no S3-Rec file of "
                        f"{category} at all to use the McAuley files in {amazon_dir()}")
    return False


def ensure_files(category: str) -> tuple[Path, Path]:
    """The category's reviews and meta files, downloaded if absent and checked against known checksums."""
    paths = local_paths(category)
    for path in paths:
        if not path.is_file():
            url = BASE_URL + path.name
            try:
                download(url, path)
            except (OSError, http.client.HTTPException) as error:
                raise GRBenchError(_download_failure(url, error, paths)) from error
            _record_checksum(path)
        check_checksum(path)
    return paths


# ------------------------------------------------------------------------------------ integrity


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


@contextmanager
def _gzip_errors(path: Path, where: Callable[[], str] = lambda: "") -> Iterator[None]:
    """Turns a damaged gzip stream into a DataError naming the file (and how far reading got)."""
    try:
        yield
    except GZIP_ERRORS as error:
        raise DataError(path, f"damaged gzip file{where()} ({error}); delete it to download again",
                        expected="a complete gzip file") from None


def check_gzip(path: Path) -> None:
    """Decompresses the whole file: a truncated or corrupted download fails here, not halfway into a run."""
    with _gzip_errors(path), gzip.open(path, "rb") as handle:
        while handle.read(CHUNK):
            pass


def _record_checksum(path: Path) -> None:
    """Checks a fresh download and writes its sha256 beside it; a bad download is deleted, not kept."""
    try:
        check_gzip(path)
    except DataError:
        path.unlink()
        raise
    _sidecar(path).write_text(f"{sha256_of(path)}  {path.name}\n")


def check_checksum(path: Path) -> None:
    """Compares the file with its recorded and known sha256 (where there are any)."""
    sidecar = _sidecar(path)
    recorded = sidecar.read_text(encoding="ascii", errors="replace") if sidecar.is_file() else None
    expected = {sidecar.name: (recorded.split() or [""])[0].lower()} if recorded is not None else {}
    if path.name in KNOWN_SHA256:
        expected["the published checksum"] = KNOWN_SHA256[path.name].lower()
    if not expected:
        return
    actual = sha256_of(path)
    for source, digest in expected.items():
        if digest != actual:
            raise DataError(path, f"sha256 {actual} differs from {digest} in {source}: corrupt or changed; "
                            "delete it to download again")


# ------------------------------------------------------------------------------------------ parsing


def gzip_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Streams the non-blank lines of a gzip file with their 1-based numbers."""
    line_number = 0
    with _gzip_errors(path, lambda: f" after line {line_number}"), gzip.open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield line_number, raw


def read_reviews(path: Path) -> pd.DataFrame:
    """Reads (user, item, timestamp) in file order; the review text and rating are not needed."""
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    for line_number, raw in gzip_lines(path):
        # Undecodable bytes in text we do not use (the review itself) must not fail the load; in an id they do.
        try:
            text, undecodable = raw.decode("utf-8"), False
        except UnicodeDecodeError:
            text, undecodable = raw.decode("utf-8", errors="replace"), True
        try:
            row = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise DataError(path, f"invalid JSON ({error})", line=line_number,
                            expected=REVIEW_FORMAT) from None
        missing = [key for key in REVIEW_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise DataError(path, f"no {', '.join(missing)}", line=line_number, expected=REVIEW_FORMAT)
        for key in ("reviewerID", "asin"):
            value = row[key]
            problem = id_problem(value) if isinstance(value, str) else f"id {value!r} is not a string"
            if problem is None and undecodable and "\ufffd" in value:
                problem = f"id {value!r} has bytes that are not UTF-8"
            if problem:
                raise DataError(path, problem, line=line_number, field=key, expected=ID_FORMAT)
        time = row["unixReviewTime"]
        if isinstance(time, bool) or not isinstance(time, (int, float)) or not _finite(time):
            raise DataError(path, f"timestamp {time!r}", line=line_number, field="unixReviewTime",
                            expected="a finite number of seconds")
        users.append(str(row["reviewerID"]))
        items.append(str(row["asin"]))
        times.append(float(time))
    return pd.DataFrame({"user": users, "item": items, "timestamp": times})


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer too large for a float
        return False


def read_meta(path: Path, wanted: set[str]) -> dict[str, dict]:
    """Catalog rows for the ``wanted`` items (the first meta line of each), parsed as Python literals."""
    rows: dict[str, dict] = {}
    for line_number, raw in gzip_lines(path):
        found = ASIN_PATTERN.search(raw)
        if found and found[1].decode("utf-8", errors="replace") not in wanted:
            continue
        try:
            row = ast.literal_eval(raw.decode("utf-8", errors="replace").strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
            raise DataError(path, f"not a Python literal ({type(error).__name__}: {error})", line=line_number,
                            expected=META_FORMAT) from None
        if not isinstance(row, dict) or "asin" not in row:
            raise DataError(path, "no 'asin' key", line=line_number, expected=META_FORMAT)
        item = str(row["asin"])
        if item in wanted and item not in rows:
            rows[item] = {"item": item, "title": _text(row.get("title")), "categories": _first_path(row),
                          "brand": _text(row.get("brand"))}
    return rows


def _text(value: object) -> str | None:
    """A title, brand or category name as models should read it: HTML entities decoded (twice where the source
    encoded them twice, as Beauty's ``&amp;#8482``); empty ones are missing."""
    text = "" if value is None else str(value)
    for _ in range(2):
        text = html.unescape(text)
    return text.strip() or None


def _first_path(row: dict) -> list[str]:
    """The first category path (``categories`` is a list of paths, most items have one)."""
    paths = row.get("categories")
    if isinstance(paths, (list, tuple)) and paths and isinstance(paths[0], (list, tuple)):
        return [name for name in map(_text, paths[0]) if name]
    return []


# ---------------------------------------------------------------------------------------- the source


def k_core(frame: pd.DataFrame, k: int) -> tuple[pd.DataFrame, int]:
    """Drops users and items with fewer than ``k`` events until none is left; returns the rounds taken.

    Each event counts (repeated reviews of an item too); dropping one side can push the other below
    ``k``, hence the loop.
    """
    rounds = 0
    while True:
        keep = (frame.groupby("user")["item"].transform("size") >= k) & (
            frame.groupby("item")["user"].transform("size") >= k)
        if keep.all():
            return frame, rounds
        frame = frame[keep]
        rounds += 1


def _counts(frame: pd.DataFrame, suffix: str) -> dict[str, int]:
    return {f"users_{suffix}": frame["user"].nunique(), f"items_{suffix}": frame["item"].nunique(),
            f"interactions_{suffix}": len(frame)}


def load_amazon(name: str, category: str, argument: str | None = None) -> Dataset:
    """Loads one category from its S3-Rec form where the data directory holds it, else from the McAuley files."""
    if uses_s3rec(category):
        return load_s3rec(name, category)
    return load_mcauley(name, category)


def check_release(path: Path) -> None:
    """The S3-Rec sequence file is the released one, byte for byte (where its checksum is known)."""
    expected = S3REC_SHA256.get(path.name)
    if expected is not None and (actual := sha256_of(path)) != expected:
        raise DataError(path, f"sha256 {actual} is not that of the S3-Rec release ({expected}): the file was "
                        f"changed or cut short; a changed file loads as seq:{path}, under a name of its own",
                        expected="the sequence file as released with S3-Rec")


def load_s3rec(name: str, category: str) -> Dataset:
    """The S3-Rec release of one category: the sequence file in time order (the position is the timestamp), with
    the titles and category paths of ``<Category>.items.jsonl`` and the attribute ids of
    ``<Category>_item2attributes.json`` where present; metadata must describe exactly the file's items."""
    path = s3rec_sequences(category)
    try:
        check_release(path)
        users, items, positions = read_sequences(path)
        metadata = read_item_metadata(path, known_items=set(items))
    except OSError as error:  # unreadable
        raise DataError(error.filename or path, f"cannot read ({error.strerror or error})") from None
    rows = [{**row, "title": _text(row.get("title")), "brand": _text(row.get("brand")),
             "categories": [c for c in map(_text, row.get("categories") or []) if c]} for row in metadata]
    catalog = make_catalog(rows or [{"item": item} for item in dict.fromkeys(items)])
    if "attributes" not in catalog.columns:
        catalog["attributes"] = None
    info = {"form": S3REC_FORM, "category": category, "items_without_title": int(catalog["title"].isna().sum())}
    return Dataset(name=name, interactions=make_interactions(users, items, positions), catalog=catalog,
                   source=f"amazon2014-s3rec:{category} ({path.resolve()})", info=info)


def load_mcauley(name: str, category: str) -> Dataset:
    """Loads one category: 5-core re-filtered, events in (user, time) order with file order breaking ties."""
    reviews_path, meta_path = ensure_files(category)
    raw = read_reviews(reviews_path)
    if raw.empty:
        raise DataError(reviews_path, "no reviews", expected=f"lines of {REVIEW_FORMAT}")
    frame, rounds = k_core(raw, CORE)
    if frame.empty:
        raise DataError(reviews_path, f"no reviews left after the {CORE}-core filter ({len(raw):,} before it)",
                        expected=f"users and items with at least {CORE} reviews")
    # A stable sort of a frame still in file order: equal timestamps keep the order of the file.
    frame = frame.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    items = sorted(set(frame["item"]))
    meta = read_meta(meta_path, set(items))
    catalog = make_catalog([meta.get(item, {"item": item}) for item in items])
    info = {
        "form": MCAULEY_FORM,
        "category": category,
        "core": CORE,
        "core_rounds": rounds,
        **_counts(raw, "before_core"),
        **_counts(frame, "after_core"),
        "items_without_meta": len(items) - len(meta),
    }
    undecodable = sum(any("\ufffd" in text for text in (row["title"] or "", row["brand"] or "", *row["categories"]))
                      for row in meta.values())
    if undecodable:
        info["items_with_undecodable_text"] = undecodable
    interactions = make_interactions(frame["user"], frame["item"], frame["timestamp"])
    return Dataset(name=name, interactions=interactions, catalog=catalog, source=f"amazon2014:{category}",
                   info=info)


for _name, (_category, _size_note) in CATEGORIES.items():
    register_source(_name, f"Amazon 2014 {_category} 5-core ({_size_note}) with titles and category paths: "
                    f"$GRBENCH_DATA/{S3REC_FOLDER}/{_category}.txt where present, else the McAuley files "
                    "(downloaded on first use)", pending_downloads=functools.partial(pending_downloads, _category),
                    title=TITLES[_name])(functools.partial(load_amazon, _name, _category))
