from __future__ import annotations

import argparse
import re

import pytest

from benchmarks.train_step import main, variant_names


def test_the_benchmark_times_each_variant_and_skips_the_cuda_ones_on_a_cpu(capsys):
    main(["--batch", "1,2", "--length", "8", "--steps", "1", "--warmup", "0", "--variants", "recipe,bf16,liger"])
    out = capsys.readouterr().out
    line = r" batch +{}: +[\d.]+ ms/step +\d+ tokens/s +MFU n/a +launch share +\d+%"
    for variant in ("recipe", "bf16"):
        for size in (1, 2):
            assert re.search(variant + line.format(size), out)
    assert "liger: skipped (needs a CUDA GPU)" in out


def test_an_unknown_variant_is_named():
    assert variant_names("recipe, compile") == ["recipe", "compile"]
    with pytest.raises(argparse.ArgumentTypeError, match="expected some of recipe, bf16, liger, compile, got 'fast'"):
        variant_names("fast")
