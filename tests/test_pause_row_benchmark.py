from __future__ import annotations

import re

import pytest

import bench.sid as sid
from benchmarks.pause_row import main
from tests.test_sid import fake_embed


def test_the_benchmark_prints_the_pause_row_norm_as_pause_pretraining_runs(tmp_path, capsys, monkeypatch):
    """Trains the CPT stage when --stages lacks it, then the first pause steps on the tiny model."""
    monkeypatch.setattr(sid, "embed_texts", lambda texts, *args, **kwargs: fake_embed(texts))
    assert main(["--dataset", "synthetic", "--profile", "smoke", "--seed", "0", "--steps", "3", "--batch", "2",
                 "--every", "2", "--stages", str(tmp_path / "none"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "trained now" in out
    norms = [float(n) for n in re.findall(r"step +\d+: pause row norm ([\d.]+), mean token row norm [\d.]+", out)]
    steps = [int(s) for s in re.findall(r"step +(\d+): pause row norm", out)]
    assert steps == [0, 2, 3] and norms[-1] != norms[0]  # the row trains


def test_a_bad_count_is_refused():
    with pytest.raises(SystemExit):
        main(["--steps", "0"])
