"""The benchmark at a glance: ``leaderboards/README.md``, ``leaderboards/runs.md`` and the cost-quality plots.

The headline page answers "which method wins on Beauty, Sports and Toys, and what does it cost?" in the shape of
the PauseRec study's two tables, from the run records alone: Table 5 (one row per method in its canonical
configuration, chosen by :func:`canonical_rows`, with the published numbers of ``bench/references.csv`` as rows
of their own) and Table 6 (the LLM methods' training cost by stage and inference cost, side by side only where
measured on the same hardware, as ratios to PauseRec). ``runs.md`` gives every record's provenance, so nothing
about how a row was made has to be typed by hand. Variants, ablations and diagnostics stay on the per-dataset pages.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from bench.data import dataset_title
from bench.evaluate import METRICS
from bench.figures import new_figure, save_png
from bench.leaderboard import (
    METRIC_TITLES,
    REDUCED_MARK,
    REDUCED_NOTE,
    UNCONVERGED_MARK,
    UNCONVERGED_NOTE,
    _group,
    _metric_summary,
    _row_mark,
    _stage_cost,
    gpu_sharing,
    hardware_label,
    machine_label,
    mean_latency,
    method_name,
)
from bench.profiles import PROFILES
from bench.registry import FAMILIES
from bench.results import ResultKey, record_device, slug, write_atomically

# Table 5's datasets, by the titles bench.data.dataset_title gives them: shown even before anything ran on them.
STUDY_DATASETS = ("Beauty", "Sports", "Toys")
TITLE_ORDER = (*STUDY_DATASETS, "ml-100k")  # then any other dataset, by name

REFERENCES_FILE = Path(__file__).with_name("references.csv")
PROFILE_RANK = {name: rank for rank, name in enumerate(PROFILES)}  # smoke < quick < small < paper
HEADLINE_PAGE, RUNS_PAGE, PLOTS_FOLDER = "README.md", "runs.md", "plots"

NOT_RUN = "not run yet in the method's default configuration (variants may be on the dataset's page)"
NEEDS_TEXT = "needs item text the dataset lacks"
NEEDS_GPU = "needs a GPU: the method's full schedule is not run on a CPU"
NOT_REPORTED = "the source reports no number here"
NO_PAUSEREC = "no PauseRec row measured on the same hardware"
GPU_ONLY = "the best batch is measured on GPU runs only"
FOOTNOTES = {NOT_RUN: "¹", NEEDS_TEXT: "²", NEEDS_GPU: "³", NOT_REPORTED: "⁴", NO_PAUSEREC: "⁵", GPU_ONLY: "⁶"}
UNTRAINED_S = 1.0  # a row that trains for less is drawn as a line: counting items is not a training cost
FAMILY_COLOURS = {"baseline": "tab:gray", "id-based": "tab:blue", "generative": "tab:green", "llm": "tab:red"}


def title_order(title: str) -> tuple[int, str]:
    """Sort key: Beauty, Sports, Toys, ml-100k, then the others by name."""
    return (TITLE_ORDER.index(title) if title in TITLE_ORDER else len(TITLE_ORDER), title)


@dataclass(frozen=True)
class MethodFacts:
    """What the headline needs to know of a method to explain a cell it has no record for."""

    family: str
    needs_text: bool = False
    needs_gpu: bool = False


def method_facts(records: Iterable[dict]) -> dict[str, MethodFacts]:
    """Every registered method, and every method with records (one removed since keeps its row)."""
    from bench.registry import methods

    facts = {name: MethodFacts(cls.family, cls.needs_text, cls.needs_gpu) for name, cls in methods().items()}
    for record in records:
        facts.setdefault(method_name(record), MethodFacts(record["family"], needs_gpu=record["family"] == "llm"))
    return facts


def empty_reason(facts: MethodFacts, has_text: bool | None) -> str:
    """Why a method has no canonical row on a dataset whose records say ``has_text`` (None: no records)."""
    if facts.needs_text and has_text is False:
        return NEEDS_TEXT
    return NEEDS_GPU if facts.needs_gpu else NOT_RUN


def _commit(record: dict) -> str:
    return str(record.get("git_commit") or "?")


def canonical_rows(records: Iterable[dict]) -> dict[tuple[str, str], list[dict]]:
    """{(dataset title, method): the records, one per seed, of the method's headline row on that dataset}.

    A method's canonical configuration is its default: a record without options. Of its rows on a dataset (one per
    split, profile and device, as the dataset's page has them), the chosen one has the highest profile (paper over
    small over quick over smoke), then the most seeds, then the newest code: the commit first seen latest, a
    commit being dated by its earliest record (records hold no commit dates). A CPU and a GPU copy that tie on all
    three (the same commits run on both devices) go to the GPU copy, whose costs are comparable with the study's
    (GPU-hours); a last tie goes to the copy stored last."""
    records = list(records)
    first_seen: dict[str, str] = {}
    for record in sorted(records, key=lambda r: r["created_at"]):
        first_seen.setdefault(_commit(record), record["created_at"])

    def preference(runs: list[dict]) -> tuple:
        return (PROFILE_RANK.get(runs[0]["profile"], -1), len(runs), max(first_seen[_commit(r)] for r in runs),
                record_device(runs[0]) == "gpu", max(r["created_at"] for r in runs))

    candidates: dict[tuple[str, str], list[list[dict]]] = defaultdict(list)
    for (dataset, _), rows in _group(r for r in records if not r.get("options")).items():
        for runs in rows.values():
            candidates[(dataset_title(dataset), method_name(runs[0]))].append(runs)
    return {key: max(rows, key=preference) for key, rows in candidates.items()}


def shown_titles(records: Iterable[dict]) -> list[str]:
    """The column groups: the study's datasets always, then every other dataset with records."""
    return sorted({*STUDY_DATASETS, *(dataset_title(r["dataset"]) for r in records)}, key=title_order)


