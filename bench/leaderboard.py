"""Stored results -> Markdown leaderboards (one file per dataset, ``costs.md`` and ``index.md``; the headline
page is :mod:`bench.headline`'s).

Numbers come only from result records. Rows are grouped by (method, profile) within one split
fingerprint; several seeds show mean ± standard deviation over seeds, one seed shows the 95%
bootstrap interval over users. The best mean of each metric is bold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tabulate import tabulate

from bench.costs import computing_cores, cpu_label
from bench.data import dataset_title
from bench.evaluate import METRICS
from bench.results import record_device, slug, write_atomically

REDUCED_MARK = "†"
REDUCED_NOTE = (f"{REDUCED_MARK} reduced schedule (CPU profile): proves the pipeline runs end to end, "
                "not a ranking of methods.")
UNCONVERGED_MARK = "‡"
UNCONVERGED_NOTE = (f"{UNCONVERGED_MARK} training ended at its epoch limit with its best validation score at the last "
                    "epoch: still improving, so below what the method reaches when trained until early stopping.")
METRIC_TITLES = {"hit@5": "Hit@5", "hit@10": "Hit@10", "ndcg@5": "NDCG@5", "ndcg@10": "NDCG@10"}
LIST_STATS = {"coverage@10": "Coverage@10", "history@10": "History@10"}


def _group(records: Iterable[dict]) -> dict[tuple[str, str], dict[tuple[str, str, str], list[dict]]]:
    """{(dataset, fingerprint): {(method, profile, device): [records over seeds]}}: a GPU run and a CPU run of
    the same method are two rows."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for record in records:
        row = (record["method"], record["profile"], record_device(record))
        groups[(record["dataset"], record["split_fingerprint"])][row].append(record)
    return groups


def machine_label(record: dict) -> str:
    """The record's machine: its GPUs, else its CPU cores."""
    machine = record["hardware"]
    # labels stored before cpu_label said "CPU 1 cores"
    return (cpu_label(computing_cores(machine)) if not machine.get("gpus") and "cpu_cores" in machine
            else machine["label"])


def gpu_sharing(record: dict) -> int:
    """How many processes computed on the record's GPU at most, over the run and the stages it reused (0 where not
    measured: CPU runs, and GPU runs before the count was stored)."""
    machine = record["hardware"]
    # a reused stage's carried time was measured on the GPU of the run that trained it, perhaps shared
    return max([machine.get("gpu_processes_max") or 0,
                *(stage.get("extra", {}).get("trained_shared_by") or 0 for stage in record.get("stages", []))])


def hardware_label(record: dict) -> str:
    """The record's hardware, and how many processes shared its GPU where more than one did (its times are then
    upper bounds)."""
    shared = gpu_sharing(record)
    return f"{machine_label(record)}, shared by {shared} runs" if shared > 1 else machine_label(record)


def method_name(record: dict) -> str:
    """The registered method of a record (``sasrec`` for ``sasrec:loss=bce``)."""
    return record.get("method_name") or record["method"].partition(":")[0]


def row_variant(record: dict) -> str:
    """The few words after a row's method: its variant and, where the record names them, the SIDs it ran on.

    Every result records its SID source (``report.sids.source``), but the variant is fixed before ``auto`` is
    resolved (text on ml-100k, attributes+collaborative on the Amazon files), so without the source two TIGER rows
    on different SIDs would read alike."""
    variant = record.get("variant") or ""
    sids = (record.get("report") or {}).get("sids")
    source = sids.get("source") if isinstance(sids, dict) else None
    if not source:
        return variant
    if "SIDs" in variant:  # e.g. TIGER's "rqvae SIDs"
        return variant.replace("SIDs", f"SIDs from {source}", 1)
    return f"{variant}, SIDs from {source}" if variant else f"SIDs from {source}"


