"""scripts/device/run.sh rehearsed on a CPU, so that a GPU session's minutes are not spent finding a missing file:
the study's streams (issue 44: `sft`, `pauserec` and `onerec_think` with their analyses, side by side) go through
the device calls `setup` and `start` (which waits for them and collects) from a copy of the tree, on the smoke
profile's tiny model (no GGUF: WITHOUT_GGUF=1), with the SIDs prepared ahead in `.device/cache`
(scripts/device/sids.py) and the sentence encoder blocked as on the device, and what a session takes home comes
back in `$OUT/results.tgz`. The default run rehearses the Beauty streams on a synthetic stand-in (BEAUTY=); the
slow one runs the Beauty and Toys streams on the shared S3-Rec files through `.device/data`, as prepare.sh lays
them out."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import bench.sid as sid
from bench.results import slug
from tests.conftest import SHARED_DATA
from tests.test_sid import fake_embed

ROOT = Path(__file__).resolve().parent.parent
RUN = "scripts/device/run.sh"
# what the streams run from (a device call sends the whole tree; the rest is documentation and committed results,
# which the rehearsal's cells are none of)
TREE = ("bench", "methods", "baselines", "scripts", "benchmarks", "pyproject.toml")
STUDY = ("sft", "pauserec", "onerec_think")
ANALYSED = ("pauserec", "onerec_think")
BLOCK_ENCODER = '''import importlib.abc, sys
class _NotCarried(importlib.abc.MetaPathFinder):
    """The device's image lacks the sentence encoder: a run that needs it fails there, so it fails here."""
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "sentence_transformers":
            raise ImportError(f"{name} does not travel to the GPU machine (scripts/device/prepare.sh)")
