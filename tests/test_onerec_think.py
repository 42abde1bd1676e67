"""OneRec-Think: the rationale templates, the CoT SFT loss mask, the GRPO reward and a GRPO run through TRL,
decoding after a greedy rationale, stage sharing with ``sft``, the teacher plug-in against a loopback stub, and the
CLI (tiny random Qwen3, synthetic data)."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import methods.onerec_think as onerec_think
import methods.sft as sft_module
from bench.cli import main
from bench.data import load_dataset
from bench.errors import GRBenchError
from bench.split import EVAL_SUBSET_SEED, fixed_subset, leave_last_out
from methods.llm import stages
from methods.llm.prompts import chat_head, chat_prompt, sid_history, think_prefix
from methods.llm.rationales import (
    RationaleWriter,
    TeacherClient,
    add_noise_words,
    drop_words,
    remove_target_category,
    template_rationale,
)
from methods.llm.stages import IGNORE, encode, next_item_pairs
from methods.onerec_think import OneRecThink, completion_reward, cot_example, greedy_rationales, item_trie
from methods.sft import NextItemSFT
from tests.test_llm import context, expanded, fast_embedding, held_out_data, synthetic  # noqa: F401 (autouse)


def fitted(tmp_path: Path, method: type = OneRecThink, data=None, **options: str):
    data = data or synthetic()
    model = method(method.settings_for("smoke", options), context(tmp_path))
    model.fit(data, model.context)
    return model, data


# --- rationales ----------------------------------------------------------------------------------------------------


def beauty_catalog() -> pd.DataFrame:
    """Row 0 is padding, as in every catalog of a split."""
    return pd.DataFrame({
        "title": [None, "Matte Red Lipstick", "Matte Pink Lipstick", "Gentle Face Wash", "Argan Oil Shampoo", None],
        "categories": [[], ["Beauty", "Makeup", "Lips"], ["Beauty", "Makeup", "Lips"], ["Beauty", "Skin Care", "Face"],
                       ["Beauty", "Hair Care", "Shampoo"], ["Beauty"]],
    })


def test_templates_write_the_study_text_from_history_and_target():
    catalog = beauty_catalog()
    # written out, not imported: the test must fail if the templates drift from DESIGN.md
    assert template_rationale("template-category", catalog, [1, 2, 3], 4) == \
        "The user is likely to buy items in the Shampoo category."
    assert template_rationale("template-extended", catalog, [1, 2, 3], 4) == (
        "The user demonstrates interest in Lips and Face products. By identifying the user's preference in matte, "
        "lipstick and gentle, we can predict the user's purchase of Beauty > Hair Care > Shampoo, for example, a "
        "Argan Oil Shampoo.")
    # frequency first, then recency: Face (once, latest) before Lips (once, earlier)
    assert "interest in Face and Lips products" in template_rationale("template-extended", catalog, [1, 3], 4)
    assert template_rationale("template-category", catalog, [1, 2], 5) == "The user is likely to buy items in the " \
        "Beauty category."
    assert template_rationale("template-extended", catalog, [1, 2], 5) == ""  # the target has no title
    with pytest.raises(GRBenchError, match="template"):
        template_rationale("teacher", catalog, [1], 2)


def test_perturbations_remove_drop_and_add_words():
    catalog = beauty_catalog()
    rationale = template_rationale("template-category", catalog, [1, 2, 3], 4)
    assert remove_target_category(rationale, catalog, 4) == "The user is likely to buy items in the category."
    extended = template_rationale("template-extended", catalog, [1, 2, 3], 4)
    # every mention goes, the title's too; the history's categories stay
    assert remove_target_category(extended, catalog, 4) == (
        "The user demonstrates interest in Lips and Face products. By identifying the user's preference in matte, "
        "lipstick and gentle, we can predict the user's purchase of, for example, a Argan Oil.")
    rng = np.random.default_rng(0)
    dropped = drop_words(rationale, 5, rng)
    assert len(dropped.split()) == len(rationale.split()) - 5 and set(dropped.split()) <= set(rationale.split())
    noisy = add_noise_words(rationale, 5, rng, ["zebra"])
    assert noisy.split().count("zebra") == 5 and [w for w in noisy.split() if w != "zebra"] == rationale.split()


def test_cot_sft_rationales_and_prompts_hold_no_validation_or_test_item(tmp_path, monkeypatch):
    data, valid, test = held_out_data()
    held_out = valid + test
    seen, targets = [], []
    real_fine_tune, real_reward = onerec_think.fine_tune, onerec_think.reward_function

    def recording_fine_tune(model, examples, *args, **kwargs):
        seen.extend(examples)
        return real_fine_tune(model, examples, *args, **kwargs)

    def recording_reward(*args):
        reward = real_reward(*args)

        def recorded(completion_ids, target, **kwargs):
            targets.extend(target)
            return reward(completion_ids, target, **kwargs)

        return recorded

    monkeypatch.setattr(onerec_think, "fine_tune", recording_fine_tune)
    monkeypatch.setattr(onerec_think, "reward_function", recording_reward)
    method, _ = fitted(tmp_path, data=data, rationale="template-extended")
    cot = [e for e in seen if "<think>The user" in method.tokenizer.decode(e.input_ids)]
    assert len(cot) == len(next_item_pairs(data)) == 6  # one CoT example per user, each with a rationale
    for example in cot:
        text = method.tokenizer.decode(example.input_ids)
        assert not {"valid", "vali", "test"} & set(re.findall(r"[a-z]+", text))  # held-out titles, categories
        assert not any(method.sids.sid_string(item) in text for item in held_out)
    assert targets and not set(targets) & set(held_out)  # GRPO rewards the training targets only


# --- CoT SFT examples ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rationale", ["The user is likely to buy items in the Lamp category.", ""])
def test_cot_sft_loss_covers_exactly_the_rationale_and_the_sid(rationale):
    _, sids, _, tokenizer, vocab = expanded()
    user = sid_history(sids, [1, 2])
    example = cot_example(tokenizer, vocab, user, rationale, target=3)
    assert tokenizer.decode(example.input_ids) == chat_prompt(tokenizer, user, think_prefix(rationale)) + \
        sids.sid_string(3)[len("<|sid_begin|>"):]
    first = next(n for n, label in enumerate(example.labels) if label != IGNORE)
    assert all(label != IGNORE for label in example.labels[first:])  # one labelled span, to the end
    assert tokenizer.decode(example.input_ids[:first]) == chat_head(tokenizer, user, "<think>")
    assert example.labels[first:] == example.input_ids[first:]
    assert tokenizer.decode(example.labels[first:]) == f"{rationale}</think> {sids.sid_string(3)}"


# --- reward --------------------------------------------------------------------------------------------------------


def test_reward_is_one_for_the_target_partial_per_leading_level_and_zero_without_a_valid_sid():
    data, sids, _, tokenizer, vocab = expanded()
    trie = item_trie(vocab)
    target = 5
    codes = vocab.item_tokens[target].tolist()
    prefix = encode(tokenizer, "The user likes lamps.</think> ")

    def reward(tokens, credit=0.25):
        return completion_reward(prefix + tokens, codes, trie, vocab.begin_id, credit)

    assert reward([vocab.begin_id, *codes, vocab.end_id]) == 1.0
    assert reward([vocab.begin_id, *codes]) == 1.0  # cut after the codes: still the target's SID
    shared_levels = set()
    for item in range(1, data.n_items + 1):
        if item == target:
            continue
        other = vocab.item_tokens[item].tolist()
        shared = next(n for n, (a, b) in enumerate(zip(other, codes)) if a != b)
        shared_levels.add(shared)
        assert reward([vocab.begin_id, *other, vocab.end_id]) == pytest.approx(0.25 * shared)
        assert reward([vocab.begin_id, *other], credit=0.1) == pytest.approx(0.1 * shared)
    assert {0, 1} <= shared_levels  # both a miss and a partial hit were scored
    assert reward(codes) == 0.0  # no <|sid_begin|>
    assert reward([vocab.begin_id, *codes[:2]]) == 0.0  # too short
    assert reward([vocab.begin_id, codes[1], codes[0], *codes[2:]]) == 0.0  # not a SID of any item
    swapped = [*codes[:3], next(t for t in vocab.code_ids.tolist() if trie.item_of([*codes[:3], t]) is None)]
    assert reward([vocab.begin_id, *swapped]) == 0.0
    batch = onerec_think.reward_function(vocab, trie, 0.25)(
        completion_ids=[prefix + [vocab.begin_id, *codes], prefix], target=[target, target], prompts=["", ""])
    assert batch == [1.0, 0.0]


# --- GRPO through TRL ----------------------------------------------------------------------------------------------


def test_two_grpo_steps_through_trl_change_the_weights(tmp_path, monkeypatch):
    calls = []
    real_reward = onerec_think.reward_function

    def varied_reward(*args):
        """The real reward plus a term for the number of distinct tokens, so that a random tiny model's completions
        (all cut at the length cap, none valid) get different rewards: equal rewards give zero advantages."""
        reward = real_reward(*args)

        def rewarded(completion_ids, target, **kwargs):
            real = reward(completion_ids, target, **kwargs)
            calls.append((completion_ids, list(target), real))
            return [r + 0.01 * len(set(ids)) for r, ids in zip(real, completion_ids)]

        return rewarded

    monkeypatch.setattr(onerec_think, "reward_function", varied_reward)
    method, data = fitted(tmp_path)
    report = method.report()["stages"]["grpo"]
    assert report["steps"] == 2 and not report["cached"]
    # the varied reward gives groups a spread (two completions with as many distinct tokens have none)
    assert report["mean_reward"] > 0 and 0.0 <= report["mean_frac_reward_zero_std"] < 1.0
    assert report["reward_never_varied"] is False and "warning" not in report
    assert report["prompts_with_reward_spread"] > 0
    assert report["prompts_with_reward_spread"] == pytest.approx(1 - report["mean_frac_reward_zero_std"])
    assert report["steps_with_reward_spread"] >= 1
    # first and last steps' mean rewards, as the reward function returned them to TRL
    first, last = ([r + 0.01 * len(set(ids)) for r, ids in zip(real, completions)] for completions, _, real in
                   (calls[0], calls[-1]))
    assert (report["first_reward"], report["last_reward"]) == pytest.approx((np.mean(first), np.mean(last)))
    # cut at the length limit: the completions that fill it without ending at a stop token (TRL pads after one)
    stops = {method.tokenizer.eos_token_id, method.tokenizer.pad_token_id, method.vocab.end_id}
    cut = [len(ids) == method.settings["grpo_max_completion_length"] and ids[-1] not in stops
           for completions, _, _ in calls for ids in completions]
    assert report["completions_clipped"] == pytest.approx(np.mean(cut))
    # the first step's first completions, decoded with their SID tokens, and the reward TRL was given for each
    examples = report["completion_examples"]
    first_step = calls[0]
    assert [e["target"] for e in examples] == first_step[1][:4]
    assert [e["reward"] for e in examples] == pytest.approx([r + 0.01 * len(set(ids))
                                                             for r, ids in zip(first_step[2], first_step[0])][:4])
    assert examples[0]["completion"] == method.tokenizer.decode(first_step[0][0], skip_special_tokens=False)
    settings = method.settings
    vocab = method.vocab
    trie = item_trie(vocab)
    assert len(calls) == 2
    for completions, targets, real in calls:
        assert len(completions) == settings["grpo_batch_size"]  # completions per step
        assert targets[0::2] == targets[1::2]  # num_generations=2 completions of each prompt
        assert all(0.0 <= r <= 1.0 for r in real)
        assert all(len(ids) <= settings["grpo_max_completion_length"] for ids in completions)
        for ids in completions:  # grpo_valid_sids: a SID a completion opens follows the trie (or is cut short)
            codes = ids[ids.index(vocab.begin_id) + 1:][:trie.depth] if vocab.begin_id in ids else []
            assert len(codes) < trie.depth or trie.item_of(codes) is not None
    cot, _ = method.recipe.load_model(onerec_think.cot_stage(method.recipe).folder)
    changed = [name for name, value in method.model.state_dict().items()
               if not torch.equal(value, cot.state_dict()[name])]
    assert len(changed) > len(cot.state_dict()) // 2  # GRPO trains every weight (weight decay 0: only gradients)
    assert method.model.generation_config.eos_token_id == cot.generation_config.eos_token_id  # stop tokens restored


def test_a_grpo_stage_whose_reward_never_varies_is_flagged_in_its_record_costs_and_the_run_end(
        tmp_path, monkeypatch, capsys):
    def constant_reward(*args):
        """Every completion earns the same: no group has a spread, whatever the policy samples."""
        return lambda completion_ids, target, **kwargs: [0.5] * len(completion_ids)

    monkeypatch.setattr(onerec_think, "reward_function", constant_reward)
    out = tmp_path / "out"
    assert main(["run", "--profile", "smoke", "--methods", "onerec_think", "--max-test-users", "8",
                 "--out", str(out)]) == 0
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    grpo = record["stages"][-1]["extra"]
    assert grpo["reward_never_varied"] is True and grpo["prompts_with_reward_spread"] == 0.0
    assert grpo["first_reward"] == grpo["last_reward"] == grpo["mean_reward"] == 0.5
    assert grpo["warning"].startswith(onerec_think.NEVER_VARIED_WARNING)
    assert "REWARD NEVER VARIED" in (out / "leaderboards" / "costs.md").read_text()
    end = capsys.readouterr().err.strip().splitlines()
    warnings = [line for line in end if line.startswith("WARNING")]
    assert warnings == [f"WARNING {record['id']}: stage grpo: {grpo['warning']}"]

    # a later run that reuses the stage carries the flag too
    assert main(["run", "--profile", "smoke", "--methods", "onerec_think", "--max-test-users", "8",
                 "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results.jsonl").read_text().splitlines()[0])
    reused = again["stages"][-1]["extra"]
    assert reused["cached"] is True and reused["reward_never_varied"] is True
    assert f"stage grpo: {grpo['warning']}" in capsys.readouterr().err


def test_grpo_progress_lines_say_when_no_group_has_a_reward_spread():
    logs = {"loss": 0.0, "grad_norm": 0.0, "reward": 0.0, "frac_reward_zero_std": 1.0,
            "completions/clipped_ratio": 0.25}
    assert stages._reward_text(logs) == (", reward 0, groups without reward spread 100%, "
                                         "completions cut at the length limit 25%")
    assert stages._reward_text({"loss": 2.5, "grad_norm": 3.0}) == ""  # other stages log no reward


# --- recommendation ------------------------------------------------------------------------------------------------


def test_recommend_returns_distinct_items_after_a_rationale_cut_at_max_tokens(tmp_path, monkeypatch):
    method, data = fitted(tmp_path, max_rationale_tokens="5")
    generated, prompts = [], []
    real_generate, real_search = method.model.generate, sft_module.constrained_beam_search

    def spy_generate(*args, **kwargs):
        output = real_generate(*args, **kwargs)
        generated.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    def spy_search(model, batch, *args, **kwargs):
        prompts.extend(batch)
        return real_search(model, batch, *args, **kwargs)

    monkeypatch.setattr(method.model, "generate", spy_generate)
    monkeypatch.setattr(sft_module, "constrained_beam_search", spy_search)  # NextItemSFT.beam_search calls it
    histories = data.train_sequences[:20]
    topk = method.recommend(histories, 10, np.arange(20))
    assert topk.shape == (20, 10) and topk.dtype == np.int64
    assert all(len(set(row)) == 10 and 1 <= row.min() and row.max() <= data.n_items for row in topk)
    assert len(generated) == 2 and max(generated) <= 5  # batches of infer_batch_size=16, at most 5 tokens each
    rationales = method.rationales(method.model, histories)
    for history, prompt, rationale in zip(histories, prompts, rationales):
        head = chat_head(method.tokenizer, method.user_text(history), "<think>")
        assert method.tokenizer.decode(prompt) == f"{head}{rationale}</think> <|sid_begin|>"


def test_rationale_stops_at_think_close_or_after_max_tokens():
    _, _, model, tokenizer, vocab = expanded()
    head = encode(tokenizer, chat_head(tokenizer, "hello", "<think>"))
    answer = encode(tokenizer, "ok</think> ") + [vocab.begin_id]
    ids, labels = torch.tensor([head + answer]), torch.tensor([[IGNORE] * len(head) + answer])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(400):  # teach the tiny model one answer (about 150 steps, a second or two)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    lengths = []
    real_generate = model.generate

    def spy(*args, **kwargs):
        output = real_generate(*args, **kwargs)
        lengths.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    model.generate = spy
    stop = [tokenizer.eos_token_id]
    assert greedy_rationales(model, tokenizer, [head, head], max_tokens=50, batch_size=4, stop_ids=stop) == ["ok"] * 2
    assert lengths == [len("ok</think>")]  # generation stopped at </think> (one token a byte), not after 50
    assert greedy_rationales(model, tokenizer, [head], max_tokens=1, batch_size=4, stop_ids=stop) == ["o"]


# --- stages --------------------------------------------------------------------------------------------------------


def test_stages_are_cached_and_sft_is_shared_with_sft(tmp_path, monkeypatch):
    trained: list[str] = []
    real_train, real_grpo = stages.train, OneRecThink.train_grpo

    def counting_train(*args, description: str, **kwargs):
        trained.append(description)
        return real_train(*args, description=description, **kwargs)

    def counting_grpo(*args, **kwargs):
        trained.append("GRPO")
        return real_grpo(*args, **kwargs)

    monkeypatch.setattr(stages, "train", counting_train)
    monkeypatch.setattr("methods.sft.train", counting_train)
    monkeypatch.setattr(OneRecThink, "train_grpo", counting_grpo)
    first, data = fitted(tmp_path)
    assert trained == ["CPT steps", "SFT steps", "CoT SFT steps", "GRPO"]
    assert [stage.name for stage in first.context.costs.stages] == ["sids", "cpt", "sft", "cot_sft", "grpo"]
    topk = first.recommend(data.train_sequences[:3], 10, np.arange(3))

    trained.clear()
    second, _ = fitted(tmp_path)  # everything cached: nothing trains, the same model
    assert trained == []
    # each stage once, all cached, in training order
    assert [(stage.name, stage.extra.get("cached")) for stage in second.context.costs.stages] == \
        [("sids", True), ("cpt", True), ("sft", True), ("cot_sft", True), ("grpo", True)]
    assert all(stage.carried_wall_s > 0 for stage in second.context.costs.stages)
    np.testing.assert_array_equal(second.recommend(data.train_sequences[:3], 10, np.arange(3)), topk)

    sft, _ = fitted(tmp_path, NextItemSFT)  # sft finds the SFT checkpoint onerec_think made
    assert trained == [] and sft.report()["stages"]["sft"]["cached"]

    fitted(tmp_path, grpo_lr="0.002")  # a new GRPO setting: GRPO again, from the cached CoT SFT
    assert trained == ["GRPO"]
    trained.clear()
    cot_only, _ = fitted(tmp_path, grpo="false")  # the CoT SFT model itself, no GRPO stage
    assert trained == [] and {s.name for s in cot_only.context.costs.stages} == {"sids", "cpt", "sft", "cot_sft"}
    fitted(tmp_path, rationale="template-extended")  # new rationales: CoT SFT and GRPO again, not SFT
    assert trained == ["CoT SFT steps", "GRPO"]


def test_settings_are_checked_and_shown():
    variant = OneRecThink.variant(OneRecThink.settings_for("smoke", {}))
    assert variant == "tiny, CPT 3 + SFT 3 + COT 3 + GRPO 2 steps, template-category rationales"
    assert "no GRPO" in OneRecThink.variant(OneRecThink.settings_for("smoke", {"grpo": "false"}))
    paper = OneRecThink.settings_for("paper", {})
    assert paper["max_rationale_tokens"] == 128 and paper["cot_lr"] == 1e-5
    assert OneRecThink.variant(paper) == "Qwen3-1.7B, template-category rationales"
    for options, message in [({"rationale": "free"}, "rationale 'free'"), ({"rationale": "teacher"}, "teacher_url"),
                             ({"grpo_num_generations": "1"}, "at least 2"),
                             ({"grpo_batch_size": "8", "grpo_num_generations": "3"}, "multiple of grpo_num_gen"),
                             ({"grpo_level_credit": "1"}, "grpo_level_credit"),
                             ({"max_rationale_tokens": "0"}, "max_rationale_tokens")]:
        with pytest.raises(GRBenchError, match=message):
            OneRecThink.settings_for("smoke", options)


# --- teacher plug-in -----------------------------------------------------------------------------------------------


class StubTeacher(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions endpoint on the loopback interface that records what it is sent."""

    requests: list[tuple[str, dict]] = []
    answer = "<think>reasoning of the teacher itself</think> The user keeps buying lamps."

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"model not loaded")
            return
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": self.answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def teacher_url():
    StubTeacher.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubTeacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_teacher_rationales_come_from_the_endpoint_once_then_from_the_cache(teacher_url, tmp_path):
    catalog = beauty_catalog()
    writer = RationaleWriter("teacher", catalog, TeacherClient(teacher_url, "stub-teacher", timeout=10))
    assert writer.write([1, 2], 3) == "The user keeps buying lamps."  # the teacher's own <think> block dropped
    (path, body), = StubTeacher.requests
    assert path == "/v1/chat/completions" and body["model"] == "stub-teacher" and body["temperature"] == 0
    prompt = body["messages"][-1]["content"]
    assert "1. Matte Red Lipstick (categories: Beauty > Makeup > Lips)" in prompt
    assert "next purchase was: Gentle Face Wash" in prompt
    again = RationaleWriter("teacher", catalog, TeacherClient(teacher_url, "stub-teacher", timeout=10))
    assert again.write([1, 2], 3) == "The user keeps buying lamps." and len(StubTeacher.requests) == 1  # cached
    RationaleWriter("teacher", catalog, TeacherClient(teacher_url + "/chat/completions", "other", timeout=10)) \
        .write([1, 2], 3)
    assert len(StubTeacher.requests) == 2 and StubTeacher.requests[1][0] == "/v1/chat/completions"  # a new model
    with pytest.raises(GRBenchError, match="HTTP 500: model not loaded"):
        TeacherClient(teacher_url, "broken", timeout=10).rationale("anything")