def _metric_summary(runs: list[dict], metric: str, interval: bool = True) -> tuple[float, str]:
    """The mean over seeds and its text: ± sd over several seeds, else the 95% interval over users (``interval``)."""
    means = [run["metrics"][metric]["mean"] for run in runs]
    mean = float(np.mean(means))
    if len(runs) > 1:
        return mean, f"{mean:.4f} ± {np.std(means, ddof=1):.4f}"
    low, high = runs[0]["metrics"][metric].get("ci_low"), runs[0]["metrics"][metric].get("ci_high")
    return mean, f"{mean:.4f} [{low:.4f}, {high:.4f}]" if interval and low is not None else f"{mean:.4f}"


def _joined(values: Iterable) -> str:
    return ", ".join(sorted({str(v) for v in values}))


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def mean_latency(runs: list[dict]) -> float | None:
    """Mean inference latency over seeds (ms per user at batch 16), None where no run measured it."""
    values = [r["inference"]["ms_per_user"] for r in runs if r["inference"].get("ms_per_user") is not None]
    return float(np.mean(values)) if values else None


def _ms(runs: list[dict]) -> str:
    latency = mean_latency(runs)
    return "" if latency is None else f"{latency:.3f}"


def _list_stat(runs: list[dict], name: str) -> str:
    """Mean over seeds of a :func:`bench.evaluate.list_stats` value; blank for records stored without it."""
    values = [r["list_stats"][name] for r in runs if name in r.get("list_stats", {})]
    return f"{np.mean(values):.3f}" if len(values) == len(runs) else ""


