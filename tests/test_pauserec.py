"""PauseRec: pause insertion, the pause-only pretraining, the implicit SFT's prompt and loss mask, the pause
initialisations, and stage sharing with ``sft`` (tiny random Qwen3, synthetic data with text)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import methods.pauserec as pauserec
from bench.cli import main
from bench.errors import GRBenchError
from bench.results import ResultStore
from methods.llm import stages
from methods.llm.backbone import PAUSE, embedding_weights
from methods.llm.prompts import item_description
from methods.llm.stages import IGNORE, LLMRecipe
from methods.pauserec import PauseRec, init_pause, insert_pauses, pause_examples
from methods.sft import NextItemSFT
from tests.test_llm import context, expanded, fast_embedding, synthetic  # noqa: F401 (fast_embedding: autouse)


def settings(**options: str) -> dict:
    return PauseRec.settings_for("smoke", options)


def test_pauses_cover_a_tenth_of_the_words_after_random_words_and_nothing_else_changes():
    line = " ".join(f"w{n}" for n in range(40))
    first = insert_pauses(line, 0.1, np.random.default_rng(42))
    words = first.split(" ")
    assert words.count(PAUSE) == 4
    assert words[0] != PAUSE and "  " not in first
    assert " ".join(word for word in words if word != PAUSE) == line
    assert insert_pauses(line, 0.1, np.random.default_rng(42)) == first  # seeded
    assert insert_pauses(line, 0.1, np.random.default_rng(7)) != first
    assert insert_pauses("one", 0.1, np.random.default_rng(0)).split(" ") == ["one", PAUSE]  # at least one


def test_pause_pretraining_has_no_loss_at_pauses():
    data, sids, _, tokenizer, vocab = expanded()
    lines = [item_description(sids, data.catalog, item) for item in range(1, 6)]
    examples = pause_examples(tokenizer, lines, vocab, 0.3, 42, 256)
    pauses = 0
    for example in examples:
        for token, label in zip(example.input_ids, example.labels):
            if token == vocab.pause_id:
                pauses += 1
                assert label == IGNORE
            else:
                assert label == token
    assert pauses >= len(lines)


def pause_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch | None = None):
    """A CPT model, then stage ``pause`` on it; returns the model, its vocabulary, its state before the stage."""
    recipe = LLMRecipe("pauserec", settings(pause_lr="0.05"), context(tmp_path), synthetic())
    recipe.semantic_ids()
    model, tokenizer, vocab = recipe.after_cpt()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    if monkeypatch is not None:  # keep the trained row in the model to look at it
        monkeypatch.setattr(pauserec, "set_pause_rows", lambda *args: None)
    cache = recipe.stage("pause", pauserec.PAUSE_SETTINGS, recipe.cpt)
    pauserec.pretrain_pause(recipe, cache, model, tokenizer, vocab)
    return model, vocab, before, cache


def test_pause_pretraining_trains_the_pause_row_only(tmp_path, monkeypatch):
    model, vocab, before, cache = pause_stage(tmp_path, monkeypatch)
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == {"model.embed_tokens.weight", "lm_head.weight"}  # the tiny model is untied
    for weight, name in zip(embedding_weights(model), ("model.embed_tokens.weight", "lm_head.weight")):
        rows = (weight.detach() != before[name]).any(1).nonzero().flatten().tolist()
        assert rows == [vocab.pause_id]
    report = cache.info()["report"]
    assert cache.done and report["pauses_inserted"] > 0
    trained_input_row = embedding_weights(model)[0].detach()[vocab.pause_id]
    assert report["pause_row_norm"] == pytest.approx(float(trained_input_row.norm()))
    assert report["mean_token_row_norm"] == pytest.approx(
        float(before["model.embed_tokens.weight"][:vocab.original_rows].norm(dim=1).mean()))


def test_pause_pretraining_leaves_the_model_as_it_found_it(tmp_path):
    model, vocab, before, cache = pause_stage(tmp_path)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    stages.load_rows(cache.folder, model)  # the trained row went to the stage folder
    saved = model.get_input_embeddings().weight.detach()[vocab.pause_id]
    assert not torch.equal(saved, before["model.embed_tokens.weight"][vocab.pause_id])


@pytest.mark.parametrize("how", ["default", "text-mean", "sid-mean"])
def test_pause_initialisations_sit_at_the_mean_of_their_rows(how):
    _, _, model, tokenizer, vocab = expanded()
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        weight[vocab.code_ids] += 3.0  # SID rows far from text rows, so the three means differ
    init_pause(model, vocab, tokenizer, how, seed=0)
    sources = {"default": np.setdiff1d(np.arange(len(tokenizer)), [vocab.pause_id]),
               "text-mean": np.arange(vocab.original_rows), "sid-mean": vocab.code_ids}[how]
    expected = weight.detach()[torch.as_tensor(sources)].mean(0)
    assert torch.allclose(weight.detach()[vocab.pause_id], expected, atol=1e-3)  # up to the 1e-9-variance noise
    others = [s for s in ("default", "text-mean", "sid-mean") if s != how]
    for other in others:
        rows = {"default": np.setdiff1d(np.arange(len(tokenizer)), [vocab.pause_id]),
                "text-mean": np.arange(vocab.original_rows), "sid-mean": vocab.code_ids}[other]
        assert not torch.allclose(weight.detach()[vocab.pause_id], weight.detach()[torch.as_tensor(rows)].mean(0),
                                  atol=1e-2)


def fitted(tmp_path: Path, method: type = PauseRec, **options: str):
    data = synthetic()
    model = method(method.settings_for("smoke", options), context(tmp_path))
    model.fit(data, model.context)
    return model, data


def test_implicit_sft_prompt_lists_titles_and_k_pauses_and_trains_on_the_target_sid_only(tmp_path, monkeypatch):
    seen = []
    real_train = stages.train

    def recording_train(model, examples, *args, description: str, **kwargs):
        seen.append((description, examples))
        return real_train(model, examples, *args, description=description, **kwargs)

    monkeypatch.setattr("methods.sft.train", recording_train)
    method, data = fitted(tmp_path, pauses="3")
    (description, examples), = [entry for entry in seen if entry[0] == "implicit SFT steps"]
    assert len(examples) == sum(len(seq) >= 2 for seq in data.train_sequences)
    history, target = stages.next_item_pairs(data)[0]
    example = examples[0]
    text = method.tokenizer.decode(example.input_ids)
    assert text.count(PAUSE) == 3 and f"<think> {PAUSE * 3} </think> <|sid_begin|>" in text
    assert item_description(method.sids, data.catalog, int(history[-1])) in text  # titles in the user turn
    labelled = [token for token, label in zip(example.input_ids, example.labels) if label != IGNORE]
    assert labelled == [method.vocab.begin_id, *method.vocab.item_tokens[target].tolist(), method.vocab.end_id]
    # inference uses the same prompt
    assert method.prompt(history) == example.input_ids[: len(method.prompt(history))]


def test_pauserec_shares_cpt_and_sft_with_sft_and_leaves_the_sft_checkpoint_unchanged(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("GRBENCH_CACHE", str(shared))
    first, data = fitted(shared)  # pauserec trains CPT, pause, SFT, implicit SFT
    names = [stage.name for stage in first.context.costs.stages]
    assert names == ["sids", "cpt", "pause", "sft", "implicit_sft"]  # each stage recorded once
    second, _ = fitted(shared, NextItemSFT)  # sft finds the SFT checkpoint pauserec made
    assert second.report()["stages"]["sft"]["cached"]
    monkeypatch.setenv("GRBENCH_CACHE", str(tmp_path / "alone"))
    alone, _ = fitted(tmp_path / "alone", NextItemSFT)  # SFT with no pause stage before it
    assert not alone.report()["stages"]["sft"]["cached"]
    for name, value in alone.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    monkeypatch.setenv("GRBENCH_CACHE", str(shared))
    third, _ = fitted(shared)  # everything cached; costs carried, CPT once
    stages_seen = [(stage.name, stage.extra.get("cached")) for stage in third.context.costs.stages]
    assert stages_seen == [("sids", True), ("cpt", True), ("sft", True), ("pause", True), ("implicit_sft", True)]
    assert all(stage.carried_wall_s > 0 for stage in third.context.costs.stages)  # SIDs included


def test_ablations_are_rows_of_their_own_and_bad_settings_fail_early(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRBENCH_CACHE", str(tmp_path / "cache"))
    assert main(["run", "--profile", "smoke", "--methods", "pauserec:pauses=1,pauserec:pause_init=text-mean",
                 "--out", str(tmp_path / "out")]) == 0
    records = ResultStore(tmp_path / "out").load()
    assert [r["method"] for r in records] == ["pauserec:pauses=1", "pauserec:pause_init=text-mean"]
    assert "k=1" in records[0]["variant"] and "pause init text-mean" in records[1]["variant"]
    assert "pause" not in [stage["name"] for stage in records[1]["stages"]]  # no pause pretraining
    # the second row reuses CPT and SFT: their carried training time is not taken off its inference time
    assert records[1]["train"]["carried_wall_s"] > 0 and records[1]["inference"]["wall_s"] > 0
    for bad, message in (("pause_init=zeros", "pause_init 'zeros'"), ("pauses=0", "at least 1"),
                         ("pause_insert_rate=0", "pause_insert_rate")):
        with pytest.raises(GRBenchError, match=message):
            PauseRec.settings_for("smoke", dict([bad.split("=")]))


def test_analyze_writes_plots_and_a_summary_and_refuses_methods_without_analyses(tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", "--profile", "smoke", "--methods", "pauserec", "--out", str(out)]) == 0
    folder = out / "synthetic" / "pauserec" / "smoke-seed0"
    for plot in ("embeddings.png", "pause_attention.png"):
        assert (folder / plot).read_bytes().startswith(b"\x89PNG")
    summary = json.loads((folder / "analysis.json").read_text())
    assert summary["split_fingerprint"] and summary["git_commit"]
    analyses = summary["analyses"]
    assert analyses["metadata_recovery"]["queried"] == 5
    assert list(analyses["embedding_pca"]) == ["after CPT (pause at its init)", "after pause pretraining",
                                               "after implicit SFT"]
    assert analyses["pause_attention"]["pauses"] == 5
    assert main(["analyze", "--profile", "smoke", "--methods", "sasrec", "--out", str(out)]) == 2
    assert "method 'sasrec' has no analyses; methods with analyses: " in capsys.readouterr().err
