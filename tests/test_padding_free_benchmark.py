from __future__ import annotations

import re

import pytest

import bench.sid as sid
from benchmarks.padding_free import main
from tests.test_sid import fake_embed


@pytest.mark.parametrize("method", ["bert4rec", "hstu:loss=ce", "tiger"])
def test_the_benchmark_times_both_ways_and_finds_the_same_loss(method, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sid, "embed_texts", lambda texts, *args, **kwargs: fake_embed(texts))  # TIGER's SIDs
    monkeypatch.chdir(tmp_path)
    main(["--method", method, "--dataset", "synthetic", "--profile", "smoke", "--steps", "2", "--rank-users", "50"])
    assert list(tmp_path.iterdir()) == []  # RecBole's trainer left no log_tensorboard/ in the working directory
    out = capsys.readouterr().out
    assert re.search(r"full width [\d.]+, padding-free [\d.]+ \(equal\)", out)
    assert re.search(r"full width +[\d.]+ ms/step +[\d.]+x the padding-free step", out)
    assert ("ranking 50 validation histories" in out) == method.startswith("hstu")
    assert "device cpu" in out


def test_the_benchmark_also_times_both_ways_in_bf16_when_asked(capsys, monkeypatch):
    monkeypatch.setattr(sid, "embed_texts", lambda texts, *args, **kwargs: fake_embed(texts))
    main(["--method", "tiger", "--dataset", "synthetic", "--profile", "smoke", "--steps", "2", "--bf16"])
    out = capsys.readouterr().out
    assert re.search(r"native bf16: (yes|no)", out)
    for name in ("full width", "padding-free"):
        assert re.search(rf"{name}, bf16 autocast +[\d.]+ ms/step", out)


def test_the_benchmark_refuses_a_method_without_training_batches(capsys):
    with pytest.raises(SystemExit):
        main(["--method", "pop", "--dataset", "synthetic", "--profile", "smoke"])
    assert "pop: not a RecBole, sequential or TIGER model" in capsys.readouterr().err
