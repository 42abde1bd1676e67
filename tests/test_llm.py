"""The shared LLM machinery (methods/llm) and the ``sft`` method, on the tiny random Qwen3 and synthetic data."""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.sid as sid
import methods.llm.stages as stages
from bench.cli import main
from bench.costs import hardware
from bench.data import load_dataset
from bench.data.base import Dataset, make_catalog, make_interactions
from bench.errors import GRBenchError
from bench.evaluate import per_user_metrics
from bench.leaderboard import _stage_text, hardware_label
from bench.registry import RunContext
from bench.sid import SidConfig, build_semantic_ids
from bench.split import TrainData, leave_last_out
from methods.llm.backbone import PAUSE, embedding_weights, expand_vocabulary, load_backbone
from methods.llm.prompts import chat_prompt, cpt_corpus, item_description, sid_history
from methods.llm.stages import (
    IGNORE,
    Example,
    LLMRecipe,
    PaddingCollator,
    Schedule,
    next_item_pairs,
    only_rows_trainable,
    sft_example,
    train,
    user_next_item_pairs,
)
from methods.sft import NextItemSFT, sft_stage
from tests.test_sid import fake_embed
from tests.test_tiger import cycle_data

SYNTHETIC = "synthetic:users=30,items=20"
TINY_SIDS = SidConfig(quantizer="rkmeans", codebook_size=4)
# Written out here, not imported: the test must fail if the prompt in the code drifts from DESIGN.md.
SYSTEM = ("You are a professional recommendation expert who needs to recommend the next possible purchase for users "
          "based on their purchase history. Please predict the most likely next product that the user will purchase "
          "based on the user's historical purchase information.")


@pytest.fixture(autouse=True)
def fast_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIDs from a seeded stand-in for the sentence encoder (the real one is tested in test_sid)."""
    monkeypatch.setattr(sid, "embed_texts", lambda texts, *args, **kwargs: fake_embed(texts))


def synthetic() -> TrainData:
    return leave_last_out(load_dataset(SYNTHETIC)).train_view()


def context(tmp_path: Path, seed: int = 0) -> RunContext:
    return RunContext(seed=seed, profile="smoke", device="cpu", cache_dir=tmp_path / "run")


def expanded(backbone: str = "tiny", data: TrainData | None = None):
    data = data or synthetic()
    sids = build_semantic_ids(data, TINY_SIDS, use_cache=False)
    model, tokenizer = load_backbone(backbone)
    return data, sids, model, tokenizer, expand_vocabulary(model, tokenizer, sids)


def smoke_settings(**options: str) -> dict:
    return NextItemSFT.settings_for("smoke", options)


# --- prompts and corpora -----------------------------------------------------------------------------------------


def test_prompt_and_corpus_text_match_the_study():
    data, sids, _, tokenizer, vocab = expanded()
    a, b = sids.sid_string(1), sids.sid_string(2)
    assert a.startswith("<|sid_begin|><s_a_") and a.endswith("><|sid_end|>") and a.count("><") == 5
    assert sid_history(sids, [1, 2]) == f"The user has purchased the following items: {a}; {b};"
    assert chat_prompt(tokenizer, sid_history(sids, [1, 2])) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"The user has purchased the following items: {a}; {b};<|im_end|>\n"
        "<|im_start|>assistant\n<think></think> <|sid_begin|>"
    )
    example = sft_example(tokenizer, sids, vocab, [1, 2], target=3, max_history=5)
    assert tokenizer.decode(example.input_ids) == chat_prompt(tokenizer, sid_history(sids, [1, 2])) + \
        sids.sid_string(3)[len("<|sid_begin|>"):]
    title, categories = data.catalog["title"].iloc[1], data.catalog["categories"].iloc[1]
    assert item_description(sids, data.catalog, 1) == \
        f'{a}, its title is "{title}", its categories are "{" > ".join(categories)}"'
    lines = cpt_corpus(data, sids, items_per_line=2)
    first = data.train_sequences[0][:2]
    assert lines[0] == "The user has purchased the following items: " + \
        "; ".join(item_description(sids, data.catalog, int(i)) for i in first) + ";"
    assert item_description(sids, data.catalog, 1) in lines  # SID -> text
    assert f'The item whose title is "{title}" and whose categories are "{" > ".join(categories)}" is {a}' in lines


def test_history_is_cut_to_the_most_recent_items():
    _, sids, _, tokenizer, vocab = expanded()
    long = sft_example(tokenizer, sids, vocab, [5, 6, 1, 2], target=3, max_history=2)
    short = sft_example(tokenizer, sids, vocab, [1, 2], target=3, max_history=5)
    assert long == short


# --- vocabulary --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["tiny", "tiny-tied"])
def test_vocabulary_expansion_adds_special_tokens_at_the_mean_embedding(backbone):
    data, sids, model, tokenizer, vocab = expanded(backbone)
    assert len(tokenizer) == vocab.original_rows + sids.n_tokens + 3
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == model.config.vocab_size
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert tied == (backbone == "tiny-tied") and len(embedding_weights(model)) == (1 if tied else 2)
    assert tokenizer.convert_tokens_to_ids(PAUSE) == vocab.pause_id
    text = sids.sid_string(4) + PAUSE
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == \
        [vocab.begin_id, *vocab.item_tokens[4], vocab.end_id, vocab.pause_id]
    for weight in embedding_weights(model):
        mean = weight[: vocab.original_rows].mean(0)
        torch.testing.assert_close(weight[vocab.new_ids], mean.expand(len(vocab.new_ids), -1), atol=1e-5, rtol=0)
        assert not torch.equal(weight[vocab.code_ids[0]], weight[vocab.code_ids[1]])  # the noise separates them
    _, _, again, _, _ = expanded(backbone)  # the same seed gives the same rows
    torch.testing.assert_close(again.get_input_embeddings().weight, model.get_input_embeddings().weight, rtol=0,
                               atol=0)
    with pytest.raises(GRBenchError, match="already has"):
        expand_vocabulary(model, tokenizer, sids)


# --- CPT: only the SID rows train --------------------------------------------------------------------------------


def one_cpt_step(tmp_path: Path, backbone: str, weight_decay: float | None = None):
    """Two optimizer steps of the CPT stage (``weight_decay=None``), or of plain ``train`` with that decay."""
    data, sids, model, tokenizer, vocab = expanded(backbone)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    settings = smoke_settings(cpt_lr="0.05", cpt_max_steps="2", cpt_max_length="64")
    recipe = LLMRecipe("sft", settings, context(tmp_path), data)
    recipe.sids = sids
    if weight_decay is None:
        recipe.train_cpt(model, tokenizer, vocab, tmp_path)
    else:
        examples = stages.cpt_examples(tokenizer, recipe.cpt_lines(), 64)
        with only_rows_trainable(model, vocab.grounding_ids):
            train(model, examples, PaddingCollator(tokenizer.pad_token_id),
                  Schedule(lr=0.05, epochs=1, batch_size=4, max_steps=2, weight_decay=weight_decay),
                  settings=settings, context=recipe.context, folder=tmp_path, description="cpt")
    return before, model, vocab


@pytest.mark.parametrize("backbone", ["tiny", "tiny-tied"])
def test_cpt_changes_sid_rows_and_nothing_else(tmp_path, backbone):
    before, model, vocab = one_cpt_step(tmp_path, backbone)
    embeddings = {id(w) for w in embedding_weights(model)}
    others = np.setdiff1d(np.arange(len(before["model.embed_tokens.weight"])), vocab.grounding_ids)
    assert vocab.pause_id in others  # <pause> does not train in CPT
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad, f"{name} left frozen after CPT"
        if id(parameter) not in embeddings:
            assert torch.equal(parameter, before[name]), f"{name} changed"
            continue
        assert torch.equal(parameter[others], before[name][others]), f"{name}: a non-SID row changed"
        changed = (parameter[vocab.grounding_ids] != before[name][vocab.grounding_ids]).any(1)
        assert changed.sum() > len(vocab.grounding_ids) // 4, f"{name}: SID rows did not train"


def test_weight_decay_would_move_frozen_rows(tmp_path):
    """Why CPT runs with weight decay 0: AdamW's decoupled decay shrinks every row of a trained matrix."""
    before, model, vocab = one_cpt_step(tmp_path, "tiny", weight_decay=0.5)
    assert not torch.equal(model.model.embed_tokens.weight[: vocab.original_rows],
                           before["model.embed_tokens.weight"][: vocab.original_rows])


