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


def test_the_widths_are_those_training_feeds_in_its_order(tmp_path):
    """loader_widths walks the batches methods.llm.stages.train trains on, in the same order over epochs (length
    grouping and its per-epoch reseeding included): the script's step numbers are training's."""
    import torch

    from benchmarks.batch_widths import loader_widths
    from methods.llm.backbone import load_backbone
    from methods.llm.stages import IGNORE, Example, PaddingCollator, Schedule, train
    from tests.test_llm import context, smoke_settings

    generator = torch.Generator().manual_seed(0)
    examples = []
    # more examples than a megabatch of length grouping (50 batches, sorted within), so that the order depends
    # on the seed and the epoch, not on the lengths alone
    for n in torch.randint(3, 40, (240,), generator=generator).tolist():
        ids = torch.randint(5, 200, (n,), generator=generator).tolist()
        examples.append(Example(ids, [IGNORE] * (n - 2) + ids[-2:]))
    schedule = Schedule(lr=1e-3, epochs=2, batch_size=2)
    settings = smoke_settings(micro_batch_size="2")
    collator = PaddingCollator(0, left=True)
    seen: list[int] = []

    def recording(batch):
        padded = collator(batch)
        seen.append(int(padded["input_ids"].shape[1]))
        return padded

    model, _ = load_backbone("tiny", seed=0)
    expected = loader_widths(model, examples, collator, schedule, settings, context(tmp_path))
    train(model, examples, recording, schedule, settings=settings, context=context(tmp_path),
          folder=tmp_path / "stage", description="SFT steps")
    assert len(expected) == 240 and expected[:120] != expected[120:]  # 2 epochs of 120 batches, each its own order
    assert seen == expected
