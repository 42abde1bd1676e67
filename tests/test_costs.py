"""Costs: CPU and GPU results side by side, the costs tables, MFU and throughput bookkeeping, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import costs, leaderboard, provenance
from bench.cli import main
from bench.leaderboard import costs_table, hardware_label, llm_costs_table, render_dataset_tables
from bench.provenance import git_commit
from bench.results import ResultKey, ResultStore, read_rankings
from methods.llm.stages import Example, Examples, PaddingCollator, TokenCounter, throughput_report


def as_gpu_run(folder: Path, processes: int = 3) -> None:
    """Rewrites a CPU smoke run's records as a GPU machine would have written them (no GPU here)."""
    store = ResultStore(folder)
    records = store.load()
    for record in records:
        record.pop("device", None)  # as records from before the field: the hardware says it
        record["hardware"].update(gpus=["NVIDIA H100 80GB HBM3"], label="1x NVIDIA H100 80GB HBM3",
                                  gpu_processes_max=processes)
        record["train"]["gpu_hours"] = 0.5
        record["inference"]["throughput"] = {"users_per_s": 1234.0, "batch_size": 64, "by_batch_size": {}}
    store.path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_gpu_run_sits_beside_the_cpu_run_never_over_it(tmp_path):
    for name in ("cpu", "gpu"):
        assert main(["run", "--profile", "smoke", "--methods", "pop", "--out", str(tmp_path / name)]) == 0
    as_gpu_run(tmp_path / "gpu")
    gpu_ranking = read_rankings(tmp_path / "gpu" / ResultStore(tmp_path / "gpu").load()[0]["rankings"])
    cpu_rankings_file = tmp_path / "cpu" / ResultStore(tmp_path / "cpu").load()[0]["rankings"]
    cpu_bytes = cpu_rankings_file.read_bytes()

    assert main(["merge", str(tmp_path / "gpu"), "--out", str(tmp_path / "cpu")]) == 0
    records = ResultStore(tmp_path / "cpu").load()
    assert sorted(r.get("device", "cpu") for r in records) == ["cpu", "gpu"]
    gpu = next(r for r in records if r.get("device") == "gpu")
    assert gpu["id"].endswith("--gpu") and ResultKey.of(gpu).device == "gpu"
    assert cpu_rankings_file.read_bytes() == cpu_bytes  # the CPU run's rankings were not overwritten
    assert read_rankings(tmp_path / "cpu" / gpu["rankings"]) == gpu_ranking
    # merging again replaces the GPU record, it does not add a third
    assert main(["merge", str(tmp_path / "gpu"), "--out", str(tmp_path / "cpu")]) == 0
    assert len(ResultStore(tmp_path / "cpu").load()) == 2

    table = render_dataset_tables(records)
    assert table.count("| pop") == 2  # two rows: one per device
    assert "1x NVIDIA H100 80GB HBM3, shared by 3 runs" in table
    assert "1,234 @ 64" in costs_table(records)


def test_the_llm_costs_table_puts_methods_side_by_side_by_stage():
    def run(method: str, stages: list[tuple[str, float]], gpus: int) -> dict:
        return {"method": method, "family": "llm", "dataset": "ml-100k", "profile": "small", "seed": 0,
                "git_commit": f"{gpus}{method}" * 8,
                "hardware": {"label": "1x GPU" if gpus else "CPU 2 cores", "gpus": ["GPU"] * gpus},
                "stages": [{"name": n, "wall_s": h * 3600, "gpu_hours": h * gpus, "gpus": gpus} for n, h in stages],
                "train": {"gpu_hours": sum(h for _, h in stages) * gpus, "wall_s": 1.0},
                "inference": {"ms_per_user": 2.0}}

    text = llm_costs_table([run("sft", [("cpt", 0.25), ("sft", 0.125)], 1),
                            run("pauserec", [("cpt", 0.25), ("sft", 0.125), ("pause", 0.5)], 1),
                            run("sft", [("cpt", 0.01)], 0), {"family": "id-based"}])
    sections = {section.split("\n")[0]: section for section in text.split("### ")[1:]}
    assert set(sections) == {"ml-100k, profile small, 1x GPU", "ml-100k, profile small, CPU 2 cores"}
    gpu_section = sections["ml-100k, profile small, 1x GPU"]
    pauserec_row = next(line for line in gpu_section.splitlines() if line.startswith("| pauserec"))
    assert "0.5000 GPU-h" in pauserec_row and "0.8750" in pauserec_row
    assert pauserec_row.rstrip(" |").endswith("| 1pauser")  # the run's commit, shortened
    sft_row = next(line for line in gpu_section.splitlines() if line.startswith("| sft"))
    assert "0.5000" not in sft_row  # no pause stage
    assert "36 s" in sections["ml-100k, profile small, CPU 2 cores"]  # a CPU run's stage cost is its wall time