# --- SFT examples ------------------------------------------------------------------------------------------------


def test_sft_loss_is_on_the_target_sid_only():
    _, sids, model, tokenizer, vocab = expanded()
    sid_tokens = [vocab.begin_id, *vocab.item_tokens[7], vocab.end_id]
    example = sft_example(tokenizer, sids, vocab, [1, 2, 3], target=7, max_history=5)
    labelled = [n for n, label in enumerate(example.labels) if label != IGNORE]
    assert labelled == list(range(len(example.input_ids) - 6, len(example.input_ids)))
    assert [example.labels[n] for n in labelled] == sid_tokens == example.input_ids[-6:]
    codes_only = sft_example(tokenizer, sids, vocab, [1, 2, 3], target=7, max_history=5, loss_tokens="codes")
    assert [label for label in codes_only.labels if label != IGNORE] == list(vocab.item_tokens[7])
    assert codes_only.labels[-1] == IGNORE and codes_only.input_ids == example.input_ids

    # left padding + logits of the last positions only: the same loss as the plain full forward pass
    short = sft_example(tokenizer, sids, vocab, [4], target=5, max_history=5, loss_tokens="codes")
    batch = PaddingCollator(tokenizer.pad_token_id, left=True)([example, short])
    assert batch["logits_to_keep"] == 7 and batch["labels"].shape == (2, 7)
    assert (batch["labels"] != IGNORE).sum() == 6 + 4
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss
        reference = []
        for item in (example, short):
            logits = model(input_ids=torch.tensor([item.input_ids])).logits[0, :-1]
            labels = torch.tensor(item.labels[1:])
            reference.append(torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum"))
    torch.testing.assert_close(loss, sum(reference) / 10, atol=1e-5, rtol=1e-5)


# --- leakage -----------------------------------------------------------------------------------------------------


def held_out_data() -> tuple[TrainData, list[int], list[int]]:
    """Six users over shared items; each user's validation and test items are bought by nobody else."""
    users, items, times, rows = [], [], [], []
    shared = [f"s{n}" for n in range(8)]
    for u in range(6):
        sequence = [shared[(u + n) % 8] for n in range(4)] + [f"valid{u}", f"test{u}"]
        users += [f"u{u}"] * len(sequence)
        items += sequence
        times += list(range(len(sequence)))
    for item in sorted(set(items)):
        rows.append({"item": item, "title": f"Title of {item}", "categories": ["Top", item[:4]]})
    split = leave_last_out(Dataset("held-out", make_interactions(users, items, times), make_catalog(rows),
                                   source="test"))
    data = split.train_view()
    dense = {name: n for n, name in enumerate(data.item_ids)}
    return data, [dense[f"valid{u}"] for u in range(6)], [dense[f"test{u}"] for u in range(6)]


def test_corpora_hold_no_test_target_and_validation_items_only_in_the_study_corpus():
    data, valid, test = held_out_data()
    assert sorted(data.valid_targets) == sorted(valid)
    sids = build_semantic_ids(data, TINY_SIDS, use_cache=False)
    model, tokenizer = load_backbone("tiny")
    vocab = expand_vocabulary(model, tokenizer, sids)

    def mentioned(lines: list[str], items: list[int]) -> set[int]:
        return {item for item in items if any(sids.sid_string(item) in line for line in lines)}

    user_lines = cpt_corpus(data, sids, item_lines=False)
    assert mentioned(user_lines, valid + test) == set()
    study = cpt_corpus(data, sids, corpus="paper", item_lines=False)
    assert mentioned(study, valid) == set(valid) and mentioned(study, test) == set()
    # item lines describe every catalog item (text only, no user), never a purchase
    with_items = cpt_corpus(data, sids)
    assert mentioned([line for line in with_items if line.startswith("The user")], valid + test) == set()
    sft_texts = [tokenizer.decode(e.input_ids) for e in
                 (sft_example(tokenizer, sids, vocab, h, t, 50) for h, t in next_item_pairs(data))]
    assert len(sft_texts) == 6 and mentioned(sft_texts, valid + test) == set()
    assert all(t == int(seq[-1]) for (_, t), seq in zip(next_item_pairs(data), data.train_sequences))


def test_next_item_pairs_take_the_last_training_items_as_targets():
    """One pair a user by default (the study's: the last training item); ``targets_per_user`` = n takes the last
    n, each with the items before it as history, and never a validation or test item."""
    data = leave_last_out(load_dataset("synthetic:users=40,items=30,seed=3")).train_view()
    assert [(h.tolist(), t) for _, h, t in user_next_item_pairs(data)] == [
        (seq[:-1].tolist(), int(seq[-1])) for seq in data.train_sequences if len(seq) >= 2]
    pairs = user_next_item_pairs(data, 3)
    for user, seq in enumerate(data.train_sequences):
        mine = [(h.tolist(), t) for u, h, t in pairs if u == user]
        assert mine == [(seq[:j].tolist(), int(seq[j])) for j in range(len(seq) - 1, max(0, len(seq) - 4), -1)]
    assert len(pairs) > len(user_next_item_pairs(data)) and all(len(h) >= 1 for _, h, _ in pairs)


# --- stages: caching, reuse, invalidation ------------------------------------------------------------------------


def fit(tmp_path: Path, data: TrainData, **options: str) -> NextItemSFT:
    method = NextItemSFT(smoke_settings(**options), context(tmp_path))
    method.fit(data, method.context)
    return method


def test_a_reused_stage_says_it_trained_on_a_shared_gpu(tmp_path, monkeypatch):
    class SharedThreeWays:  # what GpuSharing measures on a GPU that two other runs use too
        max_processes = 3

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(stages, "GpuSharing", SharedThreeWays)
    data = synthetic()
    first = fit(tmp_path, data)
    assert "trained_shared_by" not in first.context.costs.stages[1].extra  # trained in this run, not reused
    monkeypatch.setattr(SharedThreeWays, "max_processes", None)  # the reusing run: a CPU, no GPU to share
    second = fit(tmp_path, data)
    cpt_cost = second.context.costs.stages[1]
    assert cpt_cost.extra["cached"] and cpt_cost.extra["trained_shared_by"] == 3
    stage = {"name": "cpt", "wall_s": 1.0, "gpu_hours": 0.0, "extra": cpt_cost.extra}
    assert _stage_text(stage).endswith(", shared by 3 runs)")
    record = {"hardware": {"label": "1x GPU", "gpus": ["GPU"], "gpu_processes_max": 1}, "stages": [stage]}
    assert hardware_label(record) == "1x GPU, shared by 3 runs"  # its train time holds the shared stage's
    assert hardware_label({**record, "stages": []}) == "1x GPU"


def test_stages_are_cached_reused_and_redone_when_their_inputs_change(tmp_path, monkeypatch):
    data = synthetic()
    trained: list[str] = []
    real_train = stages.train

    def counting_train(*args, description: str, **kwargs):
        trained.append(description)
        return real_train(*args, description=description, **kwargs)

    monkeypatch.setattr(stages, "train", counting_train)
    monkeypatch.setattr("methods.sft.train", counting_train)
    first = fit(tmp_path, data)
    assert trained == ["CPT steps", "SFT steps"]
    topk = first.recommend(data.train_sequences[:3], 10, np.arange(3))
    assert topk.dtype == np.int64 and topk.shape == (3, 10)
    assert all(len(set(row)) == 10 and 1 <= row.min() and row.max() <= data.n_items for row in topk)

    trained.clear()
    second = fit(tmp_path, data)  # everything cached: no training at all, same model
    assert trained == []
    np.testing.assert_array_equal(second.recommend(data.train_sequences[:3], 10, np.arange(3)), topk)
    second.settings["decode_graphs"] = "on"  # the static KV cache (run eagerly on a CPU) recommends the same
    np.testing.assert_array_equal(second.recommend(data.train_sequences[:3], 10, np.arange(3)), topk)
    cpt_cost = second.context.costs.stages[1]
    assert cpt_cost.name == "cpt" and cpt_cost.carried_wall_s > 0 and cpt_cost.extra["cached"]
    # where a reused stage trained is kept: a stage folder can be carried to another machine
    assert cpt_cost.extra["trained_on"] == hardware()["label"]
    assert "(cached, trained on CPU" in _stage_text({"name": "cpt", "wall_s": 1.0, "gpu_hours": 0.0,
                                                     "extra": cpt_cost.extra})
    assert second.report()["stages"]["sft"]["cached"]

    fit(tmp_path, data, sft_lr="0.002")  # a new SFT setting: SFT again, from the cached CPT rows
    assert trained == ["SFT steps"]
    trained.clear()
    fit(tmp_path, data, cpt_lr="0.002")  # a new CPT setting: both stages again
    assert trained == ["CPT steps", "SFT steps"]

    trained.clear()
    recipe = LLMRecipe("sft", smoke_settings(), context(tmp_path), data)
    recipe.semantic_ids()
    (recipe.cpt.folder / stages.DONE).unlink()  # an interrupted CPT: redone, even for a new SFT
    fit(tmp_path, data, sft_lr="0.003")
    assert trained == ["CPT steps", "SFT steps"]
    assert json.loads((recipe.cpt.folder / stages.STAGE_FILE).read_text())["key"]["settings"]["cpt_lr"] == 1e-3


def test_a_stage_another_process_is_training_is_waited_for_and_reused_not_trained_twice(tmp_path, monkeypatch):
    """``sft`` beside ``pauserec`` on one cache (the GPU script runs them side by side): the second process to
    reach the SFT stage waits for the first one's lock, then loads what it trained."""
    import shutil
    import threading

    from filelock import FileLock

    data = synthetic()
    first_cache, second_cache = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("GRBENCH_CACHE", str(first_cache))
    fit(tmp_path / "a", data)  # the stages the other process will have trained
    recipe = LLMRecipe("sft", smoke_settings(), context(tmp_path), data)
    recipe.semantic_ids()
    sft_folder, cpt_folder = sft_stage(recipe).folder, recipe.cpt.folder
    relative = sft_folder.relative_to(first_cache)

    monkeypatch.setenv("GRBENCH_CACHE", str(second_cache))
    shutil.copytree(cpt_folder, second_cache / cpt_folder.relative_to(first_cache))
    trained: list[str] = []
    real_train = stages.train
    monkeypatch.setattr("methods.sft.train", lambda *a, description, **k: trained.append(description) or
                        real_train(*a, description=description, **k))

    held, waiting = threading.Event(), threading.Event()

    def other_process_trains_sft() -> None:  # holds the lock until this run waits for it, then "finishes"
        with FileLock(str(second_cache / relative) + ".lock"):
            held.set()
            waiting.wait(timeout=30)
            shutil.copytree(sft_folder, second_cache / relative)

    other = threading.Thread(target=other_process_trains_sft)
    other.start()
    held.wait(timeout=60)
    method = NextItemSFT(smoke_settings(), context(tmp_path / "b"))
    lines: list[str] = []
    method.context.log = lambda line: (lines.append(line), waiting.set() if "waiting for stage sft" in line else None)
    method.fit(data, method.context)
    other.join()
    assert waiting.is_set() and trained == []  # it waited, and trained nothing itself
    assert any("trained by another process meanwhile" in line for line in lines)
    assert [stage.name for stage in method.context.costs.stages] == ["sids", "cpt", "sft"]
    assert method.report()["stages"]["sft"]["cached"]
    topk = method.recommend(data.train_sequences[:3], 10, np.arange(3))
    assert topk.shape == (3, 10)


def test_stage_keys_name_everything_that_determines_them(tmp_path):
    data = synthetic()
    recipe = LLMRecipe("sft", smoke_settings(), context(tmp_path), data)
    recipe.semantic_ids()
    cpt = recipe.cpt
    assert cpt.folder.parent == Path(stages.cache_dir()) / data.dataset.replace(":", "-").replace(",", "-") / \
        data.fingerprint / "llm-stages"
    variants = [LLMRecipe("sft", smoke_settings(**o), context(tmp_path, seed), data)
                for o, seed in [({"backbone": "tiny-tied"}, 0), ({"cpt_epochs": "2"}, 0), ({}, 1)]]
    for other in variants:
        other.sids = recipe.sids
        assert other.cpt.digest != cpt.digest
    unrelated = LLMRecipe("sft", smoke_settings(sft_lr="0.5", beam_width="12", micro_batch_size="2"),
                          context(tmp_path), data)
    unrelated.sids = recipe.sids
    assert unrelated.cpt.digest == cpt.digest  # later-stage and hardware knobs leave CPT alone


class Killed(Exception):
    pass


def test_an_interrupted_stage_continues_from_its_last_epoch(tmp_path):
    from transformers import TrainerCallback

    class KillAfterFirstEpoch(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Killed

    settings = smoke_settings(checkpoint_epochs="true")
    schedule = Schedule(lr=1e-2, epochs=3, batch_size=4)

    def run(folder: Path, callbacks=()):
        _, sids, model, tokenizer, vocab = expanded()
        examples = [sft_example(tokenizer, sids, vocab, h, t, 5) for h, t in next_item_pairs(synthetic())]
        report = train(model, examples, PaddingCollator(tokenizer.pad_token_id, left=True), schedule,
                       settings=settings, context=context(tmp_path), folder=folder, description="sft",
                       callbacks=callbacks)
        return model, report

    reference, plain = run(tmp_path / "uninterrupted")
    with pytest.raises(Killed):
        run(tmp_path / "killed", [KillAfterFirstEpoch()])
    assert (tmp_path / "killed" / stages.TRAINER_DIR).is_dir()
    resumed, report = run(tmp_path / "killed")
    steps_per_epoch = plain["steps"] // 3
    assert report["resumed_from"] == f"checkpoint-{steps_per_epoch}" and report["carried"]["wall_s"] > 0
    assert report["steps"] == plain["steps"] and not (tmp_path / "killed" / stages.TRAINER_DIR).exists()
    for (name, weight), same in zip(resumed.named_parameters(), reference.parameters()):
        torch.testing.assert_close(weight, same, msg=name)


def test_a_profiled_stage_writes_where_its_steps_time_goes(tmp_path, monkeypatch):
    """GRBENCH_TORCH_PROFILE: steps 4-8 of a stage under torch.profiler, as a table per stage (on a GPU also the
    kernels' busy share); training is the same with and without it."""
    def run(profiled: bool):
        if profiled:
            monkeypatch.setenv("GRBENCH_TORCH_PROFILE", str(tmp_path / "profile"))
        _, sids, model, tokenizer, vocab = expanded()
        examples = [sft_example(tokenizer, sids, vocab, h, t, 5) for h, t in next_item_pairs(synthetic())]
        train(model, examples, PaddingCollator(tokenizer.pad_token_id, left=True), Schedule(lr=1e-2, epochs=2,
              batch_size=4), settings=smoke_settings(), context=context(tmp_path), folder=tmp_path / "stage",
              description="SFT steps")
        return model

    plain = run(profiled=False)
    assert not (tmp_path / "profile").exists()
    profiled = run(profiled=True)
    text = (tmp_path / "profile" / "sft-steps.txt").read_text()
    header, walls = text.splitlines()[:2]
    assert header.startswith("# SFT steps: 5 optimizer steps from step 4 of 16, 1 micro-batch(es) of 4 a step")
    assert len(walls.removeprefix("wall ms a step: ").split()) == 5
    assert "by own CPU time:" in text and "aten::" in text
    for (name, weight), same in zip(profiled.named_parameters(), plain.parameters()):
        torch.testing.assert_close(weight, same, msg=name)


def test_stages_train_without_cudnn_attention_and_give_it_back(tmp_path):
    """Every stage trains with cuDNN's attention kernel off (its backward returns NaN on left-padded batches 64
    past a multiple of 128 wide, pytorch#196678), and the process has it back afterwards (decoding keeps it)."""
    from transformers import TrainerCallback

    seen = []

    class Flags(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(torch.backends.cuda.cudnn_sdp_enabled())

    assert torch.backends.cuda.cudnn_sdp_enabled()
    _, sids, model, tokenizer, vocab = expanded()
    examples = [sft_example(tokenizer, sids, vocab, h, t, 5) for h, t in next_item_pairs(synthetic())][:8]
    train(model, examples, PaddingCollator(tokenizer.pad_token_id, left=True), Schedule(lr=1e-2, epochs=1,
          batch_size=4), settings=smoke_settings(), context=context(tmp_path), folder=tmp_path / "stage",
          description="SFT steps", callbacks=[Flags()])
    assert seen == [False, False]
    assert torch.backends.cuda.cudnn_sdp_enabled()


# --- the method through the harness --------------------------------------------------------------------------------


def test_cli_smoke_run_records_metrics_and_stage_costs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--profile", "smoke", "--methods", "sft", "--out", str(out)]) == 0
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["family"] == "llm" and record["variant"] == "tiny, CPT 3 + SFT 3 steps"
    assert set(record["metrics"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}
    assert all(math.isfinite(metric["mean"]) for metric in record["metrics"].values())
    assert [stage["name"] for stage in record["stages"]] == ["sids", "cpt", "sft"]
    assert all(stage["wall_s"] > 0 for stage in record["stages"])
    assert record["report"]["stages"]["sft"]["steps"] == 3 and record["report"]["sids"]["fingerprint"]
    assert record["inference"]["ms_per_user"] > 0


def test_sft_learns_a_sequential_pattern_far_above_popularity(tmp_path):
    """The whole SFT pipeline (SIDs, CPT, prompts, loss mask, left padding, constrained beam search) can learn
    the history: GPU runs on ml-100k found SFT's lists collapsed onto a few items, below popularity
    (docs/llm-on-gpu.md), and this rules out a pipeline that cannot read the history at all. A tiny random
    Qwen3, one example per user as the study's recipe; about a minute on one busy core."""
    data = cycle_data(n_items=20, n_users=120, length=6, describe=lambda item: {
        "title": f"Item number {item[1:]}", "categories": ["Top", f"c{int(item[1:]) % 3}"]})
    method = fit(tmp_path, data, sft_epochs="25", sft_lr="3e-3", sft_max_steps="0", sft_batch_size="8")
    histories = [np.asarray(sequence) for sequence in data.train_sequences]
    top = method.recommend(histories, 10, np.arange(len(histories)))
    counts = np.bincount(np.concatenate(data.train_sequences), minlength=data.n_items).astype(float)
    popular = np.tile(np.argsort(-counts, kind="stable")[:10], (len(histories), 1))
    popularity = per_user_metrics(data.valid_targets, popular)["ndcg@10"].mean()
    learnt = per_user_metrics(data.valid_targets, top)["ndcg@10"].mean()
    assert learnt > 1.5 * popularity, (learnt, popularity)  # measured: 0.48 against 0.24
    assert len({tuple(row) for row in top.tolist()}) > 10  # lists differ between users


def test_datasets_without_text_stop_llm_methods_with_a_clear_message(tmp_path, capsys):
    lines = [f"u{u} " + " ".join(str((u + n) % 12 + 1) for n in range(5)) for u in range(12)]  # 12 items: rankable
    path = tmp_path / "bare.txt"
    path.write_text("\n".join(lines) + "\n")
    assert main(["run", "--profile", "smoke", "--methods", "sft", "--datasets", f"seq:{path}",
                 "--out", str(tmp_path / "out")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "skip seq-bare--sft--smoke--seed0" in err and "needs item text, and this dataset has none" in err
    assert not (tmp_path / "out" / "results.jsonl").exists()
    bare = leave_last_out(load_dataset(f"seq:{path}")).train_view()
    method = NextItemSFT(smoke_settings(), context(tmp_path))
    with pytest.raises(GRBenchError, match="needs item titles"):
        method.fit(bare, method.context)


def test_settings_are_checked_and_shown(monkeypatch):
    assert NextItemSFT.settings_for("paper", {})["backbone"] == "Qwen/Qwen3-1.7B"
    assert NextItemSFT.variant(NextItemSFT.settings_for("paper", {})) == "Qwen3-1.7B"
    assert "validation items" in NextItemSFT.variant(smoke_settings(cpt_corpus="paper"))
    assert "LoRA r=8" in NextItemSFT.variant(smoke_settings(lora="true", lora_r="8"))
    for options, message in [({"cpt_corpus": "all"}, "cpt_corpus"), ({"beam_width": "5"}, "beam_width"),
                             ({"sft_loss_tokens": "all"}, "sft_loss_tokens"), ({"dtype": "int8"}, "dtype"),
                             ({"sft_batch_size": "6"}, "sft_batch_size: batch size 6 is not a multiple of micro"),
                             ({"decode_graphs": "yes"}, "decode_graphs 'yes': expected one of auto, on, off")]:
        with pytest.raises(GRBenchError, match=message):
            smoke_settings(**options)
    from methods.llm.config import decode_graphs

    chosen = [decode_graphs(smoke_settings(decode_graphs=value)) for value in ("auto", "on", "off")]
    assert chosen == [None, True, False]


def test_lora_without_peft_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed
    with pytest.raises(GRBenchError, match="pip install .*peft"):
        stages.with_lora(None, smoke_settings(lora="true"))


def test_paper_backbone_offline_names_the_model_and_the_way_out(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(GRBenchError) as error:
        load_backbone(NextItemSFT.settings_for("paper", {})["backbone"])
    message = str(error.value)
    assert "Qwen/Qwen3-1.7B" in message and "download" in message and "backbone=/path/to/folder" in message


@pytest.mark.real
def test_packaged_smollm2_expands_trains_and_saves(tmp_path):
    """The GGUF quirks: dequantised on load but marked quantised (Trainer and save_pretrained refuse it), tied."""
    data = synthetic()
    _, sids, model, tokenizer, vocab = expanded("smollm2", data)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    prompt = chat_prompt(tokenizer, sid_history(sids, [1, 2]))
    assert prompt.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
    example = sft_example(tokenizer, sids, vocab, [1, 2], target=3, max_history=5)
    assert example.input_ids[-6:] == [vocab.begin_id, *vocab.item_tokens[3], vocab.end_id]
    report = train(model, [example, example], PaddingCollator(tokenizer.pad_token_id, left=True),
                   Schedule(lr=1e-4, epochs=1, batch_size=2, max_steps=1),
                   settings=smoke_settings(micro_batch_size="2"), context=context(tmp_path), folder=tmp_path,
                   description="sft")
    assert report["steps"] == 1 and math.isfinite(report["train_loss"])
    stages.save_model(tmp_path / "saved", model, tokenizer)
    recipe = LLMRecipe("sft", smoke_settings(), context(tmp_path), data)
    reloaded, retokenizer = recipe.load_model(tmp_path / "saved")
    assert len(retokenizer) == len(tokenizer) and reloaded.get_input_embeddings().weight.shape[0] == len(tokenizer)
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_an_epoch_checkpoint_is_resumed_only_when_marked_whole_and_the_older_goes_after_the_mark(tmp_path):
    """A kill between Trainer's save of epoch 2 and our marker must leave epoch 1's checkpoint to resume from."""
    from types import SimpleNamespace

    def save(step: int) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        return folder

    recorder = stages._elapsed_recorder({"wall_s": 10.0, "gpu_hours": 0.0})
    args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(is_world_process_zero=True)
    save(3)
    recorder.on_save(args, SimpleNamespace(**vars(state), global_step=3), None)
    save(6)  # saved by Trainer; killed before on_save marked it
    resume_from, carried = stages._last_checkpoint(tmp_path)
    assert resume_from == str(tmp_path / "checkpoint-3") and carried["wall_s"] >= 10.0
    recorder.on_save(args, SimpleNamespace(**vars(state), global_step=6), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6"]  # the older one goes once 6 is marked
    assert stages._last_checkpoint(tmp_path)[0] == str(tmp_path / "checkpoint-6")
    assert stages._last_checkpoint(tmp_path / "absent") == (None, {"wall_s": 0.0, "gpu_hours": 0.0})


def test_a_diverged_stage_stops_at_its_first_non_finite_loss():
    from types import SimpleNamespace

    from methods.llm.stages import divergence_guard

    guard = divergence_guard("implicit SFT steps", history=2)
    for step, loss, norm in [(5, 3.0, 0.5), (6, 2.5, 40.0)]:
        guard.on_log(None, SimpleNamespace(global_step=step, max_steps=20), None,
                     logs={"loss": loss, "grad_norm": norm})
    state = SimpleNamespace(global_step=7, max_steps=20)
    guard.on_log(None, state, None, logs={"learning_rate": 1e-4})  # a log line without a loss
    with pytest.raises(GRBenchError, match=r"implicit SFT steps: the training loss became nan at step 7 of 20 "
                                           r"\(last finite loss: 2.5; last steps 6: 2.5 \(gradient norm 40\); "
                                           r"7: nan\)"):
        guard.on_log(None, state, None, logs={"loss": float("nan")})
    # GPU runs 2 and 4: a NaN gradient under an ordinary loss stops the stage at that step, named as what it is
    guard = divergence_guard("implicit SFT steps", history=2)
    guard.on_log(None, SimpleNamespace(global_step=41, max_steps=295), None, logs={"loss": 2.4, "grad_norm": 3.46})
    with pytest.raises(GRBenchError, match=r"the gradient norm became nan at step 42 of 295 under a finite loss "
                                           r"\(last steps 41: 2.4 \(gradient norm 3.46\); 42: 2.556 \(gradient "
                                           r"norm nan\)\): the backward pass failed on this batch"):
        guard.on_log(None, SimpleNamespace(global_step=42, max_steps=295), None,
                     logs={"loss": 2.556, "grad_norm": float("nan")})


def test_liger_kernels_are_asked_for_on_a_gpu_only_and_a_missing_package_is_named(tmp_path, monkeypatch):
    """liger=true turns on Trainer's Liger kernels on CUDA; a CPU ignores it (Triton kernels), as it ignores bf16."""
    import importlib.util

    on = smoke_settings(liger="true")
    assert stages.use_liger(on, torch.device("cpu")) is False
    assert stages.use_liger(smoke_settings(), torch.device("cuda")) is False
    arguments = stages.trainer_arguments(Schedule(lr=1e-3, epochs=1, batch_size=4), on, context(tmp_path), tmp_path)
    assert arguments["use_liger_kernel"] is False  # the test context trains on the CPU
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "liger_kernel" else real_find_spec(name, *a))
    with pytest.raises(GRBenchError, match="liger=true needs the liger-kernel package"):
        stages.use_liger(on, torch.device("cuda"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else None)
    assert stages.use_liger(on, torch.device("cuda")) is True


def test_micro_batches_cap_what_a_device_takes_at_once_and_reject_a_remainder(monkeypatch):
    assert stages.micro_batches(Schedule(lr=1e-3, epochs=1, batch_size=32), 16) == (16, 2)
    assert stages.micro_batches(Schedule(lr=1e-3, epochs=1, batch_size=16), 64) == (16, 1)  # the whole batch at once
    with pytest.raises(GRBenchError, match="not a multiple of micro_batch_size"):
        stages.micro_batches(Schedule(lr=1e-3, epochs=1, batch_size=24), 16)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert stages.micro_batches(Schedule(lr=1e-3, epochs=1, batch_size=64), 32) == (16, 1)
    with pytest.raises(GRBenchError, match="not a multiple of the 4 processes"):
        stages.micro_batches(Schedule(lr=1e-3, epochs=1, batch_size=6), 2)


def test_a_liger_stage_keeps_every_label_and_asks_for_no_logit_slice():
    """Liger's fused loss cannot view logits_to_keep's slice of the hidden states (GPU run 3): for it the left-padded
    collator keeps the position ids and full-width labels, whose last columns are the trimmed batch's labels."""
    examples = [Example([5, 6, 7, 8, 9], [IGNORE, IGNORE, IGNORE, 8, 9]), Example([5, 6, 9], [IGNORE, IGNORE, 9])]
    trimmed = PaddingCollator(0, left=True)(examples)
    whole = stages.collator_for(PaddingCollator(0, left=True), liger=True, compiled=False)(examples)
    assert "logits_to_keep" in trimmed and "logits_to_keep" not in whole
    assert whole["labels"].shape == whole["input_ids"].shape
    torch.testing.assert_close(whole["labels"][:, -trimmed["logits_to_keep"]:], trimmed["labels"])
    torch.testing.assert_close(whole["position_ids"], trimmed["position_ids"])
    assert (whole["labels"][:, :-trimmed["logits_to_keep"]] == IGNORE).all()  # nothing labelled was cut
    unchanged = object()
    assert stages.collator_for(unchanged, liger=True, compiled=True) is unchanged


def test_a_compiled_stage_pads_to_few_shapes_and_loses_nothing_to_the_padding():
    """compile=...: no logit slice (each would compile anew) and widths rounded up to 64; the extra padding carries
    no label and no attention, so the model's loss is the same."""
    model, _ = load_backbone("tiny", seed=0)
    examples = [Example([5, 6, 7, 8, 9], [IGNORE, IGNORE, IGNORE, 8, 9]), Example([5, 6, 9], [IGNORE, IGNORE, 9])]
    plain = PaddingCollator(0, left=True, trim_logits=False)(examples)
    compiled = stages.collator_for(PaddingCollator(0, left=True), liger=False, compiled=True)(examples)
    assert compiled["input_ids"].shape == (2, stages.COMPILE_PAD_MULTIPLE) and "logits_to_keep" not in compiled
    assert stages.collator_for(PaddingCollator(0), liger=False, compiled=False) == PaddingCollator(0)
    with torch.no_grad():
        torch.testing.assert_close(model(**compiled).loss, model(**plain).loss)


def test_compile_is_passed_to_trainer_and_a_bad_mode_is_named(tmp_path):
    schedule = Schedule(lr=1e-3, epochs=1, batch_size=4)
    arguments = stages.trainer_arguments(schedule, smoke_settings(), context(tmp_path), tmp_path)
    assert arguments["torch_compile"] is False
    arguments = stages.trainer_arguments(schedule, smoke_settings(compile="reduce-overhead"), context(tmp_path),
                                         tmp_path)
    assert arguments["torch_compile"] is True and arguments["torch_compile_mode"] == "reduce-overhead"
    arguments = stages.trainer_arguments(schedule, smoke_settings(compile="default"), context(tmp_path), tmp_path)
    assert arguments["torch_compile"] is True and arguments["torch_compile_mode"] is None
    with pytest.raises(GRBenchError, match="compile 'fast': expected one of off, default, reduce-overhead"):
        smoke_settings(compile="fast")


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on a CPU needs a C compiler (inductor's CPU kernels)")
def test_a_compiled_stage_trains_as_the_eager_one_does(tmp_path):
    """compile=default through Trainer (on the CPU: inductor; on a GPU the same code path) trains the same weights
    up to rounding. About 40 s, most of it compiling."""
    def trained(mode: str):
        _, sids, model, tokenizer, vocab = expanded()
        examples = [sft_example(tokenizer, sids, vocab, h, t, 5) for h, t in next_item_pairs(synthetic())][:16]
        train(model, examples, PaddingCollator(tokenizer.pad_token_id, left=True),
              Schedule(lr=1e-2, epochs=1, batch_size=4), settings=smoke_settings(compile=mode),
              context=context(tmp_path), folder=tmp_path / mode, description="SFT steps")
        return model

    from torch._dynamo.utils import counters

    eager = trained("off")
    counters.clear()
    compiled = trained("default")
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did compile the model
    for (name, weight), same in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(weight, same, atol=1e-4, rtol=1e-4, msg=name)
    assert any(not torch.equal(weight, initial) for weight, initial in
               zip(eager.parameters(), expanded()[2].parameters()))  # it trained at all


def test_micro_batch_size_is_a_hardware_knob_that_changes_training_only_by_rounding(tmp_path):
    """micro_batch_size stays out of every stage's cache key: Trainer orders examples by the global batch and takes
    the token mean over accumulated micro-batches, so two forwards of 4 train as one of 8 does (AdamW's first steps
    move each weight by about the learning rate, so a different loss weighting would show at that scale)."""
    model, _ = load_backbone("tiny", seed=0)
    generator = torch.Generator().manual_seed(0)
    examples = []
    for n in (3, 9, 5, 12, 4, 7, 8, 2):  # unequal lengths and label counts: a per-micro-batch mean would differ
        ids = torch.randint(5, 200, (n,), generator=generator).tolist()
        examples.append(Example(ids, [IGNORE] * (n - 2) + ids[-2:]) if n % 2 else Example(ids, ids))
    trained = {}
    for micro in (2, 8):
        copy_of = copy.deepcopy(model)
        train(copy_of, examples, PaddingCollator(0, left=True), Schedule(lr=1e-2, epochs=1, batch_size=8, max_steps=3),
              settings=smoke_settings(micro_batch_size=str(micro)), context=context(tmp_path),
              folder=tmp_path / str(micro), description="SFT steps")
        trained[micro] = torch.cat([p.detach().flatten() for p in copy_of.parameters()])
    moved = (trained[8] - torch.cat([p.detach().flatten() for p in model.parameters()])).abs().max()
    assert moved > 1e-2  # three steps at lr 1e-2 moved the weights
    assert (trained[2] - trained[8]).abs().max() < 1e-3
