"""The headline page: which run is a method's canonical row, why a cell is empty, the published rows, Table 6's
same-hardware rule, reproducible plots and the provenance page. Records are synthetic, built here."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from bench.evaluate import METRICS
from bench.figures import png_description
from bench.headline import (
    FOOTNOTES,
    NEEDS_GPU,
    NEEDS_TEXT,
    NO_PAUSEREC,
    NOT_REPORTED,
    NOT_RUN,
    REFERENCES_FILE,
    MethodFacts,
    _place_labels,
    canonical_rows,
    cost_quality_plot,
    dataset_title,
    empty_reason,
    llm_cost_tables,
    load_references,
    quality_table,
    runs_page,
    shown_titles,
    write_headline,
)
from bench.leaderboard import REDUCED_MARK
from bench.results import ResultKey

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT.parent / "shared" / "DESIGN.md"
FACTS = {"pop": MethodFacts("baseline"), "sasrec": MethodFacts("id-based"),
         "tiger": MethodFacts("generative", needs_gpu=True), "sft": MethodFacts("llm", True, True),
         "pauserec": MethodFacts("llm", True, True)}


def record(spec: str = "sasrec", dataset: str = "beauty", *, profile: str = "small", seed: int = 0,
           device: str = "cpu", commit: str = "c1", created: str = "2026-01-01T00:00:00+0000", score: float = 0.03,
           has_text: bool = False, shared: int = 1, stages: tuple[tuple[str, float], ...] = (),
           wall_s: float = 100.0, latency: float = 2.0) -> dict:
    """A run record with the fields the headline reads; every metric's mean is ``score``."""
    name, _, option_text = spec.partition(":")
    options = dict(part.split("=") for part in option_text.split(",") if part)
    gpus = ["H100"] if device == "gpu" else []
    family = FACTS[name].family
    return {
        "method": spec, "method_name": name, "options": options, "variant": "", "family": family,
        "profile": profile, "seed": seed, "dataset": dataset, "split_fingerprint": f"split-of-{dataset}",
        "dataset_info": {"has_text": has_text}, "device": device, "git_commit": commit, "created_at": created,
        "command": f"/somewhere/bench/__main__.py run --profile {profile} --methods {spec} --datasets {dataset}",
        "reduced_schedule": profile in ("smoke", "quick") and family != "baseline", "report": {}, "settings": {},
        "metrics": {m: {"mean": score, "ci_low": score - 0.001, "ci_high": score + 0.001} for m in METRICS},
        "train": {"wall_s": wall_s, "gpu_hours": wall_s / 3600 if gpus else 0.0, "gpus": len(gpus)},
        "stages": [{"name": stage, "wall_s": s, "gpu_hours": s / 3600 if gpus else 0.0, "gpus": len(gpus),
                    "extra": {}} for stage, s in stages],
        "inference": {"ms_per_user": latency, "wall_s": 1.0,
                      "throughput": {"users_per_s": 1000 / latency, "batch_size": 64} if gpus else {}},
        "hardware": {"cpu": "CPU", "cpu_cores": 2, "torch_threads": 2, "gpus": gpus,
                     "label": "1x H100" if gpus else "CPU 2 cores", "gpu_processes_max": shared if gpus else None},
    }


def table_rows(table: str) -> dict[str, list[str]]:
    """{row label: its cells} of a GitHub Markdown table."""
    lines = table.splitlines()
    rows = {}
    for line, below in zip(lines, [*lines[1:], ""]):
        if line.startswith("| ") and not below.startswith("|--"):  # a header sits above its rule
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def headers(table: str) -> list[str]:
    return [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]


def test_the_study_datasets_have_the_study_titles_and_come_first():
    for name, title in (("beauty", "Beauty"), ("sports", "Sports"), ("toys", "Toys")):
        assert dataset_title(name) == title
    assert dataset_title("ml-100k") == "ml-100k" and dataset_title("synthetic") == "synthetic"
    records = [record(dataset=d) for d in ("synthetic", "ml-100k", "sports", "beauty")]
    assert shown_titles(records) == ["Beauty", "Sports", "Toys", "ml-100k", "synthetic"]  # Toys without a record


