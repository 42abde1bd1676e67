"""The leakage audit: every method's real training inputs hold no held-out target, and a planted one is caught."""

from __future__ import annotations

import numpy as np
import pytest

import baselines.popularity as popularity
import baselines.tiger as tiger
from baselines.popularity import Popularity
from bench import registry
from bench.audit import render, run_audit, unaudited_reason
from bench.cli import main
from bench.data import load_dataset
from bench.registry import Method, methods
from bench.split import Split, leave_last_out
from tests.test_llm import SYNTHETIC, expanded, fast_embedding  # noqa: F401 (fast_embedding: autouse)


def audit(*specs: str, dataset: str = SYNTHETIC):
    return run_audit(list(specs), dataset, "smoke")


def leak_free_user(split: Split, position: int) -> int:
    """A user whose held-out item at ``position`` (-2 validation, -1 test) is not in their training sequence."""
    return next(u for u, seq in enumerate(split.sequences) if seq[position] not in seq[:-2])


@pytest.mark.parametrize("name", sorted(methods()))
def test_every_registered_method_trains_on_no_held_out_target(name):
    report = audit(name)
    (result,) = report.methods
    assert not report.split_problems
    assert result.problem is None, result.problem
    assert all(s.status == "clean" and s.foreign_items == 0 for s in result.sets), render(report)
    assert name == "random" or sum(s.rows for s in result.sets) > 0  # random learns the catalog size only
    assert not report.failed


def test_llm_methods_show_every_stage_they_train():
    (sft, pauserec) = audit("sft", "pauserec").methods
    assert [s.name for s in sft.sets] == ["cpt corpus", "sft examples"]
    assert [s.name for s in pauserec.sets] == ["cpt corpus", "sft examples", "pause corpus", "implicit sft examples"]
    cpt = sft.sets[0]
    assert cpt.catalog_rows > 0 and cpt.users == 30  # item lines belong to no user; every user has user lines
    (no_pause_pretraining,) = audit("pauserec:pause_init=default").methods
    assert "pause corpus" not in [s.name for s in no_pause_pretraining.sets]


def test_several_sft_targets_a_user_stay_clean_and_count_every_example():
    """``sft_targets=3``: SFT and implicit SFT train on up to three (history, target) pairs a user, all of them
    inside the training sequence; the audit reads every one (one user per example)."""
    (one,) = audit("pauserec").methods
    report = audit("pauserec:sft_targets=3")
    (three,) = report.methods
    assert all(s.status == "clean" and s.foreign_items == 0 for s in three.sets), render(report)
    rows = {s.name: s.rows for s in one.sets}, {s.name: s.rows for s in three.sets}
    for stage in ("sft examples", "implicit sft examples"):
        assert rows[0][stage] < rows[1][stage] <= 3 * rows[0][stage]


@pytest.mark.parametrize("target", ["test", "validation"])
def test_a_planted_leak_names_method_input_set_and_user(monkeypatch, capsys, target):
    split = leave_last_out(load_dataset(SYNTHETIC))
    position = -1 if target == "test" else -2
    user = leak_free_user(split, position)
    planted = int(split.sequences[user][position])
    if target == "test":  # one more TIGER example: the user's test target after their history
        original = tiger.training_examples

        def leaky(data, max_items):
            users, windows, targets = original(data, max_items)
            return np.append(users, user), np.vstack([windows, windows[users == user][:1]]), np.append(targets, planted)

        monkeypatch.setattr(tiger, "training_examples", leaky)
        method, input_set = "tiger", "tiger examples"
    else:  # popularity counts the user's validation target too
        original = popularity.counted_sequences
        monkeypatch.setattr(popularity, "counted_sequences", lambda data: [
            np.append(seq, planted) if u == user else seq for u, seq in enumerate(original(data))])
        method, input_set = "pop", "popularity counts"

    assert main(["audit", "--profile", "smoke", "--dataset", SYNTHETIC, "--methods", f"random,{method}"]) == 1
    printed = capsys.readouterr().out
    assert f"FAIL {method} / {input_set}: the {target} target of user {user} (source id {split.user_ids[user]})" \
        in printed
    (_, result) = audit("random", method).methods
    (leaky_set,) = result.sets
    assert (leaky_set.test_leaks, leaky_set.valid_leaks) == (([user], []) if target == "test" else ([], [user]))


