from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bench.cli import main
from bench.compare import compare_records, comparison_table, study_comparisons, study_pairs, trained_parts
from bench.errors import GRBenchError
from bench.results import ResultStore


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "--profile", "smoke", "--methods", "pop,random", "--seeds", "0,1", "--out", str(out)]) == 0
    return out, ResultStore(out).load()


def of(records, method):
    return [r for r in records if r["method"] == method]


def test_per_seed_differences_are_the_stored_means_and_the_pooled_one_their_mean(two_seeds):
    out, records = two_seeds
    comparison = compare_records(out, of(records, "pop"), of(records, "random"))
    assert comparison.a_seeds == comparison.b_seeds == [0, 1] and comparison.users == records[0]["eval_users"]
    for metric in ("hit@5", "hit@10", "ndcg@5", "ndcg@10"):
        stored = [next(r for r in of(records, m) if r["seed"] == seed)["metrics"][metric]["mean"]
                  for seed in (0, 1) for m in ("pop", "random")]
        assert comparison.per_seed[metric] == pytest.approx([stored[0] - stored[1], stored[2] - stored[3]])
        pooled = comparison.pooled[metric]
        assert pooled.mean_difference == pytest.approx(np.mean(comparison.per_seed[metric]))
        assert pooled.ci_low <= pooled.mean_difference <= pooled.ci_high
    itself = compare_records(out, of(records, "pop"), of(records, "pop"))
    assert itself.pooled["ndcg@10"].mean_difference == 0 and itself.pooled["ndcg@10"].p_value == 1.0


def test_unmatched_seeds_set_each_seed_of_a_against_the_mean_of_b(two_seeds):
    out, records = two_seeds
    pop, random = of(records, "pop"), of(records, "random")
    comparison = compare_records(out, pop, [r for r in random if r["seed"] == 1])
    assert not comparison.matched and (comparison.a_seeds, comparison.b_seeds) == ([0, 1], [1])
    assert "A 0, 1; B 1 (each A seed against B's mean)" in comparison_table([comparison])
    fewer = compare_records(out, [r for r in pop if r["seed"] == 0], random)
    for metric in ("hit@10", "ndcg@10"):
        mean = {(r["method"], r["seed"]): r["metrics"][metric]["mean"] for r in records}
        assert comparison.per_seed[metric] == pytest.approx(
            [mean["pop", 0] - mean["random", 1], mean["pop", 1] - mean["random", 1]])
        # over seeds: every seed of each side averaged, not only the seeds both ran
        assert fewer.pooled[metric].mean_difference == pytest.approx(
            mean["pop", 0] - (mean["random", 0] + mean["random", 1]) / 2)
        assert fewer.per_seed[metric] == pytest.approx([fewer.pooled[metric].mean_difference])


def with_parts(record, sids=None, stages=()):
    """The record as if its model were built from this SID table and these cached stages."""
    report = {"sids": {"fingerprint": sids} if sids else {},
              "stages": {name: {"folder": f"/any/cache/llm-stages/{name}"} for name in stages}}
    return {**record, "report": report}


def test_trained_parts_are_the_sid_table_and_the_cached_stages_by_folder_name(two_seeds):
    _, records = two_seeds
    assert trained_parts(records[0]) == set()  # popularity is built from nothing trained
    record = with_parts(records[0], sids="abc", stages=("cpt-1", "sft-2"))
    assert trained_parts(record) == {"sids-abc", "cpt-1", "sft-2"}


def test_seeds_built_from_shared_trained_parts_are_paired_seed_with_seed_and_the_rest_left_out(two_seeds):
    out, records = two_seeds
    mean = {(r["method"], r["seed"]): r["metrics"]["ndcg@10"]["mean"] for r in records}
    # an ablation (A, seed 0 only) built from the SFT stage of the default's seed 0 (B, seeds 0 and 1)
    ablation = [with_parts(r, stages=("sft-0",)) for r in of(records, "pop") if r["seed"] == 0]
    default = [with_parts(r, stages=(f"sft-{r['seed']}",)) for r in of(records, "random")]
    comparison = compare_records(out, ablation, default)
    assert comparison.matched and (comparison.a_seeds, comparison.b_left_out, comparison.a_left_out) == ([0], [1], [])
    assert comparison.pooled["ndcg@10"].mean_difference == pytest.approx(mean["pop", 0] - mean["random", 0])
    assert "0 (built from shared trained parts; left out: B 1)" in comparison_table([comparison])
    # the same seeds without a shared part: against B's mean over both seeds, as before
    unrelated = compare_records(out, [with_parts(r, stages=("sft-9",)) for r in ablation], default)
    assert not unrelated.matched and unrelated.b_left_out == []
    assert unrelated.pooled["ndcg@10"].mean_difference == pytest.approx(
        mean["pop", 0] - (mean["random", 0] + mean["random", 1]) / 2)


