"""``beauty``, ``sports``, ``toys`` from the S3-Rec release in a data directory: offline, under their own names.

Fixtures of the real layout (``amazon2014-s3rec/<Category>.txt`` with its ``.items.jsonl`` and
``_item2attributes.json``) check the choice of form and every bad input; the ``real`` tests read the shared
folder itself, as CI does, and check the published sizes."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from bench.cli import main
from bench.data import amazon, dataset_title, load_dataset
from bench.errors import DataError
from bench.results import ResultStore
from bench.split import fingerprint_sequences, leave_last_out
from tests.conftest import SHARED_DATA

SEQUENCES = "1 1 2 3 4\n2 2 3 4 5\n3 5 4 3 1\n"
ITEMS = [
    {"item": 1, "title": "Nail Lacquer &quot;Red&quot;", "categories": ["Beauty", "Makeup &amp; Nails"], "brand": None},
    {"item": 2, "title": "Shampoo", "categories": ["Beauty", "Hair Care"], "brand": None},
    {"item": 3, "title": None, "categories": None, "brand": None},
    {"item": 4, "title": "Lotion", "categories": ["Beauty"], "brand": None},
    {"item": 5, "title": "Soap", "categories": [], "brand": None},
]


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory with Beauty's S3-Rec form (sequence checksum not checked: these are not the release's
    bytes); any use of the network fails the test."""
    monkeypatch.setenv("GRBENCH_DATA", str(tmp_path))
    monkeypatch.setattr(amazon, "S3REC_SHA256", {})

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    folder = tmp_path / amazon.S3REC_FOLDER
    folder.mkdir()
    (folder / "Beauty.txt").write_text(SEQUENCES)
    write_items(folder / "Beauty.items.jsonl", ITEMS)
    (folder / "Beauty_item2attributes.json").write_text(json.dumps({str(i): [i, 10] for i in range(1, 6)}))
    return folder