@dataclass(frozen=True)
class Reference:
    """One published row: its label and its numbers by (dataset title, metric)."""

    label: str
    values: dict[tuple[str, str], float]


def load_references(path: Path = REFERENCES_FILE) -> list[Reference]:
    """The published rows of ``path`` (one line per dataset, method, loss and source; a blank number: not
    reported), grouped by label in the file's order. The sources' Recall@K is Hit@K here: one target per user."""
    table = pd.read_csv(path, dtype={"loss": str}, keep_default_na=False, na_values={m: [""] for m in METRICS})
    references: dict[str, dict] = {}
    for row in table.to_dict("records"):
        label = row["method"] + (f", {row['loss']}" if row["loss"] else "") + f" ({row['source']})"
        values = references.setdefault(label, {})
        for metric in METRICS:
            if not pd.isna(row[metric]):
                values[(row["dataset"], metric)] = float(row[metric])
    return [Reference(label, values) for label, values in references.items()]


def _blank(reason: str, used: set[str]) -> str:
    used.add(reason)
    return f"–{FOOTNOTES[reason]}"


def _notes(used: set[str]) -> list[str]:
    return [f"{FOOTNOTES[reason]} {reason}." for reason in FOOTNOTES if reason in used]


def quality_table(records: list[dict], references: list[Reference], facts: dict[str, MethodFacts]) -> str:
    """Table 5's shape: our canonical rows, then the published ones; best of ours in bold; footnoted blanks."""
    rows = canonical_rows(records)
    titles = shown_titles(records)
    has_text = {dataset_title(r["dataset"]): (r.get("dataset_info") or {}).get("has_text") for r in records}
    columns = [(title, metric) for title in titles for metric in METRICS]
    best = {}
    for title, metric in columns:
        means = [_metric_summary(runs, metric)[0] for (where, _), runs in rows.items() if where == title]
        best[(title, metric)] = max(means) if len(means) > 1 else None
    used: set[str] = set()
    marks: set[str] = set()
    table = []
    order = sorted(facts, key=lambda m: (FAMILIES.index(facts[m].family) if facts[m].family in FAMILIES
                                         else len(FAMILIES), m))
    for method in order:
        cells = []
        for title, metric in columns:
            runs = rows.get((title, method))
            if runs is None:
                cells.append(_blank(empty_reason(facts[method], has_text.get(title)), used))
                continue
            mean, text = _metric_summary(runs, metric, interval=False)
            marks.add(_row_mark(runs).strip())
            text += _row_mark(runs)
            top = best[(title, metric)]
            cells.append(f"**{text}**" if top is not None and np.isclose(mean, top) else text)
        table.append([method, facts[method].family, *cells])
    for reference in references:
        cells = [f"{reference.values[column]:.4f}" if column in reference.values else _blank(NOT_REPORTED, used)
                 for column in columns]
        table.append([f"*{reference.label}*", "published", *cells])
    headers = ["Method", "Family", *(f"{title}<br>{METRIC_TITLES[metric]}" for title, metric in columns)]
    notes = _notes(used) + [note for mark, note in ((REDUCED_MARK, REDUCED_NOTE), (UNCONVERGED_MARK,
                                                                                  UNCONVERGED_NOTE)) if mark in marks]
    return "\n\n".join([tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), *notes])


