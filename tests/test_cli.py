from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from bench.cli import main
from bench.evaluate import per_user_metrics
from bench.results import ResultStore, read_rankings

SMOKE = ["run", "--profile", "smoke", "--methods", "pop,random"]


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_smoke_run_writes_results_rankings_and_leaderboards(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(*SMOKE, "--seeds", "0,1", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "| pop" in printed and "NDCG@10" in printed
    records = ResultStore(out).load()
    assert sorted((r["method"], r["seed"]) for r in records) == [("pop", 0), ("pop", 1), ("random", 0), ("random", 1)]
    for record in records:
        assert record["dataset"] == "synthetic" and len(record["split_fingerprint"]) == 16
        assert {"python", "numpy"} <= set(record["versions"]) and record["git_commit"]
        assert record["hardware"]["label"] and record["train"]["wall_s"] >= 0
        assert record["inference"]["batch_size"] == 16 and record["inference"]["ms_per_user"] > 0
        assert record["reduced_schedule"] is False  # count-based floors have no schedule to cut short
    board = out / "leaderboards"
    assert {str(p.relative_to(board)) for p in board.rglob("*.*")} == {
        "synthetic.md", "costs.md", "comparisons.md", "index.md", "README.md", "runs.md", "plots/synthetic.png"}
    assert "± " in (board / "synthetic.md").read_text()  # two seeds: mean ± sd


def test_stored_metrics_can_be_recomputed_from_the_rankings(tmp_path):
    out = tmp_path / "out"
    run_cli(*SMOKE, "--out", out)
    for record in ResultStore(out).load():
        rows = read_rankings(out / record["rankings"])
        assert len(rows) == record["eval_users"]
        ids = {item: n for n, item in enumerate({i for r in rows for i in [r["target"], *r["topk"]]})}
        targets = np.array([ids[r["target"]] for r in rows])
        topk = np.array([[ids[i] for i in r["topk"]] for r in rows])
        for metric, vector in per_user_metrics(targets, topk).items():
            assert vector.mean() == pytest.approx(record["metrics"][metric]["mean"])


def test_rerun_skips_finished_and_force_never_duplicates(tmp_path, capsys):
    out = tmp_path / "out"
    run_cli(*SMOKE, "--out", out)
    before = (out / "results.jsonl").read_text()
    run_cli(*SMOKE, "--out", out)
    assert f"stored in {out} (--force reruns it)" in capsys.readouterr().err
    assert (out / "results.jsonl").read_text() == before
    run_cli(*SMOKE, "--out", out, "--force")
    records = ResultStore(out).load()
    assert len(records) == 2


def test_leaderboard_is_regenerated_from_results_alone(tmp_path):
    out = tmp_path / "out"
    run_cli(*SMOKE, "--out", out)
    board = out / "leaderboards"
    original = {p.relative_to(board): p.read_bytes() for p in board.rglob("*.*")}
    shutil.rmtree(board)
    assert run_cli("leaderboard", "--out", out) == 0
    assert {p.relative_to(board): p.read_bytes() for p in board.rglob("*.*")} == original  # plots byte for byte


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--methods", "nope"], "unknown method 'nope'; known methods: "),
        (["run", "--methods", "pop:depth=3"], "method 'pop' has no option 'depth'"),
        (["run", "--methods", "sasrec:epochs=2.5"], "method 'sasrec', option epochs: option value '2.5': expected int"),
        (["run", "--datasets", "imdb"], "unknown dataset 'imdb'"),
        (["run", "--profile", "huge"], "unknown profile 'huge'"),
        (["leaderboard", "--out", "no-such-folder"], "no results at no-such-folder"),
    ],
)
def test_bad_names_fail_with_one_clear_line(args, message, capsys):
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_data_keeps_earlier_results(tmp_path, capsys):
    out = tmp_path / "out"
    run_cli(*SMOKE, "--out", out)
    before = (out / "results.jsonl").read_bytes()
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3 4\nnot-a-pair\n")
    assert run_cli(*SMOKE, "--out", out, "--datasets", f"synthetic,seq:{bad}") == 2
    assert "bad.txt, line 2: only one id" in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == before


def test_listing_commands_print_one_line_each():
    for command, expected in (("methods", {"pop", "random"}), ("datasets", {"ml-100k", "seq:<path>", "synthetic"})):
        result = subprocess.run([sys.executable, "-m", "bench", command], capture_output=True, text=True, check=True)
        first_words = {line.split()[0] for line in result.stdout.splitlines()}
        assert expected <= {word.split(":")[0] if word.startswith("synthetic") else word for word in first_words}


