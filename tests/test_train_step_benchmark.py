from __future__ import annotations

import argparse
import re

import pytest

from benchmarks.train_step import main, variant_names


def test_the_benchmark_times_each_variant_and_skips_the_cuda_ones_on_a_cpu(capsys):
    main(["--batch", "1,2", "--length", "8", "--steps", "1", "--warmup", "0", "--variants", "recipe,bf16,liger"])
    out = capsys.readouterr().out
    line = (r" batch +{}: +[\d.]+ ms/step +\d+ tokens/s +MFU n/a \(n/a with attention\) +launch share +\d+%  "
            r"operators \d+ \(\d+ computing\)$")
    for variant in ("recipe", "bf16"):
        for size in (1, 2):
            assert re.search(variant + line.format(size), out, re.MULTILINE)
    assert "liger: skipped (needs a CUDA GPU)" in out


def test_an_unknown_variant_is_named():
    assert variant_names("recipe, compile") == ["recipe", "compile"]
    with pytest.raises(argparse.ArgumentTypeError, match="expected some of recipe, bf16, liger, compile, got 'fast'"):
        variant_names("fast")


def test_the_narrow_model_has_smollm2s_layers_and_fewer_operators_train_when_only_rows_do(capsys):
    """--model narrow counts what a SmolLM2 step issues; CPT and pause pretraining (--train embeddings) skip the
    frozen layers' weight gradients, so they compute fewer operators than SFT (--train all)."""
    from benchmarks.train_step import MODELS

    config = MODELS["narrow"](0).config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    computing = {}
    for train in ("all", "embeddings"):
        main(["--model", "narrow", "--batch", "1", "--length", "4", "--steps", "1", "--warmup", "0",
              "--variants", "recipe", "--train", train])
        computing[train] = int(re.search(r"\((\d+) computing\)", capsys.readouterr().out).group(1))
    assert computing["all"] > computing["embeddings"] > 30 * 20  # dozens of operators a layer
