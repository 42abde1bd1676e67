"""``python -m bench rerun <id>``: rebuild one stored run from its record alone, run it again, compare.

Why: a leaderboard number is only worth what its reproduction is. A record holds everything the run
depended on (method spec and options, dataset, profile, seed, evaluated user subset, split fingerprint,
code and package versions, resolved method settings), so the run can be remade without the command
that made it, with the settings it trained with even where a profile's defaults changed since. The rerun goes
to a folder of its own (default ``<out>/reruns/<id>/``), so the stored result is never overwritten; it
refuses when the data changed (another split fingerprint: the numbers would not be comparable), warns
when only code, packages, settings or hardware changed (then differences are expected and explained).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from difflib import get_close_matches
from pathlib import Path

from rich.console import Console
from tabulate import tabulate

from bench.costs import hardware
from bench.data import dataset_name, load_dataset
from bench.distributed import launch
from bench.errors import GRBenchError
from bench.profiles import get_profile
from bench.provenance import process_commit, versions
from bench.registry import parse_method_spec
from bench.results import ResultKey, ResultStore, check_writable, read_rankings
from bench.runner import cell_lock, cell_lock_path, make_progress, resolve_methods, run_cell
from bench.split import EVAL_SUBSET_SEED, leave_last_out

METRICS = ("hit@5", "hit@10", "ndcg@5", "ndcg@10")


def find_record(out: Path, result_id: str) -> dict:
    """The record with this id in ``<out>/results.jsonl``; else an error listing the closest ids."""
    store = ResultStore(out)
    if not store.path.exists():
        raise GRBenchError(f"no results at {store.path}")
    by_id = {record.get("id") or ResultKey.of(record).id: record for record in store.load()}
    if result_id in by_id:
        return by_id[result_id]
    close = get_close_matches(result_id, list(by_id), n=5, cutoff=0.5) or list(by_id)[:5]
    raise GRBenchError(f"no result {result_id!r} in {store.path}; close ids: {', '.join(close) or '(none stored)'}")


def dataset_spec(record: dict) -> str:
    """The spec that loads the record's dataset: its name, except for ``seq:<stem>``, whose path only the
    record's command line holds (``--datasets ...,seq:<path>,...``)."""
    name = record["dataset"]
    if not name.startswith("seq:"):
        return name
    from bench.cli import split_specs

    words: list[str] = []
    for word in shlex.split(record.get("command") or ""):
        words += word.split("=", 1) if word.startswith("--datasets=") else [word]
    specs = [spec for flag, value in zip(words, words[1:]) if flag == "--datasets" for spec in split_specs(value)]
    for spec in specs:
        if dataset_name(spec) == name:
            return spec
    raise GRBenchError(f"dataset {name!r}: its file's path is not in the record's command "
                       f"({record.get('command')!r}); pass --dataset seq:PATH")


def _differences(stored: dict, current: dict) -> list[str]:
    return [f"{key} {stored.get(key, 'absent')} -> {current.get(key, 'absent')}"
            for key in sorted({*stored, *current}) if stored.get(key) != current.get(key)]


def provenance_warnings(record: dict, settings: dict) -> list[str]:
    """What changed since the stored run besides the data: explains a difference, never forbids the rerun."""
    warnings = []
    if record.get("git_commit") != (commit := process_commit()):
        warnings.append(f"git commit differs: stored {record.get('git_commit')}, now {commit}")
    if changed := _differences(record.get("versions", {}), versions()):
        warnings.append(f"package versions differ: {'; '.join(changed)}")
    if changed := _differences(record.get("settings", {}), json.loads(json.dumps(settings))):
        warnings.append(f"the method's profile defaults changed since (stored -> now; the rerun uses the stored "
                        f"settings, a setting new since its current default): {'; '.join(changed)}")
    if (stored := record.get("hardware", {}).get("label")) != (now := hardware()["label"]):
        warnings.append(f"hardware differs: stored {stored}, now {now} (bit-identity is promised on CPU only)")
    return warnings


