"""benchmarks/rearec_steps.py: a finished ReaRec run ranked with each reasoning step alone."""

from __future__ import annotations

import pytest

from bench.cli import main as bench_main
from bench.errors import GRBenchError
from bench.results import ResultStore
from benchmarks.rearec_steps import main as steps_main


def table_rows(printed: str) -> dict[str, list[float]]:
    rows = {}
    for line in printed.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 6 and cells[0] and cells[0][0].isalpha() and cells[1][0].isdigit():
            rows[cells[0]] = [float(cell) for cell in cells[1:]]
    return rows


@pytest.mark.parametrize(("scheme", "own"), [("erl", "mean of all steps (ERL)"), ("prl", "last step (PRL)")])
def test_each_step_is_ranked_and_the_runs_own_row_reproduces_its_record(tmp_path, capsys, scheme, own):
    spec = f"rearec:scheme={scheme}"
    assert bench_main(["run", "--profile", "smoke", "--methods", spec, "--datasets", "synthetic",
                       "--out", str(tmp_path)]) == 0
    (record,) = ResultStore(tmp_path).load()
    capsys.readouterr()
    assert steps_main(["--method", spec, "--dataset", "synthetic", "--profile", "smoke", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = table_rows(printed)
    leave_one_out = [f"mean without step {k}" for k in range(3)] if scheme == "erl" else []
    assert list(rows) == ["step 0 (SASRec state)", "step 1", "step 2", *leave_one_out, f"{own}: the run's ranking"]
    stored = [record["metrics"][name]["mean"] for name in ("hit@5", "hit@10", "ndcg@5", "ndcg@10")]
    assert rows[f"{own}: the run's ranking"][:4] == pytest.approx(stored, abs=5e-5)
    assert rows["step 0 (SASRec state)"][4] == 10.0  # step 0 shares its whole top 10 with itself
    assert f"the '{own}' row equals the stored record {record['id']}" in printed
    if scheme == "prl":  # PRL ranks with its last step: the same lists
        assert rows["step 2"][:4] == rows[f"{own}: the run's ranking"][:4]


def test_with_one_thought_the_mean_without_step_0_is_step_1_alone(tmp_path, capsys):
    spec = "rearec:reasoning_steps=1"
    assert bench_main(["run", "--profile", "smoke", "--methods", spec, "--datasets", "synthetic",
                       "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert steps_main(["--method", spec, "--dataset", "synthetic", "--profile", "smoke", "--out", str(tmp_path)]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert list(rows)[2:4] == ["mean without step 0", "mean without step 1"]
    assert rows["mean without step 0"] == rows["step 1"]
    assert rows["mean without step 1"] == rows["step 0 (SASRec state)"]


def test_another_method_is_refused():
    with pytest.raises(GRBenchError, match="give a rearec spec"):
        steps_main(["--method", "sasrec", "--dataset", "synthetic", "--profile", "smoke"])