def test_a_dead_teacher_endpoint_is_a_clear_error(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = TeacherClient(f"http://127.0.0.1:{port}/v1", "stub-teacher", timeout=5)
    with pytest.raises(GRBenchError, match=rf"teacher endpoint http://127.0.0.1:{port}/v1/chat/completions is "
                                           "unreachable .* rationale=template-category"):
        client.rationale("anything")


def test_cot_sft_trains_on_teacher_rationales(teacher_url, tmp_path):
    method, data = fitted(tmp_path, rationale="teacher", teacher_url=teacher_url, teacher_model="stub-teacher",
                          grpo="false")
    report = method.report()["stages"]["cot_sft"]
    assert report["rationale_examples"] == ["The user keeps buying lamps."] * 3
    assert len(StubTeacher.requests) == len({(tuple(h[-5:]), t) for h, t in next_item_pairs(data)})
    assert "teacher rationales (stub-teacher)" in OneRecThink.variant(method.settings)


# --- the method through the harness ----------------------------------------------------------------------------------


def test_cli_run_and_rationale_perturbation_analysis(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["run", "--profile", "smoke", "--methods", "onerec_think", "--out", str(out)]) == 0
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["family"] == "llm" and record["variant"].endswith("template-category rationales")
    assert [stage["name"] for stage in record["stages"]] == ["sids", "cpt", "sft", "cot_sft", "grpo"]
    grpo = record["stages"][-1]["extra"]  # the rewards travel with the record (0 for a random tiny model's SIDs)
    assert 0.0 <= grpo["mean_reward"] <= 1.0 and 0.0 <= grpo["mean_frac_reward_zero_std"] <= 1.0
    assert all(math.isfinite(metric["mean"]) for metric in record["metrics"].values())

    scored = []
    real_metrics = onerec_think.per_user_metrics
    monkeypatch.setattr(onerec_think, "per_user_metrics", lambda targets, topk: scored.append(targets) or
                        real_metrics(targets, topk))
    analysis = tmp_path / "analysis"
    assert main(["analyze", "--profile", "smoke", "--methods", "onerec_think", "--out", str(analysis)]) == 0
    folder = analysis / "synthetic" / "onerec_think" / "smoke-seed0"
    table = (folder / "rationale_perturbation.md").read_text()
    conditions = ["ground-truth rationale", "target category removed", "5 random words dropped",
                  "5 noise words added", "generated rationale"]
    assert all(f"| {name}" in table for name in conditions)
    summary = json.loads((folder / "analysis.json").read_text())["analyses"]
    assert summary["model"] == "cot_sft" and summary["users"] == 8 and list(summary["metrics"]) == conditions
    split = leave_last_out(load_dataset("synthetic"))
    users = fixed_subset(split.n_users, 8, EVAL_SUBSET_SEED)
    valid = split.train_view().valid_targets[users]
    assert len(scored) == 5 and all(np.array_equal(targets, valid) for targets in scored)  # validation targets only
    assert not np.array_equal(valid, split.test_targets(users))
    truth, removed = summary["examples"]["ground-truth rationale"], summary["examples"]["target category removed"]
    assert truth[0].startswith("The user is likely to buy items in the ") and removed[0] == \
        "The user is likely to buy items in the category."
    words = len(truth[0].split())
    assert len(summary["examples"]["5 random words dropped"][0].split()) == words - 5
    assert len(summary["examples"]["5 noise words added"][0].split()) == words + 5