def compare(stored: dict, rerun: dict) -> tuple[str, int]:
    """A table of stored vs rerun metric means and the verdict: (text, exit status). A difference counts as
    noise only when the stored and the rerun mean both lie within the stored 95% bootstrap interval."""
    rows, identical, within = [], True, True
    for metric in METRICS:
        old, new = stored["metrics"][metric], rerun["metrics"][metric]["mean"]
        low, high = old.get("ci_low"), old.get("ci_high")
        identical &= new == old["mean"]
        # both means inside the stored interval: a stored mean outside its own CI is a corrupt record, never "noise"
        within &= low is not None and high is not None and low <= new <= high and low <= old["mean"] <= high
        ci = f"[{low:.4f}, {high:.4f}]" if low is not None and high is not None else "-"
        rows.append([metric, f"{old['mean']:.6f}", f"{new:.6f}", f"{abs(new - old['mean']):.3g}", ci])
    table = tabulate(rows, headers=["metric", "stored", "rerun", "|diff|", "stored 95% CI"], tablefmt="github",
                     disable_numparse=True)
    if identical:
        return f"{table}\n\nidentical: every metric is bit-identical to the stored one", 0
    if within:
        return f"{table}\n\nnote: the metrics differ, but every stored and rerun mean lies within the stored 95% CI", 0
    return f"{table}\n\nDIFFERENT: a stored or rerun mean lies outside the stored 95% CI", 1


def rerun(result_id: str, out: Path, into: Path | None = None, dataset: str | None = None,
          console: Console | None = None) -> int:
    """Reruns stored result ``result_id`` of ``out`` into ``into`` and prints the comparison; returns the exit
    status (0 identical or within the stored CI, 1 outside it)."""
    console = console or Console(stderr=True)
    launch()  # a distributed launch's ranks meet here first
    record = find_record(out, result_id)
    into = into if into is not None else out / "reruns" / result_id
    if into.resolve() == out.resolve():
        raise GRBenchError(f"--into {into} is the results folder itself; the stored result must not be overwritten")

    method, options = parse_method_spec(record["method"])
    if method.name != record.get("method_name", method.name) or options != record.get("options", options):
        raise GRBenchError(f"record {result_id}: method spec {record['method']!r} disagrees with its method_name "
                           f"{record.get('method_name')!r} / options {record.get('options')!r}")
    profile = get_profile(record["profile"])
    current = resolve_methods([record["method"]], profile)[0]
    # the settings the stored run trained with, not today's profile defaults: the same run, not today's row
    stored = record.get("settings", {})
    run = replace(current, settings={key: stored.get(key, value) for key, value in current.settings.items()})
    method.check_settings(run.settings)
    method.check_available(run.settings)
    if record["eval_subset"] not in ("all", f"fixed subset (seed {EVAL_SUBSET_SEED})"):
        raise GRBenchError(f"record {result_id}: evaluated subset {record['eval_subset']!r} is not the one this "
                           f"code draws (seed {EVAL_SUBSET_SEED}); the rerun would score other users")
    max_test_users = None if record["eval_subset"] == "all" else int(record["eval_users"])

    split = leave_last_out(load_dataset(dataset or dataset_spec(record)))
    if split.fingerprint != record["split_fingerprint"]:
        raise GRBenchError(f"the data changed: dataset {split.dataset!r} now splits to fingerprint "
                           f"{split.fingerprint}, the stored result {result_id} was made on "
                           f"{record['split_fingerprint']}; its numbers cannot be reproduced")
    for warning in provenance_warnings(record, current.settings):
        console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False, soft_wrap=True)

    users = split.evaluation_users(max_test_users)
    # the rerun trains in the cell's own cache folder: not while another process runs that cell
    key = ResultKey.of(record)
    with cell_lock(key) as ours:
        if not ours:
            raise GRBenchError(f"another process is running the cell of {result_id} (it holds "
                               f"{cell_lock_path(key)}); rerun it once that process is done")
        check_writable(into)
        with make_progress(console) as progress:
            cell = run_cell(split, run, profile, int(record["seed"]), users, progress)
    if cell is None:
        return 0  # not rank 0 of a distributed launch: rank 0 writes and compares
    made, rows = cell
    store = ResultStore(into)
    made["rankings"] = str(store.write_rankings(ResultKey.of(made), rows).relative_to(into))
    store.add(made)
    console.print(f"rerun of {result_id} stored in {store.path}", highlight=False, soft_wrap=True)

    text, status = compare(record, made)
    stored_rankings = out / record["rankings"] if record.get("rankings") else None
    if stored_rankings is not None and stored_rankings.exists():
        differing = sum(a != b for a, b in zip(read_rankings(stored_rankings), rows))
        text += (f"\nrankings: {'identical' if not differing else f'{differing} differ'} "
                 f"for the {len(rows)} evaluated users")
    print(text)
    return status