def dataset_table(rows: dict[tuple[str, str, str], list[dict]]) -> str:
    """The Markdown table of one dataset split."""
    cells = {}
    best = {}
    for metric in METRICS:
        summaries = {row: _metric_summary(runs, metric) for row, runs in rows.items()}
        best[metric] = max(mean for mean, _ in summaries.values())
        cells[metric] = summaries
    table = []
    order = sorted(rows, key=lambda row: -cells["ndcg@10"][row][0])
    for row in order:
        runs = rows[row]
        method, profile, _ = row
        mark = _row_mark(runs)
        words = row_variant(runs[0])
        variant = f" ({words})" if words else ""
        metric_cells = []
        for metric in METRICS:
            mean, text = cells[metric][row]
            metric_cells.append(f"**{text}**" if np.isclose(mean, best[metric]) and len(rows) > 1 else text)
        table.append([
            f"{method}{variant}{mark}", runs[0]["family"], *metric_cells,
            *(_list_stat(runs, name) for name in LIST_STATS),
            f"{np.mean([r['train']['gpu_hours'] for r in runs]):.4f}",
            _seconds(np.mean([r["train"]["wall_s"] for r in runs])),
            _ms(runs),
            len(runs),
            _joined(r["eval_users"] for r in runs),
            profile,
            _joined(hardware_label(r) for r in runs),
        ])
    headers = ["Method", "Family", *(METRIC_TITLES[m] for m in METRICS), *LIST_STATS.values(), "Train GPU-h",
               "Train wall (s)", "Latency (ms/user)", "Seeds", "Test users", "Profile", "Hardware"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def _dataset_section(dataset: str, fingerprint: str, rows: dict[tuple[str, str, str], list[dict]]) -> str:
    info = next(iter(rows.values()))[0]["dataset_info"]
    facts = (f"{info['users']:,} users, {info['items']:,} items, {info['interactions']:,} interactions; "
             f"{info['users_dropped_lt3']:,} users with fewer than 3 interactions dropped; "
             f"item text: {'yes' if info.get('has_text') else 'no'}"
             + (f"; files: {info['form']}" if info.get("form") else ""))
    moved = sorted({r["moved_from"]["dataset"] for runs in rows.values() for r in runs if r.get("moved_from")})
    if moved:
        facts += (f". Rows trained as {', '.join(moved)} (the same split, proven by its fingerprint) were moved here "
                  "unretrained (`python -m bench rename-dataset`); their records keep it in `moved_from`.")
    lines = [f"## {dataset} (split {fingerprint})", "", facts, "", dataset_table(rows), ""]
    marks = {_row_mark(runs).strip() for runs in rows.values()}
    for mark, note in ((REDUCED_MARK, REDUCED_NOTE), (UNCONVERGED_MARK, UNCONVERGED_NOTE)):
        if mark in marks:
            lines += [note, ""]
    return "\n".join(lines)


def still_improving(record: dict) -> bool:
    """Whether training stopped at its epoch limit while its best validation score was the last one measured.

    Such a row (e.g. ``tiger:epochs=6`` cut to fit a CPU session) scores below the converged method and must not
    pass for it; rows stopped by patience, and methods without an epoch history, are not marked.
    """
    report = record.get("report") or {}
    epochs = (record.get("settings") or {}).get("epochs")
    epochs_run = report.get("epochs_run")
    return bool(report.get("history")) and epochs_run == epochs and report.get("best_epoch") == epochs_run - 1


def _row_mark(runs: list[dict]) -> str:
    """† for a reduced CPU schedule (which says more than ‡, so it wins), else ‡ for a run cut short."""
    if any(r.get("reduced_schedule") for r in runs):
        return f" {REDUCED_MARK}"
    return f" {UNCONVERGED_MARK}" if any(still_improving(r) for r in runs) else ""


LEGEND = ("Leave-last-out split; full ranking over all items; one target per user. "
          "Metric cells: mean [95% bootstrap CI over users] for one seed, mean ± sd over seeds otherwise; "
          "best in bold. Coverage@10: share of the catalogue in at least one test user's top 10 (near 0: every "
          "user gets the same few items). History@10: mean share of a top 10 taken by items the user already "
          "has (candidates here; on data without repeat purchases each is a wasted slot). "
          "Latency: ms per user at batch 16 after a warm-up batch. "
          "Generated by `python -m bench leaderboard` from results.jsonl: do not edit by hand.")


COSTS_LEGEND = ("GPU-h: wall seconds x GPUs / 3600 (0 on a CPU, where the wall time is the cost). MFU: model FLOPs "
                "of the stage's training tokens (forward 2N, backward 2N, weight gradients 2N of the trainable "
                "share) per second over the GPU's measured bf16 matrix-product rate (measured alone and passed in "
                "GRBENCH_BF16_MATMUL_TFLOPS since GPU run 3; runs before it on a shared GPU measured it beside the "
                "others, which overstates their MFU: docs/llm-on-gpu.md); 'with attention' adds causal attention's "
                "score and value products, 6 x layers x attention width x the sum of squared sequence lengths "
                "(bench.costs.attention_flops; runs before GPU run 6 lack it). Latency: ms per user at batch "
                "16 after a warm-up batch; users/s: the best of batches 16, 64 and 128 (GPU runs only). "
                "'shared by N runs': N processes computed on the GPU during the run, so its times are upper bounds. "
                "Generated by `python -m bench leaderboard`: do not edit by hand.")


def render_dataset_tables(records: list[dict], datasets: set[str] | None = None) -> str:
    """Markdown of the chosen datasets' tables (all when ``datasets`` is None)."""
    sections = [
        _dataset_section(dataset, fingerprint, rows)
        for (dataset, fingerprint), rows in sorted(_group(records).items())
        if datasets is None or dataset in datasets
    ]
    return "\n".join(sections) if sections else "No results yet."


def _stage_text(stage: dict) -> str:
    text = f"{stage['name']} {stage['wall_s']:.1f}s/{stage['gpu_hours']:.4f} GPU-h"
    extra = stage.get("extra", {})
    if extra.get("cached") and extra.get("trained_on"):
        shared = extra.get("trained_shared_by") or 0
        text += f" (cached, trained on {extra['trained_on']}{f', shared by {shared} runs' if shared > 1 else ''})"
    if extra.get("mfu") is not None:  # records before attention's FLOPs were counted hold the first alone
        with_attention = extra.get("mfu_with_attention")
        text += f" (MFU {100 * extra['mfu']:.1f}%" + \
            ("" if with_attention is None else f", {100 * with_attention:.1f}% with attention") + ")"
    if extra.get("mean_reward") is not None:
        text += f" ({_reward_text(extra)})"
    return text


def _reward_text(extra: dict) -> str:
    """GRPO's rewards: a reward that never varies within a prompt's completions trains nothing, so that is said
    first. Records from before the spread, the clipped share and the flag were kept show what they hold (the flag
    follows from a mean share of prompts without spread of 1)."""
    zero_std = extra.get("mean_frac_reward_zero_std")
    never = extra.get("reward_never_varied")
    if never is None and zero_std is not None:
        never = bool(np.isclose(zero_std, 1.0))
    parts = ["REWARD NEVER VARIED: no advantage to learn from"] if never else []
    reward = f"mean reward {extra['mean_reward']:.3f}"
    if extra.get("first_reward") is not None and extra.get("last_reward") is not None:
        reward += f" (first step {extra['first_reward']:.3f}, last {extra['last_reward']:.3f})"
    parts.append(reward)
    spread = extra.get("prompts_with_reward_spread")
    if spread is None and zero_std is not None:
        spread = 1.0 - zero_std
    if spread is not None:
        parts.append(f"{100 * spread:.0f}% of prompts with reward spread")
    if extra.get("completions_clipped") is not None:
        parts.append(f"{100 * extra['completions_clipped']:.0f}% of completions cut at the length limit")
    return ", ".join(parts)


def _throughput(record: dict) -> str:
    best = record["inference"].get("throughput") or {}
    stopped = (f"out of memory @ {best['out_of_memory_at']}" if best.get("out_of_memory_at") else
               f"{best['too_large_at']} would not fit" if best.get("too_large_at") else "")
    if best.get("users_per_s") is None:
        return stopped
    text = f"{best['users_per_s']:,.0f} @ {best['batch_size']}"
    return f"{text} ({stopped})" if stopped else text


def costs_table(records: list[dict]) -> str:
    table = []
    for record in sorted(records, key=lambda r: (r["dataset"], r["method"], r["profile"], record_device(r), r["seed"])):
        stages = "; ".join(_stage_text(s) for s in record["stages"])
        table.append([record["dataset"], record["method"], record["profile"], record["seed"],
                      stages or "", f"{record['train']['gpu_hours']:.4f}", _seconds(record["train"]["wall_s"]),
                      _seconds(record["inference"]["wall_s"]), _ms([record]), _throughput(record),
                      hardware_label(record)])
    headers = ["Dataset", "Method", "Profile", "Seed", "Stages (wall / GPU-h, MFU)", "Train GPU-h", "Train wall (s)",
               "Inference wall (s)", "Latency (ms/user)", "Users/s @ best batch", "Hardware"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def _stage_cost(stages: list[dict | None]) -> str:
    """One stage's mean cost over seeds: GPU-hours on a GPU, wall seconds on a CPU; empty where no run had it."""
    found = [s for s in stages if s is not None]
    if not found:
        return ""
    if any(s["gpus"] for s in found):
        return f"{np.mean([s['gpu_hours'] for s in found]):.4f} GPU-h"
    return f"{np.mean([s['wall_s'] for s in found]):.0f} s"


def llm_costs_table(records: list[dict]) -> str:
    """The LLM methods side by side (the study's efficiency comparison: SFT vs PauseRec vs OneRec-Think): per
    dataset, profile and hardware, each method's training cost by stage (GPU-hours, or wall seconds on a CPU;
    shared stages such as CPT count for every method built on them), total, and inference latency; means over
    seeds. The commit column shows which rows came from one run of the same code."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.get("family") == "llm":
            groups[(record["dataset"], record["profile"], hardware_label(record))][record["method"]].append(record)
    sections = []
    for (dataset, profile, hardware), by_method in sorted(groups.items()):
        stage_names = list(dict.fromkeys(s["name"] for runs in by_method.values() for r in runs for s in r["stages"]))
        table = []
        for method, runs in sorted(by_method.items()):
            cells = [_stage_cost([next((s for s in r["stages"] if s["name"] == name), None) for r in runs])
                     for name in stage_names]
            table.append([method, len(runs), *cells,
                          f"{np.mean([r['train']['gpu_hours'] for r in runs]):.4f}",
                          _seconds(np.mean([r["train"]["wall_s"] for r in runs])), _ms(runs), _commits(runs)])
        headers = ["Method", "Seeds", *stage_names, "Train GPU-h", "Train wall (s)",
                   "Latency (ms/user)", "Commit"]
        sections += [f"### {dataset}, profile {profile}, {hardware}", "",
                     tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    return "\n".join(sections) if sections else "No LLM results yet."


def _commits(runs: list[dict]) -> str:
    """The short commits of ``runs``, each once."""
    return ", ".join(dict.fromkeys(str(r.get("git_commit") or "?")[:7] for r in runs))


def write_leaderboards(records: list[dict], folder: Path, results_folder: Path) -> list[Path]:
    """Writes one Markdown file per dataset, ``costs.md``, ``comparisons.md`` (the study's paired comparisons,
    from the rankings under ``results_folder``), ``index.md`` and the headline pages and plots
    (:func:`bench.headline.write_headline`); returns their paths."""
    from bench.compare import COMPARISONS_LEGEND, comparison_table, study_comparisons
    from bench.headline import HEADLINE_PAGE, RUNS_PAGE, write_headline

    folder = Path(folder)
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_dataset[record["dataset"]].append(record)
    written = []
    index = ["# GRBench leaderboards", "", LEGEND, "",
             f"- [at a glance]({HEADLINE_PAGE}): one row per method, the published numbers, cost against quality",
             f"- [runs]({RUNS_PAGE}): the command, commit and hardware of every run"]
    for dataset, dataset_records in sorted(by_dataset.items()):
        title = dataset_title(dataset)
        path = folder / f"{slug(title)}.md"
        text = f"# {title}\n\n{LEGEND}\n\n{render_dataset_tables(dataset_records)}"
        write_atomically(path, text.encode("utf-8"))
        written.append(path)
        # the best leaderboard row (its mean over seeds, as the table shows it), not the luckiest single seed
        rows = [runs for by_row in _group(dataset_records).values() for runs in by_row.values()]
        best_score, best = max(((_metric_summary(runs, "ndcg@10")[0], runs[0]) for runs in rows), key=lambda x: x[0])
        index.append(f"- [{title}]({path.name}): {len({r['method'] for r in dataset_records})} methods, "
                     f"best NDCG@10 {best_score:.4f} ({best['method']}, {best['profile']})")
    index += ["- [costs](costs.md): training and inference cost of every run",
              "- [comparisons](comparisons.md): the study's claims as paired comparisons over users and seeds", ""]
    costs_path = folder / "costs.md"
    text = (f"# Costs\n\n{COSTS_LEGEND}\n\n## LLM methods side by side\n\n{llm_costs_table(records)}\n"
            f"## Every run\n\n{costs_table(records)}\n")
    write_atomically(costs_path, text.encode())
    comparisons_path = folder / "comparisons.md"
    text = (f"# Paired comparisons\n\n{COMPARISONS_LEGEND}\n\n"
            f"{comparison_table(study_comparisons(results_folder, records))}")
    write_atomically(comparisons_path, text.encode("utf-8"))
    index_path = folder / "index.md"
    write_atomically(index_path, "\n".join(index).encode("utf-8"))
    return [*written, costs_path, comparisons_path, index_path, *write_headline(records, folder)]