# --- Table 6: what the LLM methods cost ---------------------------------------------------------------------------


def _train_cost(runs: list[dict]) -> tuple[float, str]:
    """Mean training cost over seeds: GPU-hours where the runs had a GPU, else wall seconds."""
    if any(r["train"].get("gpus") for r in runs):
        value = float(np.mean([r["train"]["gpu_hours"] for r in runs]))
        return value, f"{value:.4f} GPU-h"
    value = float(np.mean([r["train"]["wall_s"] for r in runs]))
    return value, f"{value:.0f} s"


def _users_per_s(runs: list[dict]) -> tuple[float | None, str]:
    """Mean users/s at each run's best decoding batch, and its text with the batch sizes."""
    best = [r["inference"].get("throughput") or {} for r in runs]
    found = [b for b in best if b.get("users_per_s") is not None]
    if not found:
        return None, ""
    value = float(np.mean([b["users_per_s"] for b in found]))
    return value, f"{value:,.0f} @ {'/'.join(dict.fromkeys(str(b['batch_size']) for b in found))}"


def _ratio(value: float | None, pauserec: float | None, used: set[str]) -> str:
    if pauserec is None:
        return _blank(NO_PAUSEREC, used)
    if value is None or not pauserec:
        return ""
    return f"{value / pauserec:.2f}×"


