from __future__ import annotations

import json

import pytest

from bench.data import load_dataset, parse_spec, sources
from bench.errors import DataError, GRBenchError, UnknownNameError
from bench.split import leave_last_out


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_sequence_file_round_trip_with_metadata(tmp_path):
    path = write(tmp_path / "Shop.txt", "1 10 11 12\n2 11 12 13 10\n\n3 10 13\n")
    write(tmp_path / "Shop_item2attributes.json", json.dumps({"10": [1, 2], "11": [3]}))
    write(tmp_path / "Shop.items.jsonl", '{"item": 10, "title": "Kettle", "categories": ["Home", "Kitchen"]}\n')
    dataset = load_dataset(f"seq:{path}")
    assert dataset.name == "seq:Shop"
    assert len(dataset.interactions) == 9
    assert list(dataset.interactions.query("user == '2'").item) == ["11", "12", "13", "10"]
    catalog = dataset.catalog.set_index("item")
    assert catalog.loc["10", "title"] == "Kettle" and catalog.loc["10", "attributes"] == [1, 2]
    assert catalog.loc["11", "attributes"] == [3] and catalog.loc["11", "title"] is None
    split = leave_last_out(dataset)
    assert split.n_users == 2 and split.stats["users_dropped_lt3"] == 1  # user 3 has two events


@pytest.mark.parametrize(
    "content, message",
    [
        (b"1 10 11 12\n2\n", r"line 2: only one id '2'"),
        (b"1 10 11 12\n2 5 6 7\n1 4 5 6\n", r"line 3: user '1' already listed on line 1"),
        (b"1 10 11 12\n2 5 \xff\xfe 7\n", r"line 2: not UTF-8 text"),
        (b"\n\n", r"no interactions"),
    ],
)
def test_malformed_sequence_file_names_file_and_line(tmp_path, content, message):
    path = write(tmp_path / "bad.txt", content)
    with pytest.raises(DataError, match=message) as error:
        load_dataset(f"seq:{path}")
    assert "bad.txt" in str(error.value)


def test_malformed_metadata_names_file_and_line(tmp_path):
    path = write(tmp_path / "S.txt", "1 10 11 12\n")
    write(tmp_path / "S.items.jsonl", '{"item": 10, "title": "ok"}\n{"item": 11, "title": \n')
    with pytest.raises(DataError, match=r"S.items.jsonl, line 2: invalid JSON"):
        load_dataset(f"seq:{path}")
    (tmp_path / "S.items.jsonl").unlink()
    write(tmp_path / "S_item2attributes.json", '{"10": ["x"]}')
    with pytest.raises(DataError, match=r"S_item2attributes.json, field '10'"):
        load_dataset(f"seq:{path}")


def test_missing_sequence_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_dataset(f"seq:{tmp_path / 'nope.txt'}")


def test_unknown_and_malformed_specs():
    with pytest.raises(UnknownNameError, match="unknown dataset 'movielens'.*ml-100k"):
        parse_spec("movielens")
    with pytest.raises(GRBenchError, match="needs an argument"):
        parse_spec("seq")
    with pytest.raises(GRBenchError, match="takes no argument"):
        parse_spec("ml-100k:foo")
    with pytest.raises(GRBenchError, match="synthetic option 'colour=3'"):
        load_dataset("synthetic:colour=3")


def test_synthetic_is_seeded():
    first = load_dataset("synthetic:seed=4")
    assert first.interactions.equals(load_dataset("synthetic:seed=4").interactions)
    assert not first.interactions.equals(load_dataset("synthetic:seed=5").interactions)
    assert first.has_text and first.catalog["categories"].map(len).eq(2).all()


def test_every_source_is_listed():
    assert {"ml-100k", "seq", "synthetic"} <= set(sources())


@pytest.mark.real
def test_ml100k_from_the_recbole_wheel():
    dataset = load_dataset("ml-100k")
    assert len(dataset.interactions) == 100_000
    assert dataset.interactions.user.nunique() == 943 and len(dataset.catalog) == 1682
    toy_story = dataset.catalog.set_index("item").loc["1"]
    assert toy_story.title == "Toy Story (1995)" and "Animation" in toy_story.categories
    split = leave_last_out(dataset)
    assert split.n_users == 943 and split.stats["interactions"] == 100_000


def write_ml100k(folder, inter_lines: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    write(folder / "ml-100k.inter", header + "".join(line + "\n" for line in inter_lines))
    write(folder / "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
          "1\tCaf\xe9 Film\t1995\tComedy Drama\n".encode("latin-1"))


def test_ml100k_format_fixture(tmp_path, monkeypatch):
    monkeypatch.setattr("bench.data.movielens.ml100k_dir", lambda: tmp_path / "ml")
    write_ml100k(tmp_path / "ml", ["1\t1\t3\t10", "1\t1\t4\t5"])
    dataset = load_dataset("ml-100k")
    assert list(dataset.interactions.timestamp) == [10.0, 5.0]
    assert dataset.catalog.iloc[0].title == "Caf\xe9 Film (1995)"  # Latin-1 decoded
    assert dataset.catalog.iloc[0].categories == ["Comedy", "Drama"]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["1\t1\t3"], r"ml-100k.inter, line 2: 3 fields \(expected 4\)"),
        (["1\t1\t3\t10", "1\t2\t3\tsoon"], r"ml-100k.inter, line 3, field 'timestamp': bad timestamp 'soon'"),
    ],
)
def test_ml100k_bad_lines(tmp_path, monkeypatch, lines, message):
    monkeypatch.setattr("bench.data.movielens.ml100k_dir", lambda: tmp_path / "ml")
    write_ml100k(tmp_path / "ml", lines)
    with pytest.raises(DataError, match=message):
        load_dataset("ml-100k")
