"""``python -m bench``: run, leaderboard, datasets, methods, sids, analyze, audit, rerun."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from bench.errors import GRBenchError

DEFAULT_OUT = Path("results")
DEFAULT_LEADERBOARDS = Path("leaderboards")
RUNNING_ELSEWHERE = 3  # exit status of a run that left cells to other processes running them (bench.runner.cell_lock)


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def split_specs(text: str) -> list[str]:
    """Splits ``pop,sasrec:epochs=5,patience=3,synthetic:users=9`` into specs: a ``key=value`` part
    without a ``name:`` of its own continues the options of the spec before it."""
    specs: list[str] = []
    for part in _list(text):
        key, equals, _ = part.partition("=")
        if equals and ":" not in key and specs and ":" in specs[-1]:
            specs[-1] += f",{part}"
        else:
            specs.append(part)
    return specs


MAX_SEED = 2**32 - 1  # the range every seeded library (NumPy, torch, RecBole) accepts


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in _list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}") from None
    if not seeds or any(not 0 <= seed <= MAX_SEED for seed in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be integers from 0 to {MAX_SEED}, got {text!r}")
    return seeds


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, got {text!r}")
    return value


def _job_option(text: str) -> tuple[str, int | float | str]:
    """``mem_gb=64`` -> ("mem_gb", 64): numbers become numbers (submitit checks their types), the rest stays text."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a submitit parameter), got {text!r}")
    for kind in (int, float):
        try:
            return key.strip(), kind(value)
        except ValueError:
            continue
    return key.strip(), value


def _leaderboard_dir(args: argparse.Namespace) -> Path:
    """Leaderboards go to ./leaderboards for the default --out, else beside the results."""
    if args.leaderboards is not None:
        return args.leaderboards
    return DEFAULT_LEADERBOARDS if args.out == DEFAULT_OUT else args.out / "leaderboards"