def test_token_counter_and_throughput_report_on_a_cpu():
    counter = TokenCounter(PaddingCollator(pad_token_id=0))
    batch = counter([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, Example([8], [8])])
    assert batch["input_ids"].shape == (2, 3)
    assert (counter.real, counter.padded, counter.squared_lengths) == (4, 6, 3**2 + 1**2)
    model = torch.nn.Linear(4, 4)
    model.num_parameters = lambda: 20
    model.bias.requires_grad_(False)
    report = throughput_report(model, counter, seconds=2.0)
    assert report["tokens_per_s"] == 2.0
    assert report["padding_share"] == pytest.approx(1 / 3)
    assert report["flops_per_token"] == 4 * 20 + 2 * 16  # forward + activation gradients + trainable weights
    assert report["mfu"] is None and report["bf16_matmul_tflops"] is None  # no GPU here
    assert report["attention_flops"] == 0  # a model without a transformers config: no attention to count


def test_mfu_with_attention_counts_the_causal_score_and_value_products(monkeypatch):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from methods.llm.stages import attention_shape

    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = Qwen3ForCausalLM(config)
    assert attention_shape(model) == (3, 4 * 16)  # query heads x head width, not hidden size or KV heads
    counter = TokenCounter(PaddingCollator(pad_token_id=0))
    counter([Example([1] * 10, [1] * 10), Example([2] * 4, [2] * 4)])
    monkeypatch.setattr(costs, "bf16_matmul_tflops", lambda: 1e-6)  # 1 MFLOP/s
    report = throughput_report(model, counter, seconds=1.0)
    assert report["attention_flops"] == 6 * 3 * 64 * (10**2 + 4**2)
    assert report["mfu_with_attention"] - report["mfu"] == pytest.approx(report["attention_flops"] / 1e6)


def test_examples_are_mappings_for_the_length_grouped_sampler():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    examples = Examples([Example([1] * n, [1] * n) for n in (3, 9, 1, 7, 5, 2, 8, 4)])
    sampler = LengthGroupedSampler(2, dataset=examples)
    assert sorted(sampler) == list(range(8))
    assert sampler.lengths == [3, 9, 1, 7, 5, 2, 8, 4]


def test_mfu_divides_model_flops_by_the_measured_matmul_rate(monkeypatch):
    monkeypatch.setattr(costs, "bf16_matmul_tflops", lambda: 100.0)
    assert costs.model_flops_utilisation(tokens=1e6, flops_per_token=6e8, seconds=20.0) == pytest.approx(0.3)
    assert costs.model_flops_utilisation(1e6, 6e8, 0.0) is None
    assert costs.model_flops_utilisation(1e6, 6e8, 20.0, extra_flops=6e14) == pytest.approx(0.6)


def test_best_throughput_runs_nothing_without_a_gpu():
    calls = []
    result = costs.best_throughput(lambda window, size: calls.append(size), 500)
    assert result["users_per_s"] is None and not calls


class FakeDevice:
    """A GPU of ``total`` bytes for ``best_throughput`` (none here): decoding ``size`` users takes ``a_user`` bytes
    each at its peak, and a batch that does not fit raises torch's out-of-memory error."""

    def __init__(self, total: float = 100.0, a_user: float = 1.0, used_by_others: float = 0.0) -> None:
        self.total, self.a_user, self.used_by_others = total, a_user, used_by_others
        self.allocated = 10.0  # the model's weights
        self.peak = self.allocated
        self.cuda = self  # fake_torch.cuda.<function>

    def is_available(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def mem_get_info(self) -> tuple[float, float]:
        return self.total - self.used_by_others - self.allocated, self.total

    def memory_reserved(self) -> float:
        return self.allocated

    def memory_allocated(self) -> float:
        return self.allocated

    def max_memory_allocated(self) -> float:
        return self.peak

    def reset_peak_memory_stats(self) -> None:
        self.peak = self.allocated

    def decode(self, window: slice, size: int) -> None:
        """``run_batch`` for the probe."""
        need = self.a_user * size
        if self.allocated + need > self.total - self.used_by_others:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.61 GiB. GPU 0 has a total "
                                         "capacity of 139.80 GiB of which 565.94 MiB is free.")
        self.peak = max(self.peak, self.allocated + need)


def on(monkeypatch, device: FakeDevice) -> FakeDevice:
    monkeypatch.setattr(costs, "gpu_count", lambda: 1)
    monkeypatch.setattr(costs, "_torch", lambda: device)
    return device


