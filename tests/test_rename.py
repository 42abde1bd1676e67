"""`bench rename-dataset`: rows trained under a ``seq:`` name move to the study dataset's name only when the split
is the same, keep their numbers and rankings, and pin a SID source that the new name would resolve differently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.data import amazon, load_dataset
from bench.results import ResultStore, read_rankings
from bench.split import leave_last_out

SEQUENCES = "".join(f"{user} " + " ".join(str((user * 3 + step) % 12 + 1) for step in range(6)) + "\n"
                    for user in range(1, 25))


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Results of pop and tiger trained on a ``seq:`` file without text; the same file then appears, with
    titles, as Beauty's S3-Rec form in the data directory."""
    monkeypatch.setattr(amazon, "S3REC_SHA256", {})
    monkeypatch.setenv("GRBENCH_DATA", str(tmp_path / "data"))
    plain = tmp_path / "plain" / "Beauty.txt"
    plain.parent.mkdir()
    plain.write_text(SEQUENCES)
    out = tmp_path / "out"
    assert main(["run", "--profile", "smoke", "--methods", "pop,tiger", "--datasets", f"seq:{plain}",
                 "--out", str(out)]) == 0
    release = tmp_path / "data" / amazon.S3REC_FOLDER
    release.mkdir(parents=True)
    (release / "Beauty.txt").write_text(SEQUENCES)
    (release / "Beauty.items.jsonl").write_text("".join(
        json.dumps({"item": item, "title": f"Item {item}", "categories": ["Beauty"]}) + "\n" for item in range(1, 13)))
    return out, plain


def test_rows_move_with_their_numbers_and_rankings_and_a_pinned_sid_source(trained, capsys):
    out, _ = trained
    before = {r["method"]: r for r in ResultStore(out).load()}
    assert before["tiger"]["report"]["sids"]["source"] == "collaborative"  # no text under the seq: name
    rankings = {method: read_rankings(out / record["rankings"]) for method, record in before.items()}
    assert main(["rename-dataset", "seq:Beauty", "beauty", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("moved seq-Beauty--") == 2
    after = {r["moved_from"]["method"]: r for r in ResultStore(out).load()}
    split = leave_last_out(load_dataset("beauty"))
    for method, record in after.items():
        old = before[method]
        assert record["dataset"] == "beauty" and record["split_fingerprint"] == split.fingerprint
        assert record["metrics"] == old["metrics"] and record["moved_from"]["id"] == old["id"]
        assert record["moved_from"]["split_fingerprint"] == old["split_fingerprint"]
        assert record["dataset_info"]["has_text"] and not record["moved_from"]["dataset_info"]["has_text"]
        assert read_rankings(out / record["rankings"]) == rankings[method]
        assert not (out / old["rankings"]).exists()
    # under `beauty`, whose items have titles, plain `tiger` means text SIDs: the moved row says what it ran on
    assert after["tiger"]["method"] == "tiger:sid_source=collaborative"
    assert after["tiger"]["settings"]["sid_source"] == "collaborative"
    assert after["pop"]["method"] == "pop" and after["pop"]["id"].startswith("beauty--pop--smoke--seed0--")
    assert (out / "leaderboards" / "Beauty.md").read_text().startswith("# Beauty\n")
    # the moved pop row is the stored result of `pop` on beauty: a run skips it
    assert main(["run", "--profile", "smoke", "--methods", "pop", "--datasets", "beauty", "--out", str(out)]) == 0
    assert "skip beauty--pop--smoke--seed0--" in capsys.readouterr().err


def test_rows_of_another_split_stay(trained, capsys):
    out, plain = trained
    plain.write_text(SEQUENCES.replace("1 4 5 6 7 8 9", "1 4 5 6 7 9 8", 1))  # another split
    assert main(["run", "--profile", "smoke", "--methods", "random", "--datasets", f"seq:{plain}",
                 "--out", str(out)]) == 0
    assert main(["rename-dataset", "seq:Beauty", "beauty", "--out", str(out)]) == 0
    assert "kept seq-Beauty--random--smoke--seed0--" in capsys.readouterr().out
    assert sorted(r["dataset"] for r in ResultStore(out).load()) == ["beauty", "beauty", "seq:Beauty"]


def test_nothing_to_move_or_a_clash_is_a_clear_error_that_moves_nothing(trained, capsys):
    out, _ = trained
    assert main(["rename-dataset", "seq:Nothing", "beauty", "--out", str(out)]) == 2
    assert "holds no results of dataset 'seq:Nothing'; stored: seq:Beauty" in capsys.readouterr().err
    assert main(["run", "--profile", "smoke", "--methods", "pop", "--datasets", "beauty", "--out", str(out)]) == 0
    stored = (out / "results.jsonl").read_bytes()
    assert main(["rename-dataset", "seq:Beauty", "beauty", "--out", str(out)]) == 2
    assert "already holds beauty--pop--smoke--seed0--" in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == stored