def llm_cost_tables(records: list[dict]) -> str:
    """Table 6's shape: per dataset, the LLM methods' default configurations, one table per profile and hardware
    (times from different machines, or from a GPU shared with other runs, are never set side by side), each row's
    training cost by stage and in total, latency at batch 16, users/s at the best batch, and each as a ratio to
    PauseRec's on the same hardware."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.get("family") == "llm" and not record.get("options"):
            key = (dataset_title(record["dataset"]), record["dataset"], record["split_fingerprint"],
                   record["profile"], hardware_label(record))
            groups[key][method_name(record)].append(record)
    # the comparisons first: most methods on one hardware, then the highest profile
    order = sorted(groups, key=lambda k: (title_order(k[0]), k[1], k[2], -len(groups[k]),
                                          -PROFILE_RANK.get(k[3], -1), k[4]))
    sections, used = [], set()
    for key in order:
        title, _, _, profile, hardware = key
        by_method = groups[key]
        stage_names = list(dict.fromkeys(s["name"] for runs in by_method.values() for r in runs for s in r["stages"]))
        pause = by_method.get("pauserec")
        base = (_train_cost(pause)[0], mean_latency(pause), _users_per_s(pause)[0]) if pause else (None, None, None)
        table = []
        for method, runs in sorted(by_method.items()):
            cost, cost_text = _train_cost(runs)
            latency = mean_latency(runs)
            users, users_text = _users_per_s(runs)
            on_gpu = record_device(runs[0]) == "gpu"
            table.append([
                method, len(runs),
                *(_stage_cost([next((s for s in r["stages"] if s["name"] == name), None) for r in runs])
                  for name in stage_names),
                cost_text, "" if latency is None else f"{latency:.1f}", users_text or _blank(GPU_ONLY, used),
                _ratio(cost, base[0], used), _ratio(latency, base[1], used),
                _ratio(users, base[2], used) if on_gpu else _blank(GPU_ONLY, used)])
        headers = ["Method", "Seeds", *stage_names, "Train total", "Latency @ 16 (ms/user)", "Users/s @ best batch",
                   "Train ÷ PauseRec", "Latency ÷ PauseRec", "Users/s ÷ PauseRec"]
        sections += [f"### {title}, profile {profile}, {hardware}", "",
                     tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    if not sections:
        return "No LLM results yet.\n"
    return "\n".join([*sections, *(f"{note}\n" for note in _notes(used))])


# --- cost against quality -----------------------------------------------------------------------------------------


def _interval(runs: list[dict], metric: str) -> tuple[float, float, float]:
    """Mean and its interval over seeds (± sd) or, for one seed, over users (the stored 95% interval)."""
    means = [r["metrics"][metric]["mean"] for r in runs]
    mean = float(np.mean(means))
    if len(runs) > 1:
        spread = float(np.std(means, ddof=1))
        return mean, mean - spread, mean + spread
    stored = runs[0]["metrics"][metric]
    return mean, stored.get("ci_low", mean), stored.get("ci_high", mean)


# where a point's label may go, in points from the marker, in the order tried: right, left, then below and above
_LABEL_SPOTS = ((6, 2, "left"), (-6, 2, "right"), (6, -11, "left"), (-6, -11, "right"), (6, 12, "left"),
                (-6, 12, "right"))


def _place_labels(figure: Any, axes: Any, labels: list[tuple[str, float, float]]) -> None:
    """Labels each (text, x, y) point at the first spot where the label stays inside the axes and overlaps no label
    placed before it, nor any marker (the last spot if none is free). matplotlib places no labels itself;
    adjustText would, but by an iterative repulsion that is more than a dozen points need, while a greedy search in
    a fixed order keeps the PNG byte-reproducible."""
    from matplotlib.transforms import Bbox

    figure.canvas.draw()  # runs the layout, so that the data-to-pixel transform below is the one saved
    renderer = figure.canvas.get_renderer()
    markers = axes.transData.transform([(x, y) for _, x, y in labels])
    taken = [Bbox.from_bounds(px - 4, py - 4, 8, 8) for px, py in markers]
    frame = axes.get_window_extent(renderer)
    for text, x, y in labels:
        for dx, dy, align in _LABEL_SPOTS:
            label = axes.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=align,
                                  va="center", fontsize=8)
            box = label.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in taken):
                break
            if (dx, dy, align) != _LABEL_SPOTS[-1]:
                label.remove()
        taken.append(box)


def cost_quality_plot(rows: dict[str, list[dict]], title: str, path: Path) -> Path:
    """NDCG@10 with its interval against training wall time (log axis) of one dataset's canonical rows: a marker
    per method, coloured by family, ○ on a CPU and ■ on a GPU; rows that train for less than a second (the
    count-based floors) as dashed lines. The PNG's description is a digest of the plotted numbers, for checks
    that outlive a matplotlib update."""
    points = sorted((method, runs[0]["family"], record_device(runs[0]), _row_mark(runs).strip(),
                     float(np.mean([r["train"]["wall_s"] for r in runs])) / 3600, *_interval(runs, "ndcg@10"))
                    for method, runs in rows.items())
    figure = new_figure(7.5, 4.8)
    axes = figure.add_subplot()
    trained = sorted((p for p in points if p[4] * 3600 >= UNTRAINED_S), key=lambda p: p[5])
    for _, family, device, _, hours, mean, low, high in trained:
        colour = FAMILY_COLOURS.get(family, "black")
        axes.errorbar([hours], [mean], yerr=[[max(mean - low, 0)], [max(high - mean, 0)]],
                      fmt="s" if device == "gpu" else "o", color=colour,
                      markerfacecolor=colour if device == "gpu" else "white", capsize=3)
    for method, family, _, mark, hours, mean, _, _ in points:
        if hours * 3600 < UNTRAINED_S:
            axes.axhline(mean, color=FAMILY_COLOURS.get(family, "black"), linestyle="--", linewidth=0.8)
            axes.annotate(f"{method}{mark} (no training)", (0.01, mean), xycoords=("axes fraction", "data"),
                          textcoords="offset points", xytext=(0, 3), fontsize=8)
    if trained:
        from matplotlib.ticker import FormatStrFormatter, FuncFormatter

        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        # minor ticks named at 2 and 5 only (matplotlib shows them all, as 2x10^-1, when few decades are shown)
        axes.xaxis.set_minor_formatter(FuncFormatter(
            lambda value, _: f"{value:g}" if round(value / 10 ** np.floor(np.log10(value))) in (2, 5) else ""))
    axes.margins(x=0.12)
    axes.set_xlabel("training wall time, hours (log scale; ○ CPU, ■ GPU)")
    axes.set_ylabel("test NDCG@10")
    axes.set_title(f"{title}: quality against training cost")
    for family in FAMILIES:
        if any(p[1] == family for p in points):
            axes.plot([], [], "o", color=FAMILY_COLOURS[family], label=family)
    axes.legend(loc="best", fontsize=8)
    _place_labels(figure, axes, [(f"{method}{mark}", hours, mean) for method, _, _, mark, hours, mean, _, _ in trained])
    digest = hashlib.sha256(json.dumps(points).encode()).hexdigest()[:16]
    return save_png(figure, path, description=f"grbench cost-quality plot, data {digest}")


# --- provenance ---------------------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def shown_command(record: dict) -> str:
    """The record's command as a reader would type it (``python -m bench run ...``, whatever path ran it)."""
    words = str(record.get("command") or "").split(" ", 1)
    if words[0].endswith("__main__.py"):
        words[0] = "python -m bench"
    text = " ".join(words)
    continued = (record.get("report") or {}).get("continued_from_cell")
    return f"`{text}`" + (f", continuing cell {continued}" if continued else "")