def test_the_canonical_row_is_the_default_configuration_at_the_highest_profile_then_most_seeds_then_newest():
    def chosen(*records: dict) -> list[dict]:
        return canonical_rows(records)[("Beauty", "sasrec")]

    quick = [record(profile="quick", seed=s, commit="c9", created=f"2026-09-0{s + 1}T00:00:00+0000") for s in (0, 1)]
    small = record(profile="small", commit="c1")
    assert chosen(*quick, small) == [small]  # small over quick, whatever the seeds and commits

    two_seeds = [record(seed=s, commit="c1") for s in (0, 1)]
    newer_gpu = record(device="gpu", commit="c2", created="2026-02-01T00:00:00+0000")
    assert chosen(*two_seeds, newer_gpu) == two_seeds  # more seeds over a newer commit

    newer_cpu = record(commit="c3", created="2026-03-01T00:00:00+0000")
    assert chosen(newer_gpu, newer_cpu) == [newer_cpu]  # then the newer commit, CPU or GPU

    paper_variant = record("sasrec:loss=bce", profile="paper", commit="c4", created="2026-04-01T00:00:00+0000")
    assert chosen(small, paper_variant) == [small]  # a row with options is never canonical
    assert ("Beauty", "sasrec") not in canonical_rows([paper_variant])


def test_a_cpu_and_a_gpu_copy_of_the_same_commits_go_to_the_gpu_copy():
    gpu = record(device="gpu", commit="c1", created="2026-01-01T00:00:00+0000", score=0.02)
    cpu = record(device="cpu", commit="c1", created="2026-01-05T00:00:00+0000", score=0.04)  # stored later
    assert canonical_rows([cpu, gpu])[("Beauty", "sasrec")] == [gpu]
    table = quality_table([cpu, gpu], [], {"sasrec": FACTS["sasrec"]})
    assert table_rows(table)["sasrec"][1:5] == ["0.0200"] * 4


def test_an_empty_cell_says_why_in_a_footnote():
    assert empty_reason(FACTS["sft"], has_text=False) == NEEDS_TEXT
    assert empty_reason(FACTS["sft"], has_text=True) == NEEDS_GPU
    assert empty_reason(FACTS["sft"], has_text=None) == NEEDS_GPU  # no record says the dataset lacks text
    assert empty_reason(FACTS["tiger"], has_text=False) == NEEDS_GPU
    assert empty_reason(FACTS["sasrec"], has_text=False) == NOT_RUN

    records = [record("pop", "beauty"), record("pop", "ml-100k", has_text=True),
               record("sasrec:loss=bce", "ml-100k", has_text=True)]  # sasrec ran only as a variant there
    table = quality_table(records, [], FACTS)
    assert [h for h in headers(table) if h.startswith("Toys")] == [
        "Toys<br>Hit@5", "Toys<br>Hit@10", "Toys<br>NDCG@5", "Toys<br>NDCG@10"]
    rows, columns = table_rows(table), headers(table)[1:]

    def cell(method: str, column: str) -> str:
        return rows[method][columns.index(column)]

    assert cell("sft", "Beauty<br>NDCG@10") == f"–{FOOTNOTES[NEEDS_TEXT]}"
    assert cell("sft", "ml-100k<br>NDCG@10") == f"–{FOOTNOTES[NEEDS_GPU]}"
    assert cell("tiger", "Toys<br>Hit@5") == f"–{FOOTNOTES[NEEDS_GPU]}"
    assert cell("sasrec", "ml-100k<br>Hit@5") == f"–{FOOTNOTES[NOT_RUN]}"
    assert cell("pop", "Toys<br>NDCG@5") == f"–{FOOTNOTES[NOT_RUN]}"
    assert cell("pop", "Beauty<br>Hit@5") == "0.0300"
    for reason in (NOT_RUN, NEEDS_TEXT, NEEDS_GPU):
        assert f"{FOOTNOTES[reason]} {reason}." in table
    assert FOOTNOTES[NOT_REPORTED] not in table  # a footnote only where a cell uses it


def test_best_of_our_rows_is_bold_and_marks_carry_over():
    records = [record("sasrec", score=0.04), record("pop", score=0.01),
               record("tiger", profile="quick", score=0.02)]
    rows = table_rows(quality_table(records, [], FACTS))
    assert rows["sasrec"][1] == "**0.0400**" and rows["pop"][1] == "0.0100"
    assert rows["tiger"][1] == f"0.0200 {REDUCED_MARK}"