def test_only_records_of_one_split_are_paired(two_seeds):
    out, records = two_seeds
    other_split = [{**r, "split_fingerprint": "0" * 16} for r in of(records, "random")]
    with pytest.raises(GRBenchError, match="different splits, profiles or devices"):
        compare_records(out, of(records, "pop"), other_split)
    with pytest.raises(GRBenchError, match="nothing to pair: A has 2 records, B 0"):
        compare_records(out, of(records, "pop"), [])


def test_the_study_pairs_and_the_pause_ablations_against_pauserec(two_seeds):
    assert study_pairs(["sft", "pauserec", "pauserec:pauses=1", "onerec_think", "pop"]) == [
        ("pauserec", "sft"), ("pauserec", "onerec_think"), ("pauserec:pauses=1", "pauserec")]
    assert study_pairs(["sasrec", "rearec", "rearec:reasoning_steps=0"]) == [
        ("rearec", "sasrec"), ("rearec", "rearec:reasoning_steps=0")]
    assert study_pairs(["sasrec", "rearec", "rearec:scheme=prl"]) == [
        ("rearec", "sasrec"), ("rearec:scheme=prl", "sasrec"), ("rearec:scheme=prl", "rearec")]
    assert study_pairs(["sft", "onerec_think"]) == []
    out, records = two_seeds
    renamed = [{**r, "method": "pauserec"} for r in of(records, "pop")] + \
        [{**r, "method": "sft"} for r in of(records, "random")]
    (comparison,) = study_comparisons(out, renamed)
    assert (comparison.a, comparison.b, comparison.a_seeds, comparison.matched) == ("pauserec", "sft", [0, 1], True)
    table = comparison_table([comparison])
    won = sum(d > 0 for d in comparison.per_seed["ndcg@10"])
    pooled = comparison.pooled["ndcg@10"].mean_difference
    assert "| pauserec - sft |" in table and f"| ndcg@10  | {pooled:+.4f}" in table
    assert f"| {won} of 2 " in table


def test_compare_command_and_comparisons_page(two_seeds, capsys):
    out, _ = two_seeds
    assert main(["compare", "pop", "random", "--dataset", "synthetic", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| pop - random |" in printed and printed.count("| synthetic ") == 4
    assert main(["compare", "pop", "hstu", "--dataset", "synthetic", "--out", str(out)]) == 2
    assert "no results of 'hstu' on synthetic" in capsys.readouterr().err
    assert main(["leaderboard", "--out", str(out)]) == 0
    page = (out / "leaderboards" / "comparisons.md").read_text()
    assert "No pair of the study has results on one split, profile and device yet." in page
    assert "[comparisons](comparisons.md)" in (out / "leaderboards" / "index.md").read_text()


def test_compare_takes_a_sequence_file_dataset_as_run_was_given_it(two_seeds, tmp_path, capsys):
    out, records = two_seeds
    copy = tmp_path / "results"
    shutil.copytree(out, copy)
    (copy / "results.jsonl").write_text("".join(json.dumps({**r, "dataset": "seq:Tiny"}) + "\n" for r in records))
    assert main(["compare", "pop", "random", "--dataset", "seq:/elsewhere/Tiny.txt", "--out", str(copy)]) == 0
    assert "| seq:Tiny " in capsys.readouterr().out
    assert main(["compare", "pop", "random", "--dataset", "seq:/elsewhere/Other.txt", "--out", str(copy)]) == 2
    assert "no results of dataset 'seq:Other'" in capsys.readouterr().err


def test_the_index_names_the_best_row_by_its_seed_mean_not_its_luckiest_seed(two_seeds, tmp_path):
    from bench.leaderboard import write_leaderboards

    out, records = two_seeds

    def scored(record, method, ndcg):
        metrics = {**record["metrics"], "ndcg@10": {**record["metrics"]["ndcg@10"], "mean": ndcg}}
        return {**record, "method": method, "metrics": metrics}

    pop, random = of(records, "pop"), of(records, "random")
    lucky = [scored(pop[0], "lucky", 0.9), scored(pop[1], "lucky", 0.1)]  # one lucky seed, mean 0.5
    steady = [scored(random[0], "steady", 0.6)]
    write_leaderboards(lucky + steady, tmp_path, out)
    assert "best NDCG@10 0.6000 (steady, smoke)" in (tmp_path / "index.md").read_text()