sys.meta_path.insert(0, _NotCarried())
'''

spec = importlib.util.spec_from_file_location("device_sids", ROOT / "scripts" / "device" / "sids.py")
device_sids = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_sids)


def device_call(tmp_path: Path) -> Path:
    """A copy of what a call sends (the tree's code, an empty results/), where the device would unpack it."""
    repo = tmp_path / "call"
    for name in TREE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, repo / name)
    (repo / "results").mkdir()
    return repo


def prepare_sids(repo: Path, datasets: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare.sh's SID step for the smoke profile, into the call's .device/cache (a seeded stand-in for the
    encoder: the fingerprint is the configuration's, not the vectors')."""
    monkeypatch.setattr(sid, "embed_texts", lambda texts, *args, **kwargs: fake_embed(texts))
    monkeypatch.setenv("GRBENCH_CACHE", str(repo / ".device" / "cache"))
    monkeypatch.setenv("GRBENCH_DATA", str(repo / ".device" / "data"))
    assert device_sids.main(["--profile", "smoke", "--methods", ",".join(STUDY), "--datasets", datasets]) == 0


def device(repo: Path, state: Path, verb: str, timeout: int, **env: str) -> subprocess.CompletedProcess:
    """One `run.sh` call in the call's tree, with this Python first on PATH (the device's is python3)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GRBENCH_")}
    environment.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", STATE=str(state),
                       OUT=str(state / "out"), STREAM_PROFILE="smoke", STREAM_MAX_USERS="8", WITHOUT_GGUF="1",
                       SMOKE="", **env)
    return subprocess.run(["bash", RUN, verb], cwd=repo, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def rehearse(repo: Path, machine: Path, streams: str, timeout: int, **env: str) -> tuple[Path, str]:
    """`setup`, then `start` with the streams, which waits for them and collects, on a fresh ``machine`` folder
    (its STATE); returns the unpacked results.tgz and the calls' output. Streams still running at the end (they
    outlive the call, as on the device) are ended by the process ids they wrote."""
    state = machine / "state"
    (state / "site").mkdir(parents=True)
    (state / "site" / "sitecustomize.py").write_text(BLOCK_ENCODER)
    try:
        setup = device(repo, state, "setup", 300, **env)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        start = device(repo, state, "start", timeout, STREAMS_ON=streams, WAIT=str(timeout - 60), **env)
    finally:
        for pid_file in (state / "logs").glob("*.pid"):
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
    output = setup.stdout + start.stdout + start.stderr
    assert start.returncode == 0, output
    back = machine / "back"
    with tarfile.open(state / "out" / "results.tgz") as tar:
        tar.extractall(back, filter="data")
    return back, output


def check_returned(back: Path, dataset: str, streams: str, output: str) -> None:
    """Each study method's record (SIDs from the prepared cache, CPT trained once for all three), its rankings,
    the analyses, and the streams' logs, each stream finished."""
    records = [json.loads(line) for line in (back / "results" / "results.jsonl").read_text().splitlines()]
    mine = {r["method"]: r for r in records if r["dataset"] == dataset}
    assert sorted(mine) == sorted(STUDY), output
    for method, record in mine.items():
        assert record["profile"] == "smoke" and record["seed"] == 0 and record["eval_users"] == 8, method
        assert (back / "results" / record["rankings"]).is_file(), record["rankings"]
        assert stage(record, "sids")["cached"], f"{method} built its SIDs: the device lacks the encoder"
    assert sum(not stage(r, "cpt")["cached"] for r in mine.values()) == 1  # one stream trained it, two reused it
    for method in ANALYSED:
        analysis = json.loads((back / "results" / "analysis" / slug(dataset) / method / "smoke-seed0" /
                               "analysis.json").read_text())
        assert analysis["dataset"] == dataset and analysis["analyses"], method
    for name in streams.split():
        assert (back / "logs" / f"{name}.done").is_file(), output


def stage(record: dict, name: str) -> dict:
    return next(s["extra"] for s in record["stages"] if s["name"] == name)


def test_the_sentence_encoder_is_blocked_as_on_the_device(tmp_path):
    """The rehearsal below proves the SIDs came from the cache only if a run that needed the encoder would fail."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_ENCODER)
    blocked = subprocess.run([sys.executable, "-c", "import sentence_transformers"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert blocked.returncode != 0 and "does not travel" in blocked.stderr


def test_the_toys_streams_run_the_beauty_streams_cells_on_toys():
    def cells(*names: str) -> list[str]:
        listed = subprocess.run(["bash", RUN, "cells", *names], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "STATE": "/nonexistent/never-written"}, check=True)
        return listed.stdout.split()

    beauty = cells("beauty-sft", "beauty-pause", "beauty-think")
    assert beauty == ["sft|beauty|0", "pauserec|beauty|0", "analyze:pauserec|beauty|0", "onerec_think|beauty|0",
                      "analyze:onerec_think|beauty|0"]
    assert cells("toys-sft", "toys-pause", "toys-think") == [cell.replace("|beauty|", "|toys|") for cell in beauty]
    # the TIGER streams name the datasets, no longer the seq: files
    assert cells("tiger-toys")[-1] == "tiger|toys|0" and cells("tiger-beauty")[-1] == "tiger|beauty|0"


def test_the_beauty_study_streams_rehearsed_on_a_cpu_return_records_rankings_and_analyses(tmp_path, monkeypatch):
    stand_in, streams = "synthetic:users=40,items=60,seed=7", "beauty-sft beauty-pause beauty-think"
    repo = device_call(tmp_path)
    prepare_sids(repo, stand_in, monkeypatch)
    back, output = rehearse(repo, tmp_path, streams, 900, BEAUTY=stand_in)
    check_returned(back, stand_in, streams, output)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared S3-Rec files (../shared/data)")
def test_the_study_streams_on_beauty_and_toys_from_the_carried_data_directory(tmp_path, monkeypatch):
    repo = device_call(tmp_path)
    carried = repo / ".device" / "data" / "amazon2014-s3rec"  # as prepare.sh lays it out
    carried.mkdir(parents=True)
    for category in ("Beauty", "Toys_and_Games"):
        for suffix in (".txt", ".items.jsonl", "_item2attributes.json"):
            shutil.copy2(SHARED_DATA / f"{category}{suffix}", carried)
    prepare_sids(repo, "beauty,toys", monkeypatch)
    for dataset in ("beauty", "toys"):  # a session each, on a fresh machine
        streams = f"{dataset}-sft {dataset}-pause {dataset}-think"
        back, output = rehearse(repo, tmp_path / dataset, streams, 3000)
        check_returned(back, dataset, streams, output)
