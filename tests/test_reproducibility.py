"""The reproducibility promise: the same command, seed and hardware give the same metrics, bit-identical on the
CPU for the ``smoke`` profile.

``python -m bench run --profile smoke ...`` runs twice as separate processes, each from an empty stage cache and
data folder of its own, each in its own working directory so the command line is the very same (``--out
results``), with different ``PYTHONHASHSEED`` values (an order that hangs on string hashing shows up here even
under tox, which pins it) and the inherited ``OMP_NUM_THREADS``. Every record must be equal except for timings,
its creation time and the git commit: metrics exactly (``==``), the training report (loss history, best epoch,
stage losses) and settings; every rankings file byte for byte. A third run with ``--seeds 1`` must change the
rankings of every trained method in it, so a method that ignored its seed fails here too.

The default test runs one method per family (about 30 s of CPU on one core); the every-method one (about 110 s)
is ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.registry import FAMILIES, default_methods, methods

RUN = ["-m", "bench", "run", "--profile", "smoke", "--datasets", "synthetic", "--out", "results"]
FAST_METHODS = ("random", "sasrec", "hstu", "tiger", "sft")  # RecBole's trainer and our own loop for id-based
FAST_SEED_METHODS = ("hstu",)  # the --seeds 1 run of the fast test: the cheapest trained method
# measured, not computed: they differ between two identical runs by design
TIMING_KEYS = {"wall_s", "carried_wall_s", "gpu_hours", "carried_gpu_hours", "ms_per_user", "seconds",
               "tokens_per_s", "mfu"}  # throughputs are tokens (or FLOPs) over measured seconds
PROVENANCE_KEYS = {"created_at", "git_commit"}  # another commit may land between the runs; not a result


def bench_run(tmp_path: Path, name: str, method_names: tuple[str, ...], seed: int, hash_seed: str) -> Path:
    """Runs the benchmark in a fresh process from ``tmp_path/name`` (empty cache and data); returns its --out."""
    folder = tmp_path / name
    folder.mkdir()
    env = {**os.environ, "GRBENCH_CACHE": str(folder / "cache"), "GRBENCH_DATA": str(folder / "data"),
           "PYTHONHASHSEED": hash_seed}
    command = [sys.executable, *RUN, "--methods", ",".join(method_names), "--seeds", str(seed)]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed in {folder}:\n{result.stderr[-4000:]}"
    return folder / "results"


def without(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def records(out: Path) -> dict[str, dict]:
    """The run's records by method, its cache folder written as ``$GRBENCH_CACHE`` (stage folders are named)."""
    cache = str(out.parent / "cache")
    found = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        record = json.loads(line.replace(json.dumps(cache)[1:-1], "$GRBENCH_CACHE"))
        found[record["method"]] = record
    return found


def losses(value: Any, path: str = "") -> dict[str, Any]:
    """Every loss (and GRPO reward) in a training report, by where it sits: epoch histories, stage losses."""
    found: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if "loss" in key or "reward" in key:
                found[f"{path}.{key}"] = item
            else:
                found.update(losses(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found.update(losses(item, f"{path}[{n}]"))
    return found


def rankings(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "rankings").rglob("*.jsonl.gz"))}


@pytest.mark.parametrize("method_names, seed_methods", [
    pytest.param(FAST_METHODS, FAST_SEED_METHODS, id="one-per-family"),
    pytest.param(None, None, id="every-method", marks=pytest.mark.slow),  # None: default_methods(), all 12
])
def test_same_command_and_seed_give_bit_identical_results(tmp_path, method_names, seed_methods):
    registered = methods()
    method_names = method_names or tuple(default_methods())
    seed_methods = seed_methods or method_names
    assert {registered[name].family for name in method_names} == set(FAMILIES)
    first = bench_run(tmp_path, "first", method_names, seed=0, hash_seed="1")
    second = bench_run(tmp_path, "second", method_names, seed=0, hash_seed="2")

    first_records, second_records = records(first), records(second)
    assert sorted(first_records) == sorted(second_records) == sorted(method_names)
    for name in method_names:
        a, b = first_records[name], second_records[name]
        assert a["metrics"] == b["metrics"], f"{name}: metrics differ between two identical runs"
        assert losses(a["report"]) == losses(b["report"]), f"{name}: training losses differ"
        if registered[name].has_training_schedule:
            assert losses(a["report"]), f"{name}: its report holds no loss history to compare"
        volatile = TIMING_KEYS | PROVENANCE_KEYS
        assert without(a, volatile) == without(b, volatile), f"{name}: records differ beyond timings"
    first_rankings, second_rankings = rankings(first), rankings(second)
    assert len(first_rankings) == len(method_names) and sorted(first_rankings) == sorted(second_rankings)
    differing = [path for path, data in first_rankings.items() if second_rankings[path] != data]
    assert not differing, f"rankings differ byte for byte between two identical runs: {differing}"

    other = bench_run(tmp_path, "seed1", seed_methods, seed=1, hash_seed="1")
    other_records, other_rankings = records(other), rankings(other)
    trained = [name for name in seed_methods if registered[name].has_training_schedule]
    assert trained, "the --seeds 1 run must hold a trained method"
    for name in trained:
        same = other_rankings[other_records[name]["rankings"]] == first_rankings[first_records[name]["rankings"]]
        assert not same, f"{name}: seed 1 ranks every test user exactly as seed 0 (is the seed ignored?)"
