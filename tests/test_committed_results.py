"""The committed leaderboards are exactly what the committed results generate: no number typed in by hand,
none forgotten after a merge or a withdrawal."""

from __future__ import annotations

import re
from pathlib import Path

from bench.figures import png_description
from bench.leaderboard import write_leaderboards
from bench.results import ResultStore

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "leaderboards"


def test_committed_leaderboards_are_regenerated_from_the_committed_results(tmp_path):
    records = ResultStore(ROOT / "results").load()
    assert records, "no committed results"
    written = write_leaderboards(records, tmp_path, ROOT / "results")
    for path in written:
        committed = BOARD / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is missing: run `python -m bench leaderboard`"
        if path.suffix == ".png":
            # pixels change with the matplotlib version; the digest of the plotted numbers does not
            assert png_description(committed) == png_description(path), (
                f"{committed} plots other numbers than results/results.jsonl holds: run `python -m bench leaderboard`")
            continue
        assert committed.read_text() == path.read_text(), (
            f"{committed} differs from what results/results.jsonl generates: run `python -m bench leaderboard`")
    generated = {*BOARD.glob("*.md"), *BOARD.glob("plots/*.png")}
    stray = {p.relative_to(BOARD) for p in generated} - {p.relative_to(tmp_path) for p in written}
    assert not stray, f"leaderboards with no results behind them: {sorted(map(str, stray))}"


def test_every_link_between_the_committed_leaderboards_leads_to_a_page_or_plot_that_exists():
    """A page renamed (the study's datasets moved from seq-*.md to Beauty.md) must not leave a link behind."""
    broken = [f"{page.name}: {target}" for page in BOARD.glob("*.md")
              for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text())
              if not (BOARD / target).exists()]
    assert not broken, f"links to nothing: {broken}"