def test_published_rows_come_from_the_references_file(tmp_path):
    path = tmp_path / "references.csv"
    path.write_text("dataset,method,loss,source,hit@5,ndcg@5,hit@10,ndcg@10\n"
                    "Beauty,SASRec,CE,Paper A,0.1,0.2,0.3,0.4\n"
                    "Toys,SASRec,CE,Paper A,,,,0.5\n"
                    "Beauty,TIGER,,Paper B,0.6,0.7,0.8,0.9\n")
    references = load_references(path)
    assert [r.label for r in references] == ["SASRec, CE (Paper A)", "TIGER (Paper B)"]
    rows = table_rows(quality_table([record("sasrec", score=0.5)], references, FACTS))
    columns = headers(quality_table([], references, FACTS))[1:]
    published = rows["*SASRec, CE (Paper A)*"]
    assert published[columns.index("Beauty<br>NDCG@10")] == "0.4000"
    assert published[columns.index("Beauty<br>Hit@10")] == "0.3000"  # the file's column order is not the table's
    assert published[columns.index("Toys<br>NDCG@10")] == "0.5000"
    assert published[columns.index("Toys<br>Hit@5")] == f"–{FOOTNOTES[NOT_REPORTED]}"
    assert rows["*TIGER (Paper B)*"][0] == "published"
    assert "**" not in published[columns.index("Beauty<br>NDCG@10")]  # bold is for our rows only


@pytest.mark.skipif(not DESIGN.is_file(), reason="the study's design notes are not beside this checkout")
def test_the_references_file_transcribes_the_design_notes():
    section = DESIGN.read_text().split("## Published reference numbers")[1].split("\n## ")[0]
    references = load_references(REFERENCES_FILE)
    order = ("hit@5", "ndcg@5", "hit@10", "ndcg@10")  # the design notes' column order
    lines = {f"| {title} | {r.label} | " + " | ".join(f"{r.values[(title, m)]:.4f}" for m in order) + " |"
             for r in references for title, _ in r.values if all((title, m) in r.values for m in order)}
    table = {line for line in section.splitlines() if line.startswith("| ") and "---" not in line
             and not line.startswith("| dataset")}
    assert table <= lines  # every row of the notes' table, number for number
    for reference in references:  # and the rest (GenRec's SASRec with BCE, ...) from the text below it
        assert all(f"{value:.4f}" in section for value in reference.values.values()), reference.label


def test_table_6_sets_side_by_side_only_rows_of_the_same_hardware():
    stages = (("cpt", 60.0), ("sft", 40.0))
    records = [
        record("pauserec", "ml-100k", profile="quick", stages=(*stages, ("pause", 100.0)), wall_s=200.0,
               latency=4.0, has_text=True),
        record("sft", "ml-100k", profile="quick", stages=stages, wall_s=100.0, latency=1.0, has_text=True),
        record("pauserec:pauses=1", "ml-100k", profile="quick", stages=stages, wall_s=50.0, has_text=True),
        record("sft", "ml-100k", device="gpu", shared=3, stages=stages, has_text=True),
        record("pauserec", "ml-100k", device="gpu", shared=1, stages=stages, has_text=True),
    ]
    text = llm_cost_tables(records)
    sections = {part.splitlines()[0]: part for part in text.split("### ")[1:]}
    assert set(sections) == {"ml-100k, profile quick, CPU 2 cores", "ml-100k, profile small, 1x H100",
                             "ml-100k, profile small, 1x H100, shared by 3 runs"}  # sharing is other hardware
    assert list(sections)[0] == "ml-100k, profile quick, CPU 2 cores"  # the comparison first
    cpu = table_rows(sections["ml-100k, profile quick, CPU 2 cores"])
    assert set(cpu) == {"pauserec", "sft"}  # the ablation stays on costs.md
    assert cpu["sft"][1:4] == ["60 s", "40 s", ""] and cpu["sft"][4] == "100 s"
    assert cpu["sft"][-3:-1] == ["0.50×", "0.25×"] and cpu["pauserec"][-3:-1] == ["1.00×", "1.00×"]
    alone = table_rows(sections["ml-100k, profile small, 1x H100, shared by 3 runs"])
    assert alone["sft"][-3:] == [f"–{FOOTNOTES[NO_PAUSEREC]}"] * 3
    assert f"{FOOTNOTES[NO_PAUSEREC]} {NO_PAUSEREC}." in text
    assert llm_cost_tables([record("sasrec")]) == "No LLM results yet.\n"