def test_best_throughput_picks_the_fastest_batch_size(monkeypatch):
    device = on(monkeypatch, FakeDevice(total=1000.0))
    clock = iter(range(1000))
    monkeypatch.setattr(costs.time, "perf_counter", lambda: float(next(clock)))
    sizes = []

    def decode(window: slice, size: int) -> None:
        sizes.append((size, window.stop))
        device.decode(window, size)

    result = costs.best_throughput(decode, 100, (16, 64, 128))
    # each size decodes 2 x size users (at most n) in one clock tick; sizes beyond n users are not tried
    assert sizes == [(16, 32), (64, 100)]
    assert (result["batch_size"], result["users_per_s"]) == (64, 100.0)
    assert result["out_of_memory_at"] is None and result["too_large_at"] is None


def test_best_throughput_stops_before_a_size_its_memory_a_user_says_would_not_fit(monkeypatch):
    # alone: 16 users take 16 bytes of 90 free, 64 users (64 bytes) stay under 80% of them, 128 would not
    device = on(monkeypatch, FakeDevice(total=100.0, a_user=1.0))
    tried = []
    result = costs.best_throughput(lambda window, size: tried.append(size) or device.decode(window, size), 500,
                                   (16, 64, 128))
    assert tried == [16, 64] and result["too_large_at"] == 128 and result["out_of_memory_at"] is None
    assert result["peak_gpu_mem_gb_by_batch_size"] == {16: 26 / 2**30, 64: 74 / 2**30}  # weights + users
    record = {"inference": {"throughput": result}}
    assert leaderboard._throughput(record).endswith("(128 would not fit)")
    # beside other runs holding half the GPU: 64 users would take most of what is left, so not even 64 is tried
    shared = on(monkeypatch, FakeDevice(total=100.0, a_user=1.0, used_by_others=50.0))
    tried.clear()
    result = costs.best_throughput(lambda window, size: tried.append(size) or shared.decode(window, size), 500,
                                   (16, 64, 128))
    assert tried == [16] and result["batch_size"] == 16 and result["too_large_at"] == 64


def test_best_throughput_keeps_the_sizes_that_fit_when_a_bigger_one_runs_out_of_memory(monkeypatch):
    # a first size that takes little a user, then a size whose memory grows faster than its users
    device = on(monkeypatch, FakeDevice(total=100.0, a_user=0.1))

    def decode(window: slice, size: int) -> None:
        device.a_user = 0.1 if size == 16 else 10.0
        device.decode(window, size)

    result = costs.best_throughput(decode, 500, (16, 64, 128))
    assert result["batch_size"] == 16 and result["users_per_s"] > 0
    assert list(result["by_batch_size"]) == [16] and result["out_of_memory_at"] == 64
    record = {"inference": {"throughput": result}}
    assert leaderboard._throughput(record).endswith("@ 16 (out of memory @ 64)")

    nothing_fits = costs.best_throughput(on(monkeypatch, FakeDevice(total=100.0, a_user=100.0)).decode, 500, (16, 64))
    assert nothing_fits["users_per_s"] is None and nothing_fits["out_of_memory_at"] == 16
    assert leaderboard._throughput({"inference": {"throughput": nothing_fits}}) == "out of memory @ 16"


def test_best_throughput_raises_what_is_not_out_of_memory(monkeypatch):
    on(monkeypatch, FakeDevice())

    def broken(window: slice, size: int) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        costs.best_throughput(broken, 500, (16, 64))


def test_gpu_sharing_is_unknown_without_a_gpu():
    with costs.GpuSharing(interval=0.01) as sharing:
        pass
    assert sharing.max_processes is None


def test_a_shipped_commit_wins_over_a_stale_git_folder(monkeypatch):
    monkeypatch.setenv("GRBENCH_GIT_COMMIT", "abc123")
    assert git_commit() == "abc123"
    monkeypatch.delenv("GRBENCH_GIT_COMMIT")
    assert git_commit() != "abc123"


def test_a_record_names_the_commit_its_process_started_from(tmp_path, monkeypatch):
    """A commit made while a run trains (hours on a CPU) is not the code that ran: the record names the commit at
    the run's start, however late it is written."""
    commits = iter(["started-here"])
    monkeypatch.setattr(provenance, "git_commit", lambda: next(commits, "committed-while-training"))
    provenance.process_commit.cache_clear()
    try:
        assert main(["run", "--profile", "smoke", "--methods", "pop,random", "--datasets", "synthetic",
                     "--out", str(tmp_path)]) == 0
        assert provenance.git_commit() == "committed-while-training"
    finally:
        provenance.process_commit.cache_clear()
    assert [record["git_commit"] for record in ResultStore(tmp_path).load()] == ["started-here"] * 2