def _add_store_arguments(parser: argparse.ArgumentParser, *, leaderboards: bool = True) -> None:
    """The results folder a command reads and writes, and (where it regenerates them) the leaderboards' folder."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default results/)")
    if leaderboards:
        parser.add_argument("--leaderboards", type=Path, default=None, help="leaderboard folder (see run)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="GRBench: one split, one evaluator, "
                                     "one leaderboard for generative recommendation.")
    commands = parser.add_subparsers(dest="command")

    run = commands.add_parser(
        "run", help="train and evaluate methods on datasets, then write leaderboards",
        description="Trains and evaluates every (method, dataset, seed) cell on the shared split, stores each "
        "finished cell at once and skips cells already stored. A cell that another process sharing the cache is "
        "running is skipped too; the run then ends with exit status 3 and names those cells. Stopped by Ctrl-C (exit "
        "status 130) or SIGTERM (143), it keeps what is finished: rerun the same command to continue.")
    run.add_argument("--methods", type=split_specs, default=["all"],
                     help="comma-separated method specs (name or name:key=value,...), or 'all' (default)")
    run.add_argument("--datasets", type=split_specs, default=None,
                     help="comma-separated dataset specs (default: the profile's, ml-100k for quick)")
    run.add_argument("--profile", default="quick", help="smoke | quick (default) | small | paper")
    run.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default 0)")
    _add_store_arguments(run, leaderboards=False)
    run.add_argument("--leaderboards", type=Path, default=None,
                     help="leaderboard folder (default leaderboards/ for the default --out, else OUT/leaderboards)")
    run.add_argument("--force", action="store_true", help="rerun cells that already have a result")
    run.add_argument("--dry-run", action="store_true",
                     help="train nothing: list each cell and what the run would do with it (skip it as stored or "
                     "running elsewhere, resume it from its checkpoint, or train it)")
    run.add_argument("--max-test-users", type=int, default=None,
                     help="score a fixed-seed subset of this many test users (same subset for every method)")
    cluster = run.add_argument_group(
        "cluster jobs", "--launcher slurm submits one job per cell through submitit and returns with the job ids; a "
        "last job merges their records into OUT/results.jsonl and writes the leaderboards once (`python -m bench "
        "progress --out OUT` shows the jobs). --launcher local runs the same jobs as subprocesses here and waits.")
    cluster.add_argument("--launcher", choices=("inline", "local", "slurm"), default="inline",
                         help="inline (default): every cell in this process, one after another")
    cluster.add_argument("--job-gpus", type=_count, default=None,
                         help="GPUs of a job whose method wants them (default 1; an LLM method's job runs one "
                         "data-parallel task per GPU, any other method takes at most one)")
    cluster.add_argument("--job-cpus", type=_count, default=None, help="CPUs of each task of a job (default 4)")
    cluster.add_argument("--job-minutes", type=_count, default=None,
                         help="time limit of a job in minutes (default 1440)")
    cluster.add_argument("--gpu-methods", type=_list, default=None,
                         help="names of the methods whose jobs get GPUs (default: the LLM methods and TIGER)")
    cluster.add_argument("--job-option", type=_job_option, action="append", default=None, metavar="KEY=VALUE",
                         help="any other submitit job parameter, repeatable: slurm_partition=gpu, slurm_account=x, "
                         "mem_gb=64, slurm_constraint=h100, ...")

    board = commands.add_parser("leaderboard", help="regenerate the Markdown leaderboards from stored results")
    _add_store_arguments(board)

    commands.add_parser("datasets", help="list dataset sources")
    commands.add_parser("methods", help="list registered methods")

    sids = commands.add_parser("sids", help="build (or load cached) semantic IDs of a dataset; print their statistics")
    sids.add_argument("--dataset", default="ml-100k", help="dataset spec (default ml-100k)")
    sids.add_argument("--quantizer", default="rqvae",
                      help="rqvae (default: TIGER's RQ-VAE) | rkmeans (residual k-means)")
    sids.add_argument("--encoder", default=None,
                      help="sentence-transformers model for item text (default: the packaged all-MiniLM-L6-v2)")
    sids.add_argument("--source", default="auto",
                      help="auto (default: text, else attributes+collaborative, else collaborative) | text | "
                      "attributes | collaborative | attributes+collaborative; several, comma-separated, or 'all' "
                      "(every source the dataset has) print their statistics side by side")
    sids.add_argument("--epochs", type=int, default=None, help="RQ-VAE training epochs (default 200)")
    sids.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    sids.add_argument("--examples", type=int, default=5, help="example items to show (default 5)")
    sids.add_argument("--rebuild", action="store_true", help="ignore and overwrite the cached SIDs")
    merge = commands.add_parser("merge", help="merge the results of other runs (another machine's, a GPU run's) "
                                "into --out, with their rankings; then regenerate the leaderboards")
    merge.add_argument("sources", type=Path, nargs="+", help="results folders to merge (each with results.jsonl)")
    _add_store_arguments(merge)

    analyze = commands.add_parser("analyze", help="analyses of trained LLM methods (metadata recovery, embedding "
                                  "PCA, pause attention): plots and a summary beside the leaderboards")
    analyze.add_argument("--methods", type=split_specs, default=["pauserec"],
                         help="comma-separated method specs with analyses (default pauserec)")
    analyze.add_argument("--datasets", type=split_specs, default=None,
                         help="comma-separated dataset specs (default: the profile's)")
    analyze.add_argument("--profile", default="quick", help="smoke | quick (default) | small | paper")
    analyze.add_argument("--seed", type=int, default=0, help="seed of the trained model (default 0)")
    analyze.add_argument("--out", type=Path, default=DEFAULT_LEADERBOARDS / "analysis",
                         help="folder for plots and summaries (default leaderboards/analysis)")
    audit = commands.add_parser("audit", help="leakage audit: no method's training inputs hold a user's validation "
                                "or test target; exit status 1 on a leak or an unaudited method")
    audit.add_argument("--dataset", default=None, help="dataset spec (default: the profile's first)")
    audit.add_argument("--methods", type=split_specs, default=["all"],
                       help="comma-separated method specs, or 'all' (default)")
    audit.add_argument("--profile", default="quick", help="smoke | quick (default) | small | paper")
    audit.add_argument("--seed", type=int, default=0, help="seed of the method instances (default 0)")
    rerun = commands.add_parser(
        "rerun", help="rebuild one stored result from its record alone, run it again, compare the metrics",
        description="Rebuilds the run of one stored result from its record (method spec and options, dataset, "
        "profile, seed, evaluated users), refuses if the data's split fingerprint changed, warns if the git "
        "commit, package versions, settings or hardware did, reruns it into a separate folder and prints stored "
        "vs rerun metric means. Exit status 0: identical, or different but within the stored 95% CI; "
        "1: outside it; 2: error (also while another process runs the cell). Stage caches (trained stages, "
        "checkpoints) are reused as in any run; for a "
        "from-scratch rerun, point GRBENCH_CACHE at an empty folder: GRBENCH_CACHE=$(mktemp -d) python -m bench "
        "rerun ID.")
    rerun.add_argument("result_id", help="the id of a record in OUT/results.jsonl, e.g. "
                       "ml-100k--bert4rec--quick--seed0--d929cbbf")
    _add_store_arguments(rerun, leaderboards=False)
    rerun.add_argument("--into", type=Path, default=None,
                       help="folder for the rerun's result (default OUT/reruns/<id>/; never OUT itself)")
    rerun.add_argument("--dataset", default=None,
                       help="dataset spec, for a seq:<path> record whose file moved (its fingerprint must match)")
    compare = commands.add_parser(
        "compare", help="paired comparison of two methods from their stored rankings (per seed and over seeds)",
        description="Scores both methods' stored top-10 lists again, user by user, on the users both ranked, and "
        "prints A - B of every metric: a paired bootstrap over users of each user's metric averaged over the "
        "seeds compared on each side, how many seeds A won, and each seed's difference (against B's same seed when "
        "both ran the same seeds, else against B's mean; where they ran different seeds, seeds whose models share a "
        "trained part (SID table or cached stage) are paired seed with seed and the others left out).")
    compare.add_argument("a", help="method spec A, as in the leaderboard (e.g. pauserec)")
    compare.add_argument("b", help="method spec B (e.g. sft)")
    compare.add_argument("--dataset", required=True,
                         help="dataset as in the leaderboard (ml-100k, beauty) or as given to run (seq:<path>)")
    compare.add_argument("--profile", default=None, help="profile (default: the one both have, if only one)")
    compare.add_argument("--device", default=None, choices=("cpu", "gpu"),
                         help="device (default: the one both have, if only one)")
    _add_store_arguments(compare, leaderboards=False)
    withdraw = commands.add_parser(
        "withdraw", help="take stored results out of the leaderboards (kept, with the reason, in withdrawn.jsonl)",
        description="For numbers found wrong after they were stored (a bug in the code that made them): removes "
        "the records from OUT/results.jsonl and their rankings, keeps each whole record with the reason in "
        "OUT/withdrawn.jsonl, and regenerates the leaderboards. Rerun the cells with the fixed code afterwards.")
    withdraw.add_argument("result_ids", nargs="+", help="ids of records in OUT/results.jsonl")
    withdraw.add_argument("--why", required=True, help="the reason, kept with each withdrawn record")
    _add_store_arguments(withdraw)
    list_stats = commands.add_parser(
        "list-stats", help="add the top-10 lists' catalogue coverage and history share to records stored without them",
        description="Computes coverage@10 and history@10 (bench/evaluate.py's list_stats) of every record in "
        "OUT/results.jsonl that lacks them, from its stored rankings and its dataset's split (which must load "
        "here, with the record's fingerprint), and regenerates the leaderboards. Runs since compute them "
        "themselves.")
    _add_store_arguments(list_stats)
    list_stats.add_argument("--datasets", type=split_specs, default=[],
                            help="dataset specs to use instead of those in the records' commands (by name: "
                            "seq:<path> is seq:<file stem>), e.g. where a GPU run read its files elsewhere")
    rename = commands.add_parser(
        "rename-dataset", help="move stored results to another name of the same data (seq:Beauty -> beauty), "
        "unretrained, where the split is proven the same",
        description="Loads dataset NEW, and moves every record of dataset OLD whose split fingerprint equals NEW's "
        "split fingerprinted under the name OLD (so each user's train, validation and test items are identical) "
        "to NEW: new name, fingerprint and id, its rankings moved, the old identity kept in the record's "
        "moved_from. A SID source the run resolved from the data (auto) is pinned in the method spec. Records "
        "of another split stay under OLD. Then the leaderboards are regenerated.")
    rename.add_argument("old", help="the dataset name the records carry now, e.g. seq:Beauty")
    rename.add_argument("new", help="the dataset spec to move them to, e.g. beauty (it must load here)")
    _add_store_arguments(rename)
    progress = commands.add_parser(
        "progress", help="how far each training run in the cache has got (epochs, best validation, when each ends)",
        description="First, where OUT has cluster jobs (run --launcher slurm|local), each job's state from the "
        "engine and whether its cell is stored. Then reads the epoch checkpoints and LLM stage folders under the "
        "cache ($GRBENCH_CACHE, else the "
        "user cache folder) and prints a table: a run's epochs done, its best and latest validation score, "
        "whether it finished, stopped early or can be resumed by rerunning its command, and for a resumable one "
        "the epoch at which early stopping ends it if validation does not improve again.")
    progress.add_argument("--cache", type=Path, default=None, help="cache folder (default: the one runs use)")
    progress.add_argument("--out", type=Path, default=DEFAULT_OUT,
                          help="results folder whose cluster jobs (run --launcher) to show first (default results/)")
    return parser


def command_progress(args: argparse.Namespace) -> int:
    from bench.cluster import jobs_report
    from bench.paths import cache_dir
    from bench.progress import format_progress, training_progress

    jobs = jobs_report(args.out)
    if jobs is not None:
        print(jobs + "\n")
    cache = args.cache or cache_dir()
    if not cache.is_dir():
        if jobs is not None:
            return 0
        raise GRBenchError(f"{cache}: no such cache folder (set GRBENCH_CACHE or pass --cache)")
    print(format_progress(training_progress(cache), cache))
    return 0


def command_list_stats(args: argparse.Namespace) -> int:
    from bench.backfill import backfill_list_stats
    from bench.leaderboard import write_leaderboards
    from bench.results import ResultStore, check_writable

    check_writable(args.out)
    store = ResultStore(args.out)
    with store.locked():
        filled, skipped = backfill_list_stats(store, args.datasets, log=lambda line: print(line, file=sys.stderr))
        paths = write_leaderboards(store.load(), _leaderboard_dir(args), args.out)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(f"filled {filled} records, skipped {len(skipped)}; wrote {', '.join(str(p) for p in paths)}",
          file=sys.stderr)
    return 0


def command_rename_dataset(args: argparse.Namespace) -> int:
    import time

    from bench.leaderboard import write_leaderboards
    from bench.rename import rename_dataset
    from bench.results import ResultStore, check_writable

    check_writable(args.out)
    store = ResultStore(args.out)
    with store.locked():
        outcome = rename_dataset(store, args.old, args.new, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        paths = write_leaderboards(store.load(), _leaderboard_dir(args), args.out)
    for old_id, new_id in outcome.moved:
        print(f"moved {old_id} -> {new_id}")
    for old_id in outcome.other_split:
        print(f"kept {old_id}: another split than {args.new}'s")
    print(f"moved {len(outcome.moved)} records; wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def command_rerun(args: argparse.Namespace) -> int:
    from bench.rerun import rerun

    return rerun(args.result_id, args.out, args.into, args.dataset)


def command_audit(args: argparse.Namespace) -> int:
    from bench.audit import render, run_audit
    from bench.profiles import get_profile
    from bench.registry import default_methods

    profile = get_profile(args.profile)
    methods = default_methods() if args.methods == ["all"] else args.methods
    report = run_audit(methods, args.dataset or profile.default_datasets[0], profile.name, args.seed)
    print(render(report))
    return 1 if report.failed else 0


def command_analyze(args: argparse.Namespace) -> int:
    from bench.profiles import get_profile
    from bench.runner import run_analyses

    datasets = args.datasets or list(get_profile(args.profile).default_datasets)
    run_analyses(args.methods, datasets, args.profile, args.seed, args.out)
    return 0


def command_run(args: argparse.Namespace) -> int:
    from bench.profiles import get_profile
    from bench.registry import default_methods
    from bench.runner import RunPlan, run_benchmark

    profile = get_profile(args.profile)
    methods = default_methods() if args.methods == ["all"] else args.methods
    datasets = args.datasets or list(profile.default_datasets)
    if args.max_test_users is not None and args.max_test_users < 1:
        raise GRBenchError("--max-test-users must be at least 1")
    plan = RunPlan(methods=methods, datasets=datasets, profile=profile.name, seeds=args.seeds, out=args.out,
                   leaderboards=_leaderboard_dir(args), force=args.force, max_test_users=args.max_test_users)
    job_settings = {"gpus": args.job_gpus, "cpus": args.job_cpus, "minutes": args.job_minutes,
                    "gpu_methods": None if args.gpu_methods is None else tuple(args.gpu_methods),
                    "options": None if args.job_option is None else dict(args.job_option)}
    given = {name: value for name, value in job_settings.items() if value is not None}
    if given and args.launcher == "inline":
        raise GRBenchError("--job-gpus, --job-cpus, --job-minutes, --gpu-methods and --job-option are for cluster "
                           "jobs: add --launcher slurm or --launcher local")
    if args.launcher != "inline" and not args.dry_run:
        from bench.cluster import JobResources, submit_matrix

        submit_matrix(plan, args.launcher, JobResources(**given))
        return 0
    if args.dry_run:
        from bench.progress import format_plan, plan_cells

        print(format_plan(plan_cells(plan)))
        return 0
    outcome = run_benchmark(plan)
    return RUNNING_ELSEWHERE if outcome.running_elsewhere else 0


def command_leaderboard(args: argparse.Namespace) -> int:
    from bench.leaderboard import render_dataset_tables, write_leaderboards
    from bench.results import ResultStore

    store = ResultStore(args.out)
    if not store.path.exists():
        raise GRBenchError(f"no results at {store.path}; run `python -m bench run --out {args.out}` first")
    with store.locked():  # a run adding a record meanwhile writes the leaderboards after us
        records = store.load()
        paths = write_leaderboards(records, _leaderboard_dir(args), args.out)
    print(render_dataset_tables(records))
    print(f"\nwrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def command_merge(args: argparse.Namespace) -> int:
    from bench.leaderboard import write_leaderboards
    from bench.results import ResultStore, check_writable

    check_writable(args.out)
    store = ResultStore(args.out)
    merged = sum(store.merge_from(source) for source in args.sources)
    with store.locked():
        records = store.load()
        paths = write_leaderboards(records, _leaderboard_dir(args), args.out)
    print(f"merged {merged} records into {store.path}; wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    without = sum("list_stats" not in record for record in records)
    if without:
        print(f"{without} records have no Coverage@10/History@10 (made before runs computed them): "
              f"`python -m bench list-stats --out {args.out}` adds them", file=sys.stderr)
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from bench.compare import compare_records, comparison_table
    from bench.data import dataset_name
    from bench.results import ResultStore, record_device

    args.dataset = dataset_name(args.dataset)  # seq:<path> as given to `run` names the same results as seq:<stem>
    records = [r for r in ResultStore(args.out).load() if r["dataset"] == args.dataset]
    if not records:
        datasets = sorted({r["dataset"] for r in ResultStore(args.out).load()})
        raise GRBenchError(f"no results of dataset {args.dataset!r} in {args.out}; stored: {', '.join(datasets)}")
    chosen = {}
    for spec in (args.a, args.b):
        mine = [r for r in records if r["method"] == spec and args.profile in (None, r["profile"])
                and args.device in (None, record_device(r))]
        if not mine:
            specs = sorted({r["method"] for r in records})
            raise GRBenchError(f"no results of {spec!r} on {args.dataset}"
                               f"{'' if args.profile is None else f', profile {args.profile}'}"
                               f"{'' if args.device is None else f', device {args.device}'}; "
                               f"methods stored there: {', '.join(specs)}")
        chosen[spec] = mine
    cells = {(r["split_fingerprint"], r["profile"], record_device(r)) for r in chosen[args.a]} & \
        {(r["split_fingerprint"], r["profile"], record_device(r)) for r in chosen[args.b]}
    if len(cells) != 1:
        found = ", ".join(f"profile {p} on {d}" for _, p, d in sorted(cells)) or "none in common"
        raise GRBenchError(f"{args.a} and {args.b} must share exactly one split, profile and device to be paired "
                           f"({found}); choose with --profile and --device")
    (cell,) = cells
    same = lambda r: (r["split_fingerprint"], r["profile"], record_device(r)) == cell  # noqa: E731
    comparison = compare_records(args.out, [r for r in chosen[args.a] if same(r)],
                                 [r for r in chosen[args.b] if same(r)])
    print(comparison_table([comparison]))
    return 0


def command_withdraw(args: argparse.Namespace) -> int:
    import time

    from bench.leaderboard import write_leaderboards
    from bench.results import ResultStore, check_writable

    if not args.why.strip():
        raise GRBenchError("--why must say why the results are withdrawn")
    check_writable(args.out)
    store = ResultStore(args.out)
    with store.locked():
        withdrawn = store.withdraw(args.result_ids, args.why.strip(), time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        paths = write_leaderboards(store.load(), _leaderboard_dir(args), args.out)
    for record in withdrawn:
        print(f"withdrew {record['id']} (NDCG@10 {record['metrics']['ndcg@10']['mean']:.4f})")
    print(f"kept in {args.out / 'withdrawn.jsonl'}; wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def command_datasets(args: argparse.Namespace) -> int:
    from bench.data import sources

    for name, source in sorted(sources().items()):
        spec = f"{name}:{source.argument}" if source.argument else name
        print(f"{spec:<28} {source.description}")
    return 0


def command_methods(args: argparse.Namespace) -> int:
    from bench.registry import methods

    for name, method in sorted(methods().items()):
        text = " (needs item text)" if method.needs_text else ""
        print(f"{name:<14} {method.family:<11} {method.description}{text}")
    return 0


def command_sids(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    from rich.console import Console
    from rich.progress import track

    from bench.data import load_dataset
    from bench.sid import SOURCES, SidConfig, build_semantic_ids, comparison_report, format_report, source_available
    from bench.split import leave_last_out

    config = SidConfig(quantizer=args.quantizer)
    if args.encoder:
        config = replace(config, encoder=args.encoder)
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    split = leave_last_out(load_dataset(args.dataset))
    data = split.train_view()
    if args.source == "all":
        sources = [source for source in SOURCES if source != "auto" and source_available(data, source)]
    else:
        sources = _list(args.source)
    configs = [replace(config, source=source) for source in sources]  # checks each name before any work
    console = Console(stderr=True)

    def progress(iterable, description: str = "", total: int | None = None):
        return track(iterable, description, total, console=console, transient=True)

    built = []
    for source_config in configs:
        started = time.perf_counter()
        sids = build_semantic_ids(data, source_config, seed=args.seed, rebuild=args.rebuild, track=progress)
        done = "loaded from cache" if sids.from_cache else f"built in {time.perf_counter() - started:.1f} s, cached"
        console.print(f"{sids.source}: {done}: {sids.cache_path}")
        built.append(sids)
    print(f"semantic IDs of {split.dataset} (split {split.fingerprint})\n")
    if len(built) > 1:
        print(comparison_report(built))
    else:
        print(format_report(built[0], split.catalog, split.item_ids, examples=args.examples))
    return 0


COMMANDS = {"run": command_run, "leaderboard": command_leaderboard, "datasets": command_datasets,
            "methods": command_methods, "sids": command_sids, "analyze": command_analyze, "merge": command_merge,
            "audit": command_audit, "rerun": command_rerun, "withdraw": command_withdraw,
            "compare": command_compare, "list-stats": command_list_stats,
            "progress": command_progress, "rename-dataset": command_rename_dataset}


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's time limit, ``timeout``), raised in the main thread so that a run stops as
    it does on Ctrl-C: ``finally`` blocks run (locks released, temporary files removed), finished results and
    checkpoints are kept, and the message says how to continue. Without it the process would just die."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can a handler be set
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return COMMANDS[args.command](args)
    except GRBenchError as error:
        if os.environ.get("GRBENCH_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        how = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"{how}: finished results are kept; rerun the same command to continue", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(interrupt, Terminated) else 130
    finally:
        if in_main_thread:  # a handler set outside Python reads as None: put the default back then
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