def test_the_plot_is_byte_reproducible_and_its_digest_follows_the_numbers(tmp_path):
    rows = {"sasrec": [record("sasrec", score=0.04, wall_s=3600.0)], "pop": [record("pop", wall_s=0.0)],
            "tiger": [record("tiger", seed=s, score=0.02 + s / 100, device="gpu") for s in (0, 1)]}
    first = cost_quality_plot(rows, "Beauty", tmp_path / "a.png").read_bytes()
    assert cost_quality_plot(rows, "Beauty", tmp_path / "b.png").read_bytes() == first
    assert first.startswith(b"\x89PNG") and b"matplotlib" not in first  # no version stamp
    changed = copy.deepcopy(rows)
    changed["sasrec"][0]["metrics"]["ndcg@10"]["mean"] = 0.05
    cost_quality_plot(changed, "Beauty", tmp_path / "c.png")
    assert png_description(tmp_path / "a.png") == png_description(tmp_path / "b.png")
    assert png_description(tmp_path / "c.png") != png_description(tmp_path / "a.png")


def test_labels_of_close_points_neither_overlap_nor_leave_the_axes():
    """As SASRec and ReaRec on Toys, or three LLM rows at NDCG 0 on Sports: points whose labels would collide on
    one side, and one at the bottom edge."""
    from bench.figures import new_figure

    figure = new_figure(7.5, 4.8)
    axes = figure.add_subplot()
    points = [("sasrec", 1.0, 0.0426), ("rearec", 1.3, 0.0424), ("hstu", 1.3, 0.0415), ("sft", 0.40, 0.0),
              ("onerec_think", 0.46, 0.0), ("pauserec", 0.53, 0.0)]
    axes.plot([x for _, x, _ in points], [y for _, _, y in points], "o")
    axes.set_xscale("log")
    _place_labels(figure, axes, points)
    renderer = figure.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in axes.texts]
    frame = axes.get_window_extent(renderer)
    assert [text.get_text() for text in axes.texts] == [name for name, _, _ in points]
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, i
        assert not any(box.overlaps(other) for other in boxes[i + 1:]), axes.texts[i].get_text()


def test_the_runs_page_gives_every_records_provenance_and_marks_headline_rows():
    cpu = record(commit="abcdef123456", created="2026-01-02T03:04:05+0000")
    gpu = record(device="gpu", shared=4, commit="fedcba654321", created="2026-01-03T00:00:00+0000")
    variant = record("sasrec:loss=bce", wall_s=5400.0, commit="0123456789ab")
    variant["report"] = {"continued_from_cell": "sasrec-loss=bce-epochs=2",
                         "history": [{"git_commit": "abcdef123456"}, {"git_commit": "0123456789ab"}]}
    page = runs_page([cpu, gpu, variant], {ResultKey.of(gpu).id})
    lines = [line for line in page.splitlines() if line.startswith("| sasrec")]
    assert len(lines) == 3
    (starred,) = [line for line in lines if "★" in line]
    assert "fedcba6" in starred and "4 runs" in starred and "1x H100" in starred and ResultKey.of(gpu).id in starred
    assert "`python -m bench run --profile small --methods sasrec --datasets beauty`" in page
    assert "2026-01-02" in page and "90 min" in page
    assert "continuing cell sasrec-loss=bce-epochs=2" in page and "0123456 (epochs also at abcdef1)" in page


def test_write_headline_writes_the_pages_and_plots_and_removes_stale_plots(tmp_path):
    stale = tmp_path / "plots" / "gone.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    records = [record("sasrec"), record("pop", "ml-100k", has_text=True)]
    written = write_headline(records, tmp_path)
    assert {str(p.relative_to(tmp_path)) for p in written} == {
        "README.md", "runs.md", "plots/beauty.png", "plots/ml-100k.png"}
    assert not stale.exists()
    page = (tmp_path / "README.md").read_text()
    assert "![Beauty: NDCG@10 against training cost](plots/beauty.png)" in page
    assert "[Beauty](Beauty.md)" in page and "[ml-100k](ml-100k.md)" in page
    assert "*SASRec, CE (GenRec)*" in page  # the committed references file