def write_items(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_the_s3rec_form_loads_under_the_study_name_with_decoded_text(data):
    dataset = load_dataset("beauty")
    assert dataset.name == "beauty" and dataset.info["form"] == amazon.S3REC_FORM
    assert dataset.source.startswith("amazon2014-s3rec:Beauty")
    assert list(dataset.interactions.query("user == '3'").item) == ["5", "4", "3", "1"]  # file order is time order
    catalog = dataset.catalog.set_index("item")
    assert catalog.loc["1", "title"] == 'Nail Lacquer "Red"'
    assert catalog.loc["1", "categories"] == ["Beauty", "Makeup & Nails"]
    assert catalog.loc["3", "title"] is None and catalog.loc["3", "categories"] == []
    assert catalog.loc["4", "attributes"] == [4, 10]
    split = leave_last_out(dataset)
    assert split.stats["form"] == amazon.S3REC_FORM and split.stats["items_without_text"] == 1
    assert dataset_title("beauty") == "Beauty" and dataset_title("ml-100k") == "ml-100k"


def test_the_s3rec_form_is_preferred_to_the_mcauley_files_and_nothing_is_downloaded(data):
    mcauley = data.parent / "amazon2014"
    mcauley.mkdir()
    (mcauley / "reviews_Beauty_5.json.gz").write_bytes(b"not even gzip")
    assert amazon.pending_downloads("Beauty") == []
    assert load_dataset("beauty").info["form"] == amazon.S3REC_FORM
    assert amazon.pending_downloads("Toys_and_Games") == [path for path in amazon.local_paths("Toys_and_Games")]


def test_s3rec_metadata_without_its_sequence_file_is_an_error_not_a_download(data):
    (data / "Beauty.txt").unlink()
    with pytest.raises(DataError, match=r"Beauty.items.jsonl: Beauty.txt is not beside it") as error:
        load_dataset("beauty")
    assert "McAuley files" in str(error.value)


def test_an_items_row_of_an_item_the_sequences_lack_names_its_line(data):
    write_items(data / "Beauty.items.jsonl", [*ITEMS[:2], {"item": 77, "title": "stray"}, *ITEMS[2:]])
    with pytest.raises(DataError, match=r"Beauty.items.jsonl, line 3: item '77' is not in Beauty.txt"):
        load_dataset("beauty")


def test_an_attribute_of_an_item_the_sequences_lack_names_its_field(data):
    (data / "Beauty_item2attributes.json").write_text(json.dumps({"1": [1], "99": [2]}))
    with pytest.raises(DataError, match=r"Beauty_item2attributes.json, field '99': item '99' is not in Beauty.txt"):
        load_dataset("beauty")


def test_an_items_file_cut_short_is_an_error(data):
    write_items(data / "Beauty.items.jsonl", ITEMS[:3])
    with pytest.raises(DataError, match=r"Beauty.items.jsonl: no row for 2 of the 5 items of Beauty.txt "
                                        r"\(e.g. item '4'\): cut short"):
        load_dataset("beauty")
    (data / "Beauty.items.jsonl").write_text(json.dumps(ITEMS[0]) + "\n" + '{"item": 2, "title": "Sha')
    with pytest.raises(DataError, match=r"Beauty.items.jsonl, line 2: invalid JSON"):
        load_dataset("beauty")


def test_a_sequence_file_that_is_not_the_release_is_refused(data, monkeypatch):
    monkeypatch.setattr(amazon, "S3REC_SHA256", {"Beauty.txt": "0" * 64})
    with pytest.raises(DataError, match=r"Beauty.txt: sha256 [0-9a-f]{64} is not that of the S3-Rec release") as error:
        load_dataset("beauty")
    assert "seq:" in str(error.value)


def test_a_bad_sequence_line_names_the_file_and_line(data):
    (data / "Beauty.txt").write_text("1 1 2 3\n2\n")
    with pytest.raises(DataError, match=r"Beauty.txt, line 2: only one id"):
        load_dataset("beauty")


@pytest.mark.real
@pytest.mark.skipif(not (SHARED_DATA / "Toys_and_Games.items.jsonl").exists(), reason="shared data not present")
@pytest.mark.parametrize("name, sizes, untitled", [
    ("beauty", (22363, 12101, 198502), 0),
    ("sports", (35598, 18357, 296337), 173),
    ("toys", (19412, 11924, 167597), 0),
])
def test_the_shared_release_loads_with_the_published_sizes(monkeypatch, name, sizes, untitled):
    monkeypatch.setenv("GRBENCH_DATA", str(SHARED_DATA.parent))
    split = leave_last_out(load_dataset(name))
    assert (split.n_users, split.n_items, split.stats["interactions"]) == sizes
    assert split.stats["items_without_text"] == untitled and split.stats["form"] == amazon.S3REC_FORM
    titles = split.catalog["title"].dropna()
    assert not titles.str.contains("&amp;|&quot;|&#").any()  # entities decoded
    category = amazon.CATEGORIES[name][0]
    # the same split as the seq: file of the release: the rows stored under seq:<stem> belong to this dataset
    sequence_file = leave_last_out(load_dataset(f"seq:{SHARED_DATA / f'{category}.txt'}"))
    assert sequence_file.fingerprint == fingerprint_sequences(f"seq:{category}", split.user_ids, split.item_ids,
                                                              split.sequences)


@pytest.mark.real
@pytest.mark.skipif(not (SHARED_DATA / "Toys_and_Games.items.jsonl").exists(), reason="shared data not present")
def test_the_mission_command_runs_offline_on_the_three_study_datasets(monkeypatch, tmp_path):
    """`GRBENCH_DATA=../shared/data python -m bench run --methods pop --datasets beauty,sports,toys`."""
    monkeypatch.setenv("GRBENCH_DATA", str(SHARED_DATA.parent))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("the network was used"))
    out = tmp_path / "out"
    assert main(["run", "--methods", "pop", "--datasets", "beauty,sports,toys", "--out", str(out)]) == 0
    records = {r["dataset"]: r for r in ResultStore(out).load()}
    assert sorted(records) == ["beauty", "sports", "toys"]
    assert {name: r["dataset_info"]["users"] for name, r in records.items()} == {
        "beauty": 22363, "sports": 35598, "toys": 19412}
    assert all(r["dataset_info"]["has_text"] for r in records.values())