def _commits(record: dict) -> str:
    """The record's commit, and those that trained its epochs where they differ (a resumed or continued run)."""
    own = _commit(record)[:7]
    epochs = [h.get("git_commit") for h in (record.get("report") or {}).get("history", [])]
    others = [c[:7] for c in dict.fromkeys(c for c in epochs if c) if c[:7] != own]
    return f"{own} (epochs also at {', '.join(others)})" if others else own


def _sharing(record: dict) -> str:
    if record_device(record) != "gpu":
        return ""
    shared = gpu_sharing(record)
    return "not recorded" if shared == 0 else "alone" if shared == 1 else f"{shared} runs"


def runs_page(records: list[dict], headline: set[str]) -> str:
    """Every record's provenance, by dataset: what made each row of every table (``headline``: ids in the
    headline's rows)."""
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_dataset[record["dataset"]].append(record)
    lines = ["# Runs", "", "Every stored run: the command that made it (`python -m bench rerun ID` redoes it), the "
             "commit, hardware, GPU sharing (other processes on the same GPU make its times upper bounds), wall "
             "times and date, from its record in `results/results.jsonl`. ★: a run in the headline table "
             f"([{HEADLINE_PAGE}]({HEADLINE_PAGE})). Why a number differs from a paper's is in `docs/`. Generated by "
             "`python -m bench leaderboard`: do not edit by hand.", ""]
    for dataset in sorted(by_dataset, key=lambda d: (title_order(dataset_title(d)), d)):
        table = []
        for record in sorted(by_dataset[dataset], key=lambda r: (r["method"], r["profile"], record_device(r),
                                                                 r["seed"])):
            key = ResultKey.of(record)
            table.append([f"{record['method']}{' ★' if key.id in headline else ''}", record["profile"],
                          record["seed"], machine_label(record), _sharing(record),
                          _duration(record["train"].get("wall_s")), _duration(record["inference"].get("wall_s")),
                          record["created_at"][:10], _commits(record), shown_command(record).replace("|", "\\|"),
                          f"`{key.id}`"])
        headers = ["Row", "Profile", "Seed", "Hardware", "GPU shared by", "Train wall", "Ranking wall", "Date",
                   "Commit", "Command", "ID"]
        lines += [f"## {dataset}", "", tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    return "\n".join(lines)


# --- the page -----------------------------------------------------------------------------------------------------

LEGEND = (
    "One row per method in its default configuration (no options). Each cell comes from the method's best-founded "
    "run on the dataset: the highest profile stored (paper, small, quick), then the most seeds, then the newest "
    "commit; a GPU copy wins a tie with a CPU copy of the same commits. Cells: test mean over seeds (± sd where "
    "there are several); leave-last-out split, full ranking over all items. Best of our rows in bold. Rows in "
    "italics are published numbers (`bench/references.csv`, from the PauseRec study's design notes; their "
    "Recall@K is Hit@K here, one target per user). The 95% intervals, variants, ablations and diagnostics are on "
    "the per-dataset pages; every run's command, commit and hardware in [runs.md](runs.md).")


def headline_page(records: list[dict], references: list[Reference], facts: dict[str, MethodFacts],
                  plots: dict[str, Path]) -> str:
    """The Markdown of ``leaderboards/README.md`` (``plots``: dataset title -> PNG path relative to the page)."""
    titles = sorted({dataset_title(r["dataset"]) for r in records}, key=title_order)
    links = ", ".join(f"[{title}]({slug(title)}.md)" for title in titles)  # the pages bench.leaderboard writes
    figures = "\n".join(f"![{title}: NDCG@10 against training cost]({path.as_posix()})"
                        for title, path in sorted(plots.items(), key=lambda item: title_order(item[0])))
    return "\n".join([
        "# GRBench at a glance", "", LEGEND, "",
        "## Quality (the study's Table 5)", "", f"Per-dataset pages: {links or 'none yet'}.", "",
        quality_table(records, references, facts), "",
        "## What buys quality", "",
        "Test NDCG@10 with its interval (± sd over seeds, else the 95% interval over users) against training wall "
        "time, for the rows above. CPU and GPU hours are not the same cost, and times measured on a GPU shared with "
        "other runs are upper bounds ([runs.md](runs.md) says which).", "", figures or "No results yet.", "",
        "## What the LLM methods cost (the study's Table 6)", "",
        "Default configurations only; rows side by side only when measured on the same hardware (GPU sharing "
        "included). Training: GPU-hours on a GPU, wall seconds on a CPU, per stage and in total; a stage reused "
        "from the cache counts for every method built on it. Latency: ms per user at batch 16 after a warm-up "
        "batch. Ratios: the row's value over PauseRec's. Every run with its stages and MFU: [costs.md](costs.md).",
        "", llm_cost_tables(records),
        "Generated by `python -m bench leaderboard` from the records alone: do not edit by hand.", ""])


def write_headline(records: list[dict], folder: Path, references: Path = REFERENCES_FILE) -> list[Path]:
    """Writes the headline page, the provenance page and one plot per dataset with rows (removing plots of
    datasets that no longer have any); returns their paths."""
    folder = Path(folder)
    rows = canonical_rows(records)
    plots: dict[str, Path] = {}
    for title in sorted({title for title, _ in rows}, key=title_order):
        mine = {method: runs for (where, method), runs in rows.items() if where == title}
        plots[title] = cost_quality_plot(mine, title, folder / PLOTS_FOLDER / f"{slug(title).lower()}.png")
    for stale in set((folder / PLOTS_FOLDER).glob("*.png")) - set(plots.values()):
        stale.unlink()
    headline = folder / HEADLINE_PAGE
    page = headline_page(records, load_references(references), method_facts(records),
                         {title: path.relative_to(folder) for title, path in plots.items()})
    write_atomically(headline, page.encode("utf-8"))
    runs = folder / RUNS_PAGE
    ids = {ResultKey.of(r).id for rows_runs in rows.values() for r in rows_runs}
    write_atomically(runs, runs_page(records, ids).encode("utf-8"))
    return [headline, runs, *plots.values()]
