from __future__ import annotations

import re

import pytest

import bench.sid as sid
from benchmarks.batch_widths import main
from tests.test_sid import fake_embed


@pytest.mark.parametrize("stage", ["sft", "implicit_sft"])
def test_the_benchmark_lists_each_steps_width_without_training(stage, capsys, monkeypatch):
    monkeypatch.setattr(sid, "embed_texts", lambda texts, *args, **kwargs: fake_embed(texts))
    assert main(["--dataset", "synthetic", "--profile", "smoke", "--seed", "0", "--stage", stage]) == 0
    out = capsys.readouterr().out
    steps, low, high = map(int, re.search(r": (\d+) optimizer steps, widths (\d+)-(\d+)", out).groups())
    assert steps == 3 and 0 < low <= high  # the smoke recipe stops its stages after 3 steps
    assert re.search(r"steps 64 past a multiple of 128 wide: (none|\d+ \(\d+\))", out)


def test_a_negative_epoch_count_is_refused():
    with pytest.raises(SystemExit):
        main(["--epochs", "-1"])