@pytest.mark.real
def test_ml100k_pop_beats_random(tmp_path):
    out = tmp_path / "out"
    assert run_cli("run", "--methods", "pop,random", "--datasets", "ml-100k", "--out", out) == 0
    metrics = {r["method"]: r["metrics"]["ndcg@10"]["mean"] for r in ResultStore(out).load()}
    assert metrics["pop"] > 2 * metrics["random"]


def test_specs_with_several_options_stay_whole():
    from bench.cli import build_parser

    args = build_parser().parse_args(["run", "--methods", "pop,sasrec:epochs=5,patience=3,gru4rec",
                                      "--datasets", "synthetic:users=9,items=7,ml-100k,seq:/d/a=b.txt"])
    assert args.methods == ["pop", "sasrec:epochs=5,patience=3", "gru4rec"]
    assert args.datasets == ["synthetic:users=9,items=7", "ml-100k", "seq:/d/a=b.txt"]


def test_merge_adds_another_runs_records_and_rankings_and_replaces_same_keys(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["run", "--profile", "smoke", "--methods", "pop" if name == "a" else "pop,random",
                     "--out", str(tmp_path / name)]) == 0
    assert main(["merge", str(tmp_path / "b"), "--out", str(tmp_path / "a")]) == 0
    records = ResultStore(tmp_path / "a").load()
    assert sorted(r["method"] for r in records) == ["pop", "random"]  # pop replaced, not duplicated
    for record in records:
        assert (tmp_path / "a" / record["rankings"]).is_file()
    assert (tmp_path / "a" / "leaderboards" / "synthetic.md").is_file()
    assert "list-stats" not in capsys.readouterr().err  # records of this code have their list stats
    old = ResultStore(tmp_path / "b").load()[0]
    old.pop("list_stats")
    ResultStore(tmp_path / "b").add(old)  # as a record stored before runs computed them
    assert main(["merge", str(tmp_path / "b"), "--out", str(tmp_path / "a")]) == 0
    assert "1 records have no Coverage@10/History@10" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "missing"), "--out", str(tmp_path / "a")]) == 2
    assert "no results at" in capsys.readouterr().err
    (tmp_path / "b" / records[1]["rankings"]).unlink()
    assert main(["merge", str(tmp_path / "b"), "--out", str(tmp_path / "a")]) == 2
    assert "which does not exist; nothing of this record was merged" in capsys.readouterr().err


def test_progress_prints_plain_lines_into_a_log_file_while_a_task_runs():
    """Rich draws no bar into a file until the task ends; a log (nohup, Slurm, the device script) gets dated lines."""
    import io

    from rich.console import Console

    from bench.runner import LoggedProgress, make_progress

    log = io.StringIO()
    console = Console(file=log, force_terminal=False, width=200)
    with make_progress(console) as progress:
        assert isinstance(progress, LoggedProgress)
        progress.line_seconds = 0.0
        task = progress.add_task("  tiger: tiger epochs", total=4)
        progress.advance(task)
        lines_while_running = log.getvalue()
        progress.advance(task, 3)
    assert "tiger: tiger epochs 1/4 (25%)" in lines_while_running and "elapsed" in lines_while_running
    assert "4/4 (100%)" not in lines_while_running  # finished tasks get rich's own last line, not another

    log = io.StringIO()
    with make_progress(Console(file=log, force_terminal=False, width=200)) as progress:
        progress.line_seconds = 0.0
        for epoch in progress.track(range(30), description="hstu epochs"):
            if epoch == 2:
                break  # early stopping: the loop ends before its total
        for _ in progress.track(range(3), description="ranking"):
            pass
    dated = [line.split(" ", 1)[1] for line in log.getvalue().splitlines() if line[:2].isdigit()]
    first_ranking = next(i for i, line in enumerate(dated) if line.startswith("ranking"))
    assert any(line.startswith("hstu epochs") for line in dated[:first_ranking])
    assert not any(line.startswith("hstu epochs") for line in dated[first_ranking:])  # stopped, not running

    terminal_log = io.StringIO()
    with make_progress(Console(file=terminal_log, force_terminal=True, width=200)) as progress:
        progress.line_seconds = 0.0
        progress.advance(progress.add_task("on a terminal", total=2))
        assert "elapsed" not in terminal_log.getvalue()  # a terminal shows the bar itself


def test_a_bad_progress_interval_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GRBENCH_PROGRESS_SECONDS", "soon")
    assert run_cli(*SMOKE, "--out", tmp_path / "out") != 0
    assert "GRBENCH_PROGRESS_SECONDS='soon'" in capsys.readouterr().err
