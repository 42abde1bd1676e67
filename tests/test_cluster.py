"""The matrix as cluster jobs (bench.cluster): submitit's local executor end to end, and its Slurm executor under
submitit's own mocked Slurm (its test helper ``mocked_slurm`` fakes sbatch and sacct; the sbatch files and the
pickled jobs are submitit's real ones, and ``process_job`` runs a job as Slurm's node would)."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.cluster import JOBS_FILE, JobResources, cluster_folder, load_jobs
from bench.registry import methods
from bench.results import ResultStore
from bench.runner import MethodRun

SMOKE = ["run", "--profile", "smoke", "--methods", "pop,random", "--seeds", "0,1"]


def metrics_by_cell(out) -> dict[tuple[str, int], dict[str, float]]:
    return {(r["method"], r["seed"]): {name: m["mean"] for name, m in r["metrics"].items()}
            for r in ResultStore(out).load()}


def test_local_launcher_stores_each_cell_once_with_the_metrics_of_a_plain_run(tmp_path, capsys):
    """Two methods x two seeds as four local jobs and a merge job: four records, each once, as `bench run` makes them;
    a rerun submits nothing."""
    out, plain = tmp_path / "jobs", tmp_path / "plain"
    assert main([*SMOKE, "--launcher", "local", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "merged 4 cells" in err
    records = ResultStore(out).load()
    assert sorted((r["method"], r["seed"]) for r in records) == [("pop", 0), ("pop", 1), ("random", 0), ("random", 1)]
    assert main([*SMOKE, "--out", str(plain)]) == 0
    assert metrics_by_cell(out) == metrics_by_cell(plain)
    for record in records:
        assert (out / record["rankings"]).is_file()
        assert record["command"].startswith(f"python -m bench run --methods {record['method']} --datasets synthetic")
    assert (out / "leaderboards" / "synthetic.md").is_file()
    assert not list((cluster_folder(out) / "cells").iterdir())  # every cell's folder merged and removed
    jobs = load_jobs(out)
    assert [job.kind for job in jobs] == ["cell"] * 4 + ["merge"] and len({job.cell for job in jobs[:4]}) == 4

    capsys.readouterr()
    assert main([*SMOKE, "--launcher", "local", "--out", str(out)]) == 0
    assert "nothing to submit" in capsys.readouterr().err
    assert len(load_jobs(out)) == 5 and len(ResultStore(out).load()) == 4


def test_slurm_jobs_ask_for_what_each_method_needs_and_the_merge_waits_for_them(tmp_path, capsys):
    """sbatch files: GPUs and a task per GPU for the data-parallel LLM method, none for popularity, the options given;
    the merge job depends on every cell job. A running job keeps its cell from a second submission. One job and the
    merge job then run as on Slurm's nodes: the record reaches OUT/results.jsonl and the leaderboards are written."""
    from submitit.core import submission
    from submitit.slurm.test_slurm import mocked_slurm

    out = tmp_path / "out"
    logs = cluster_folder(out) / "logs"
    with mocked_slurm() as slurm:
        assert main(["run", "--launcher", "slurm", "--profile", "smoke", "--methods", "pop,sft", "--seeds", "0,1",
                     "--out", str(out), "--job-gpus", "2", "--job-option", "slurm_partition=dev",
                     "--job-option", "mem_gb=16"]) == 0
        jobs = {job.cell or "merge": job.job_id for job in load_jobs(out)}
        assert sorted(jobs.values()) == ["12", "13", "14", "15", "16"]
        printed = capsys.readouterr().err
        assert all(job_id in printed for job_id in jobs.values())

        def sbatch(cell: str) -> str:
            return (logs / f"{jobs[cell]}_submission.sh").read_text()

        pop, sft = "synthetic--pop--smoke--seed0--23968c04", "synthetic--sft--smoke--seed0--23968c04--gpu"
        assert "--gpus-per-node" not in sbatch(pop) and "#SBATCH --ntasks-per-node=1" in sbatch(pop)
        assert "#SBATCH --gpus-per-node=2" in sbatch(sft) and "#SBATCH --ntasks-per-node=2" in sbatch(sft)
        for cell in jobs:
            assert "#SBATCH --partition=dev" in sbatch(cell) and "#SBATCH --mem=16GB" in sbatch(cell)
        cells = sorted(jobs[cell] for cell in jobs if cell != "merge")
        assert f"#SBATCH --dependency=afterany:{':'.join(cells)}" in sbatch("merge")

        assert main(["run", "--launcher", "slurm", "--profile", "smoke", "--methods", "pop", "--out", str(out)]) == 0
        assert f"skip {pop}: job {jobs[pop]} is RUNNING" in capsys.readouterr().err
        assert len(load_jobs(out)) == 5

        with slurm.job_context(jobs[pop]):
            submission.process_job(logs)
        slurm.set_job_state(jobs[pop], "COMPLETED")
        assert main(["progress", "--out", str(out)]) == 0
        table = capsys.readouterr().out
        assert f"| {jobs[pop]} " in table and "COMPLETED, record waiting to be merged" in table
        with slurm.job_context(jobs["merge"]):
            submission.process_job(logs)
        assert [r["method"] for r in ResultStore(out).load()] == ["pop"]
        assert (out / "leaderboards" / "synthetic.md").is_file()
        assert main(["progress", "--out", str(out)]) == 0
        assert "COMPLETED, stored" in capsys.readouterr().out


