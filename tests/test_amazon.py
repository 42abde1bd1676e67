"""The Amazon 2014 sources on small files of the real formats; the network is never used."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.data import amazon, load_dataset, parse_spec
from bench.data.amazon import BASE_URL, download
from bench.errors import DataError, GRBenchError

REVIEWS = "reviews_Beauty_5.json.gz"
META = "meta_Beauty.json.gz"


@pytest.fixture(autouse=True)
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """GRBENCH_DATA is tmp_path, and any use of the network fails the test."""
    monkeypatch.setenv("GRBENCH_DATA", str(tmp_path))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path / "amazon2014"


def gz_lines(lines: list[str]) -> bytes:
    return gzip.compress("".join(line + "\n" for line in lines).encode())


def review(user: str, item: str, time: int) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "reviewerName": "A", "helpful": [0, 0],
                       "reviewText": "fine", "overall": 5.0, "summary": "ok", "unixReviewTime": time,
                       "reviewTime": "01 1, 2014"})


def core_reviews() -> list[str]:
    """u1..u5 x i1..i5 (a 5-core), plus u6 with 4 reviews and v, whom dropping u6 cascades out via x.

    u1's i3, i1 and i5 share a timestamp and are written in that (non-alphabetical) order.
    """
    times = {"i1": 100, "i2": 50, "i3": 100, "i4": 200, "i5": 100}
    users = ("u5", "u1", "u2", "u3", "u4")
    lines = [review(u, i, times[i]) for i in ("i3", "i1", "i2", "i5", "i4") for u in users]
    lines += [review("u6", i, 1) for i in ("i1", "i2", "i3", "x")]
    lines += [review("v", i, 2) for i in ("i1", "i2", "i3", "i4", "x")]
    lines += [review(u, "x", 3) for u in ("u1", "u2", "u3")]
    return lines


META_LINES = [
    "{'asin': 'i1', 'title': 'Bio-Active Anti-Aging Serum', 'categories': [['Beauty', 'Skin Care', 'Face', "
    "'Creams & Moisturizers'], ['Beauty', 'Gifts']], 'brand': 'Olay', 'price': 15.99, "
    "'salesRank': {'Beauty': 10486}, 'related': {'also_bought': ['B0001']}, 'imUrl': 'http://x/y.jpg'}",
    "{'asin': 'i2', 'title': 'Plain Soap &amp; &quot;Water&quot;', 'imUrl': 'http://x/z.jpg'}",
    "{'asin': 'zz', 'title': 'never reviewed'}",
    "{'categories': [[]], 'asin': 'i3', 'title': \"Men's Shave Gel\", 'brand': ''}",
    "{'asin': 'i5', 'categories': [['Beauty']], 'brand': 'Acme'}",
    "{'asin': 'x', 'title': 'cut by the 5-core'}",
    "{'asin': 'i1', 'title': 'a second row for i1 is ignored'}",
]


def place(folder: Path, reviews: list[str] | bytes, meta: list[str] | bytes = META_LINES) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in ((REVIEWS, reviews), (META, meta)):
        (folder / name).write_bytes(content if isinstance(content, bytes) else gz_lines(content))


def test_parses_filters_and_orders(folder):
    place(folder, core_reviews())
    dataset = load_dataset("beauty")
    assert dataset.name == "beauty" and dataset.source == "amazon2014:Beauty"
    events = dataset.interactions
    assert sorted(set(events.user)) == ["u1", "u2", "u3", "u4", "u5"]  # u6 (4 reviews), v (cascade) dropped
    assert sorted(set(events.item)) == ["i1", "i2", "i3", "i4", "i5"]  # x dropped once u6 was
    assert list(events.user) == sorted(events.user)
    assert list(events.query("user == 'u1'").item) == ["i2", "i3", "i1", "i5", "i4"]  # ties keep file order
    assert dataset.info == {
        "form": "McAuley 5-core files, filtered here", "category": "Beauty", "core": 5, "core_rounds": 3,
        "users_before_core": 7, "items_before_core": 6, "interactions_before_core": 37,
        "users_after_core": 5, "items_after_core": 5, "interactions_after_core": 25,
        "items_without_meta": 1,
    }
    catalog = dataset.catalog.set_index("item")
    assert list(catalog.index) == ["i1", "i2", "i3", "i4", "i5"]  # only reviewed items that survived
    assert catalog.loc["i1"].to_dict() == {
        "title": "Bio-Active Anti-Aging Serum", "brand": "Olay",
        "categories": ["Beauty", "Skin Care", "Face", "Creams & Moisturizers"],  # the first path only
    }
    assert catalog.loc["i2", "brand"] is None and catalog.loc["i2", "categories"] == []
    assert catalog.loc["i2", "title"] == 'Plain Soap & "Water"'  # HTML entities decoded, as models should read it
    assert catalog.loc["i3", "title"] == "Men's Shave Gel" and catalog.loc["i3", "brand"] is None
    assert catalog.loc["i4", "title"] is None and catalog.loc["i4", "categories"] == []  # no meta row
    assert catalog.loc["i5", "title"] is None and catalog.loc["i5", "categories"] == ["Beauty"]
    assert dataset.has_text


def test_duplicate_reviews_are_separate_events(folder):
    lines = [review(u, i, 1) for u in ("a", "b", "c", "d", "e") for i in ("p", "q", "r", "s", "t")]
    place(folder, lines + [review("a", "p", 0)], META_LINES[:1])
    events = load_dataset("beauty").interactions
    assert len(events) == 26 and list(events.query("user == 'a'").item) == ["p", "p", "q", "r", "s", "t"]


def test_sources_take_no_argument():
    assert {parse_spec(name)[0].name for name in ("beauty", "sports", "toys")} == {"beauty", "sports", "toys"}
    with pytest.raises(GRBenchError, match="takes no argument"):
        parse_spec("toys:x")


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"reviewerID": "u1", "asin": ', r"line 3: invalid JSON"),
        ('{"reviewerID": "u1", "asin": "i1"}', r"line 3: no unixReviewTime"),
        ('["u1", "i1", 5]', r"line 3: no reviewerID, asin, unixReviewTime"),
        ('{"reviewerID": "u1", "asin": "i1", "unixReviewTime": "May"}', r"line 3, field 'unixReviewTime'"),
    ],
)
def test_bad_review_line_names_file_and_line(folder, bad, message):
    lines = core_reviews()
    place(folder, lines[:2] + [bad] + lines[2:])
    with pytest.raises(DataError, match=message) as error:
        load_dataset("beauty")
    assert str(folder / REVIEWS) in str(error.value)


@pytest.mark.parametrize("bad", ["{'asin': 'i2', 'title': }", "<html>not a dict</html>", "{'title': 'no'}"])
def test_bad_meta_line_names_file_and_line(folder, bad):
    place(folder, core_reviews(), META_LINES[:1] + [bad])
    with pytest.raises(DataError, match=r"meta_Beauty.json.gz, line 2: "):
        load_dataset("beauty")


def damaged(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) // 2]
    crc_at = len(data) - 8  # the gzip trailer is CRC32 then size
    return data[:crc_at] + bytes([data[crc_at] ^ 0xFF]) + data[crc_at + 1:]


@pytest.mark.parametrize("how", ["truncated", "bad crc"])
@pytest.mark.parametrize("which", [REVIEWS, META])
def test_damaged_gzip_is_a_data_error(folder, how, which):
    reviews, meta = gz_lines(core_reviews()), gz_lines(META_LINES)
    if which == REVIEWS:
        place(folder, damaged(reviews, how), meta)
    else:
        place(folder, reviews, damaged(meta, how))
    with pytest.raises(DataError, match=rf"{which}: damaged gzip file"):
        load_dataset("beauty")


def test_checksums_are_checked(folder, monkeypatch):
    place(folder, core_reviews())
    digest = hashlib.sha256((folder / REVIEWS).read_bytes()).hexdigest()
    sidecar = folder / f"{REVIEWS}.sha256"
    sidecar.write_text(f"{digest}  {REVIEWS}\n")
    load_dataset("beauty")  # matches
    sidecar.write_text("0" * 64 + f"  {REVIEWS}\n")
    with pytest.raises(DataError, match=rf"{REVIEWS}: sha256 {digest} differs .* corrupt or changed"):
        load_dataset("beauty")
    sidecar.unlink()
    monkeypatch.setitem(amazon.KNOWN_SHA256, META, "f" * 64)
    with pytest.raises(DataError, match=rf"{META}: sha256 .* published checksum"):
        load_dataset("beauty")


def test_offline_failure_says_where_to_put_the_files(folder, monkeypatch):
    def offline(request: urllib.request.Request, timeout: float) -> None:
        assert timeout == 10
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(GRBenchError) as error:
        load_dataset("beauty")
    message = str(error.value)
    assert f"{BASE_URL}{REVIEWS} (Name or service not known)" in message
    for name in (REVIEWS, META):
        assert str(folder / name) in message
    assert "GRBENCH_DATA" in message and not (folder / REVIEWS).exists()


class FakeResponse(io.BytesIO):
    def __init__(self, body: bytes, status: int, headers: dict[str, str]) -> None:
        super().__init__(body)
        self.status, self.headers = status, headers


def fake_server(files: dict[str, bytes], honour_range: bool, ranges: list[str | None]):
    """An urlopen serving ``files`` by URL, recording each Range header it is sent."""

    def urlopen(request: urllib.request.Request, timeout: float) -> FakeResponse:
        body = files[request.full_url]
        asked = request.get_header("Range")
        ranges.append(asked)
        if asked and honour_range:
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
            return FakeResponse(body[start:], 206, {"Content-Range": content_range})
        return FakeResponse(body, 200, {"Content-Length": str(len(body))})

    return urlopen


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_a_partial_file(folder, monkeypatch, honour_range):
    reviews, meta = gz_lines(core_reviews()), gz_lines(META_LINES)
    folder.mkdir()
    half = len(reviews) // 2
    (folder / f"{REVIEWS}.part").write_bytes(reviews[:half])
    ranges: list[str | None] = []
    server = fake_server({BASE_URL + REVIEWS: reviews, BASE_URL + META: meta}, honour_range, ranges)
    monkeypatch.setattr(urllib.request, "urlopen", server)
    dataset = load_dataset("beauty")
    assert ranges == [f"bytes={half}-", None]  # reviews resumed at the half, meta fetched whole
    assert (folder / REVIEWS).read_bytes() == reviews and (folder / META).read_bytes() == meta
    assert not list(folder.glob("*.part"))
    for name, data in ((REVIEWS, reviews), (META, meta)):
        assert (folder / f"{name}.sha256").read_text() == f"{hashlib.sha256(data).hexdigest()}  {name}\n"
    assert len(dataset.interactions) == 25


def test_broken_transfer_is_resumed_and_a_bad_download_deleted(folder, monkeypatch):
    data = b"0123456789" * 50
    ranges: list[str | None] = []
    serve = fake_server({"http://h/f.gz": data}, True, ranges)

    def flaky(request: urllib.request.Request, timeout: float) -> FakeResponse:
        response = serve(request, timeout)
        if len(ranges) == 1:  # the first answer breaks off after 100 bytes
            response = FakeResponse(data[:100], 200, {"Content-Length": str(len(data))})
        return response

    monkeypatch.setattr(urllib.request, "urlopen", flaky)
    download("http://h/f.gz", folder / "f.gz")
    assert ranges == [None, "bytes=100-"] and (folder / "f.gz").read_bytes() == data
    # not gzip (say an error page answered 200): reported and deleted, so the next run fetches it again
    monkeypatch.setattr(urllib.request, "urlopen", fake_server({BASE_URL + REVIEWS: data}, True, ranges))
    with pytest.raises(DataError, match=rf"{REVIEWS}: damaged gzip file"):
        load_dataset("beauty")
    assert not (folder / REVIEWS).exists()


def test_a_dry_run_lists_the_files_it_would_download_and_fetches_nothing(folder, tmp_path, capsys):
    """`bench run --dry-run` on a category not downloaded yet names its two files and leaves the network alone
    (the fixture fails any use of it); once the files are here, the same dry run splits the data as usual."""
    from bench.cli import main

    dry_run = ["run", "--profile", "smoke", "--methods", "pop,sasrec", "--datasets", "beauty", "--dry-run",
               "--out", str(tmp_path / "out")]
    assert main(dry_run) == 0
    printed = capsys.readouterr().out
    assert f"{folder / REVIEWS}\n" in printed and f"{folder / META}\n" in printed
    assert "| pop      | beauty    | 0      | download the data, then rank" in printed
    assert "| sasrec   | beauty    | 0      | download the data, then train and rank" in printed
    assert not folder.exists()

    place(folder, core_reviews())
    assert main(dry_run) == 0
    printed = capsys.readouterr().out
    assert "download" not in printed and "| sasrec   | beauty    | 0      | train and rank" in printed
