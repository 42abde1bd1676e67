"""The committed leaderboards are exactly what the committed results generate: no number typed in by hand,
none forgotten after a merge or a withdrawal."""

from __future__ import annotations

from pathlib import Path

from bench.leaderboard import write_leaderboards
from bench.results import ResultStore

ROOT = Path(__file__).resolve().parents[1]


def test_committed_leaderboards_are_regenerated_from_the_committed_results(tmp_path):
    records = ResultStore(ROOT / "results").load()
    assert records, "no committed results"
    written = write_leaderboards(records, tmp_path, ROOT / "results")
    for path in written:
        committed = ROOT / "leaderboards" / path.name
        assert committed.is_file(), f"{committed} is missing: run `python -m bench leaderboard`"
        assert committed.read_text() == path.read_text(), (
            f"{committed} differs from what results/results.jsonl generates: run `python -m bench leaderboard`")
    stray = {p.name for p in (ROOT / "leaderboards").glob("*.md")} - {p.name for p in written}
    assert not stray, f"leaderboards with no results behind them: {sorted(stray)}"