@pytest.mark.slow
def test_a_job_of_two_tasks_runs_its_cell_as_a_distributed_launch(tmp_path):
    """tasks_per_node=2 on the CPU: submitit exports each task's rank, sft trains on both, sasrec on rank 0 alone, one
    record each, and the merge job (one task whatever the options) stores them. About a minute on 2 cores."""
    out = tmp_path / "out"
    assert main(["run", "--profile", "smoke", "--methods", "sft,sasrec", "--launcher", "local", "--out", str(out),
                 "--job-option", "tasks_per_node=2"]) == 0
    records = {r["method"]: r for r in ResultStore(out).load()}
    assert len(ResultStore(out).load()) == 2
    assert records["sft"]["launch"]["trained_by_ranks"] == [0, 1]
    assert records["sasrec"]["launch"]["trained_by_ranks"] == [0]
    assert {r["launch"]["processes"] for r in records.values()} == {2}


def test_a_failed_local_job_is_named_and_fails_the_command(tmp_path, capsys, monkeypatch):
    """The job's own error line is printed (not submitit's log paths), the merge still runs, the exit status says it."""
    monkeypatch.setenv("GRBENCH_PROGRESS_SECONDS", "soon")  # inherited by the job, which then fails at once
    out = tmp_path / "out"
    assert main(["run", "--profile", "smoke", "--methods", "pop", "--launcher", "local", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "GRBenchError: GRBENCH_PROGRESS_SECONDS='soon'" in err and "1 of 1 cell jobs failed" in err
    assert "merged 0 cells" in err and not ResultStore(out).load()
    assert main(["progress", "--out", str(out)]) == 0
    assert "FINISHED, no record" in capsys.readouterr().out


def test_job_resources_follow_each_method_and_can_be_set():
    def run(name: str) -> MethodRun:
        return MethodRun(name, methods()[name], {}, {})

    default = JobResources(gpus=4)
    assert [default.gpus_for(run(name), None) for name in ("sft", "pauserec", "tiger", "sasrec", "pop")] == \
        [4, 4, 1, 0, 0]  # data-parallel LLM methods take every GPU; TIGER trains on one; the rest on CPUs
    assert default.gpus_for(run("sft"), available=0) == 0  # a local machine without GPUs
    chosen = JobResources(gpus=2, gpu_methods=("sasrec",))
    assert [chosen.gpus_for(run(name), None) for name in ("sft", "sasrec")] == [0, 1]


@pytest.mark.parametrize("args, message", [
    (["--job-gpus", "2"], "are for cluster jobs: add --launcher slurm or --launcher local"),
    (["--launcher", "slurm"], "--launcher slurm: "),  # no srun here
    (["--launcher", "local", "--gpu-methods", "sft,nope"], "unknown method 'nope'"),
    (["--launcher", "local", "--job-option", "slurm_colour=blue"], "Unknown argument 'colour' for executor 'slurm'"),
])
def test_bad_cluster_options_fail_with_one_clear_line(tmp_path, capsys, args, message):
    assert main(["run", "--profile", "smoke", "--methods", "pop", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_job_table_that_is_not_ours_is_named(tmp_path, capsys):
    (cluster_folder(tmp_path)).mkdir(parents=True)
    (cluster_folder(tmp_path) / JOBS_FILE).write_text(json.dumps([{"id": 1}]))
    assert main(["progress", "--out", str(tmp_path)]) == 2
    assert "not a job table written by GRBench" in capsys.readouterr().err