def test_cpu_labels_count_cores_in_the_right_number_even_for_stored_records():
    assert costs.cpu_label(1) == "CPU 1 core" and costs.cpu_label(2) == "CPU 2 cores"
    stored_before_the_fix = {"hardware": {"label": "CPU 1 cores", "cpu_cores": 1, "gpus": []}}
    assert hardware_label(stored_before_the_fix) == "CPU 1 core"
    one_thread = {"hardware": {"label": "CPU 1 core", "cpu_cores": 2, "torch_threads": 1, "gpus": []}}
    assert hardware_label(one_thread) == "CPU 1 core"  # OMP_NUM_THREADS=1 on 2 cores computes on one
    gpu = {"hardware": {"label": "1x NVIDIA H100", "cpu_cores": 16, "gpus": ["NVIDIA H100"], "gpu_processes_max": 2}}
    assert hardware_label(gpu) == "1x NVIDIA H100, shared by 2 runs"


def test_a_cpu_run_is_labelled_with_the_cores_torch_computes_on(monkeypatch):
    monkeypatch.setattr(costs.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert costs.hardware()["label"] == "CPU 1 core" and costs.hardware()["cpu_cores"] == 2
        torch.set_num_threads(2)
        assert costs.hardware()["label"] == "CPU 2 cores" and costs.hardware()["torch_threads"] == 2
    finally:
        torch.set_num_threads(threads)


def test_a_shared_gpu_takes_the_matmul_rate_measured_alone_from_the_environment(monkeypatch):
    """Runs sharing a GPU would each measure a share of it; the rate set by scripts/device/run.sh serves them all."""
    from types import SimpleNamespace

    from bench.errors import GRBenchError

    fake_torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: True))
    monkeypatch.setattr(costs, "_torch", lambda: fake_torch)  # a measurement would fail on this fake: none is made
    monkeypatch.setenv(costs.BF16_RATE_VARIABLE, "790.5")
    costs.bf16_matmul_tflops.cache_clear()
    try:
        assert costs.bf16_matmul_tflops() == 790.5
        costs.bf16_matmul_tflops.cache_clear()
        monkeypatch.setenv(costs.BF16_RATE_VARIABLE, "fast")
        with pytest.raises(GRBenchError, match="GRBENCH_BF16_MATMUL_TFLOPS='fast': expected"):
            costs.bf16_matmul_tflops()
    finally:
        costs.bf16_matmul_tflops.cache_clear()


def test_a_grpo_stage_shows_its_reward_in_the_costs_table():
    extra = {"mean_reward": 0.0125, "first_reward": 0.0, "last_reward": 0.05, "mean_frac_reward_zero_std": 0.9,
             "prompts_with_reward_spread": 0.1, "completions_clipped": 0.25, "reward_never_varied": False}
    stage = {"name": "grpo", "wall_s": 60.0, "gpu_hours": 0.0167, "extra": extra}
    assert leaderboard._stage_text(stage) == (
        "grpo 60.0s/0.0167 GPU-h (mean reward 0.013 (first step 0.000, last 0.050), 10% of prompts with reward "
        "spread, 25% of completions cut at the length limit)")
    assert "reward" not in leaderboard._stage_text({**stage, "extra": {"mfu": 0.02}})
    never = {**extra, "mean_reward": 0.0, "last_reward": 0.0, "mean_frac_reward_zero_std": 1.0,
             "prompts_with_reward_spread": 0.0, "reward_never_varied": True}
    assert leaderboard._stage_text({**stage, "extra": never}).startswith(
        "grpo 60.0s/0.0167 GPU-h (REWARD NEVER VARIED: no advantage to learn from, mean reward 0.000")


def test_a_grpo_record_from_before_the_spread_was_kept_shows_what_it_holds():
    old = {"name": "grpo", "wall_s": 40.9, "gpu_hours": 0.0,
           "extra": {"cached": False, "first_reward": 0.0, "last_reward": 0.0, "mean_frac_reward_zero_std": 1.0,
                     "mean_reward": 0.0}}  # results/results.jsonl, onerec_think quick seed 1
    assert leaderboard._stage_text(old) == (
        "grpo 40.9s/0.0000 GPU-h (REWARD NEVER VARIED: no advantage to learn from, mean reward 0.000 (first step "
        "0.000, last 0.000), 0% of prompts with reward spread)")
    spread = {**old, "extra": {**old["extra"], "mean_frac_reward_zero_std": 0.875, "mean_reward": 0.03125}}
    assert leaderboard._stage_text(spread).endswith("reward 0.031 (first step 0.000, last 0.000), 12% of prompts with "
                                                    "reward spread)")


def test_a_stage_shows_its_mfu_with_attention_where_its_record_has_it():
    stage = {"name": "sft", "wall_s": 51.1, "gpu_hours": 0.0142}
    assert leaderboard._stage_text({**stage, "extra": {"mfu": 0.054}}).endswith("(MFU 5.4%)")  # an older record
    text = leaderboard._stage_text({**stage, "extra": {"mfu": 0.054, "mfu_with_attention": 0.066}})
    assert text.endswith("(MFU 5.4%, 6.6% with attention)")