def test_the_study_cpt_corpus_is_flagged_validation_exposure_not_a_failure():
    report = audit("sft:cpt_corpus=paper")
    cpt, sft_examples = report.methods[0].sets
    assert cpt.valid_leaks and not cpt.test_leaks and "cpt_corpus=paper" in cpt.exposure
    assert cpt.status == "flagged: validation exposure (documented)" and sft_examples.status == "clean"
    assert not report.failed
    split = report.split  # every user whose validation item is not a repeat purchase is flagged
    assert set(cpt.valid_leaks) >= {u for u, seq in enumerate(split.sequences) if seq[-2] not in seq[:-2]}


class NoHook(Method):
    name = "nohook"
    family = "baseline"
    description = "a method without training_inputs"

    def fit(self, data, context):
        pass

    def recommend(self, histories, k, users):
        return np.tile(np.arange(1, k + 1), (len(histories), 1))


class RetrainedPop(Popularity):
    """Overrides fit below the class that wrote training_inputs: the inherited hook may not show its inputs."""

    def fit(self, data, context):
        super().fit(data, context)


def test_methods_without_a_current_hook_are_not_audited_and_fail(monkeypatch, capsys):
    assert "no training_inputs hook" in unaudited_reason(NoHook)
    assert "RetrainedPop.fit overrides training" in unaudited_reason(RetrainedPop)
    assert unaudited_reason(Popularity) is None
    monkeypatch.setitem(registry._METHODS, "nohook", NoHook)
    assert main(["audit", "--profile", "smoke", "--dataset", SYNTHETIC, "--methods", "pop,nohook"]) == 1
    printed = capsys.readouterr().out
    assert "NOT AUDITED" in printed and "FAIL nohook: not audited" in printed


def test_cli_exit_codes(capsys):
    smoke = ["audit", "--profile", "smoke", "--dataset", SYNTHETIC, "--methods"]
    assert main([*smoke, "pop,random,sft:cpt_corpus=paper"]) == 0
    printed = capsys.readouterr().out
    assert "popularity counts" in printed and "audit passed" in printed and "flagged sft:cpt_corpus=paper" in printed
    assert main([*smoke, "nosuchmethod"]) == 2


def test_a_split_whose_test_history_runs_past_the_validation_item_fails(monkeypatch):
    monkeypatch.setattr(Split, "test_histories", lambda self, users=None: [
        seq for seq in (self.sequences if users is None else [self.sequences[u] for u in users])])
    report = audit("pop")
    assert report.failed and "the test history is not the sequence up to just before the test item" in \
        report.split_problems[0]


def test_sid_runs_in_token_ids_name_their_items():
    _, sids, _, tokenizer, vocab = expanded()
    ids = tokenizer(f"a {sids.sid_string(3)} b {sids.sid_string(1)}{sids.sid_string(3)}",
                    add_special_tokens=False)["input_ids"]
    assert vocab.items_in(ids) == [3, 1, 3]
    assert vocab.items_in(ids[:-2]) == [3, 1]  # a SID cut off by truncation names no item
    with pytest.raises(ValueError, match="outside"):
        vocab.items_in([int(vocab.code_ids[0]), *ids])
    with pytest.raises(ValueError, match="not followed by an item's SID"):
        vocab.items_in([vocab.begin_id, vocab.end_id, *ids])


@pytest.mark.real  # in CI (about a minute): the audit the issue promises on real data, every method
def test_ml100k_every_method_trains_on_no_held_out_target():
    """Every registered method's smoke inputs on real data (SIDs from the stand-in encoder: leakage does not
    depend on the embedding)."""
    report = audit(*sorted(methods()), dataset="ml-100k")
    assert not report.failed, render(report)
    rows = {(m.spec, s.name): s.rows for m in report.methods for s in m.sets}
    assert rows[("sasrec", "recbole train rows")] == sum(len(seq) - 3 for seq in report.split.sequences)
