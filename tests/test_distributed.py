"""Multi-process cells (bench.distributed): two CPU processes (gloo) under the repository's accelerate configuration,
GPU-hours over every device of every node, the configurations themselves, and a backbone checked before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import costs, distributed
from bench.cli import main
from bench.distributed import Launch
from bench.results import ResultStore

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "scripts" / "accelerate"
DDP_CONFIG = CONFIGS / "one-node-8gpu.yaml"
ZERO2_CONFIG = CONFIGS / "one-node-8gpu-zero2.yaml"


def test_two_processes_train_sft_data_parallel_and_sasrec_once(tmp_path):
    """`accelerate launch` with the repository's 8-GPU configuration, cut to 2 CPU processes: sft trains on both
    ranks (its stages are keyed by 2 processes) and ranks as one process does, up to rounding; sasrec trains on rank
    0 alone; each record is stored once, by rank 0, and says that two processes ran it."""
    launched, alone = tmp_path / "launched", tmp_path / "alone"
    run = ["run", "--profile", "smoke", "--methods", "sft,sasrec"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
                             "--num_processes", "2", "-m", "bench", *run, "--out", str(launched)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {r["method"]: r for r in ResultStore(launched).load()}
    assert len(ResultStore(launched).load()) == 2 and set(records) == {"sft", "sasrec"}
    assert records["sft"]["launch"]["trained_by_ranks"] == [0, 1]
    assert records["sasrec"]["launch"]["trained_by_ranks"] == [0]
    for record in records.values():
        assert record["launch"]["processes"] == 2 and record["launch"]["devices"] == 2
        assert record["hardware"]["processes"] == 2 and "2 processes" in record["hardware"]["label"]
    stages = [json.loads(path.read_text()) for path in Path(os.environ["GRBENCH_CACHE"]).rglob("stage.json")]
    assert sorted(stage["key"]["stage"] for stage in stages) == ["cpt", "sft"]
    assert all(stage["report"]["processes"] == 2 for stage in stages)  # Trainer's own count: data-parallel

    assert main([*run, "--out", str(alone)]) == 0
    for record in ResultStore(alone).load():
        one_process = {name: m["mean"] for name, m in record["metrics"].items()}
        two_processes = {name: m["mean"] for name, m in records[record["method"]]["metrics"].items()}
        # up to rounding: a summed gradient's order may flip a tie in two of the 200 test users' rankings
        assert two_processes == pytest.approx(one_process, abs=2 / record["eval_users"]), record["method"]


def test_gpu_hours_count_every_device_of_every_node(monkeypatch):
    """A launch of 16 processes on 2 nodes of 8 GPUs: a stage of this rank costs 16 GPUs' hours, and the hardware says
    16 GPUs, 16 processes, 2 nodes (each process sees only its own node's GPUs)."""
    launch = Launch(processes=16, nodes=2, gpus=("NVIDIA H100",) * 16)
    monkeypatch.setattr(distributed, "launch", lambda: launch)
    assert costs.devices_in_use() == 16
    meter = costs.CostMeter()
    with meter.stage("train") as stage:
        pass
    assert stage.gpus == 16 and stage.gpu_hours == pytest.approx(stage.wall_s * 16 / 3600)
    machine = costs.hardware()
    assert machine["label"] == "16x NVIDIA H100, 16 processes on 2 nodes"
    assert (machine["processes"], machine["nodes"], len(machine["gpus"])) == (16, 2, 16)


def test_cpu_processes_count_the_cores_they_compute_on():
    machine = {"cpu_cores": 16, "torch_threads": 1, "processes": 4, "nodes": 1}
    assert costs.computing_cores(machine) == 4
    assert costs.computing_cores({"cpu_cores": 2, "torch_threads": 2, "processes": 8, "nodes": 1}) == 2
    assert costs.computing_cores({"cpu_cores": 2, "torch_threads": 1}) == 1  # one process, as records always had


def test_the_repository_accelerate_configurations_load():
    """Read by accelerate's own loader: plain data parallelism, and DeepSpeed ZeRO-2 (weights whole on every GPU, so
    that rank 0 ranks and saves the trained model), both one node of 8 GPUs."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    ddp, zero2 = load_config_from_file(str(DDP_CONFIG)), load_config_from_file(str(ZERO2_CONFIG))
    assert (ddp.distributed_type, ddp.num_processes, ddp.num_machines) == (DistributedType.MULTI_GPU, 8, 1)
    assert (zero2.distributed_type, zero2.num_processes) == (DistributedType.DEEPSPEED, 8)
    assert zero2.deepspeed_config["zero_stage"] == 2 and zero2.deepspeed_config["offload_param_device"] == "none"


@pytest.mark.parametrize("launcher", ["inline", "local"])
def test_a_backbone_that_cannot_be_loaded_fails_before_any_work(tmp_path, capsys, launcher):
    """No SIDs built, no item embedded, no job submitted: the run stops at once and names the backbone."""
    empty = tmp_path / "no-model"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["run", "--profile", "smoke", "--methods", f"pop,sft:backbone={empty}", "--out", str(out),
                 "--launcher", launcher]) == 2
    assert f"cannot load backbone '{empty}'" in capsys.readouterr().err
    cache = Path(os.environ["GRBENCH_CACHE"])
    assert not [path for path in cache.rglob("*") if path.is_file()]
    assert not out.exists()  # not even pop's record, which came first, nor a job table


def test_the_paper_profile_offline_without_its_backbone_fails_before_any_work(tmp_path):
    """The case that cost 55 s of embedding and RQ-VAE training before: `--profile paper` with no network and no
    cached Qwen3-1.7B stops at the check, says how to get the model, and leaves nothing in the cache."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "GRBENCH_CACHE": str(cache)}
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--profile", "paper", "--methods", "sft",
                             "--datasets", "synthetic", "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "cannot load backbone 'Qwen/Qwen3-1.7B'" in result.stderr and "hf download Qwen/Qwen3-1.7B" in result.stderr
    assert not [path for path in cache.rglob("*") if path.is_file()] and not out.exists()


@pytest.mark.parametrize("encoder", ["empty folder", "/no/such/encoder"])
def test_a_sentence_encoder_that_cannot_be_loaded_fails_before_any_work(tmp_path, capsys, encoder):
    """TIGER's text SIDs: an encoder that is neither the packaged one, a model folder, nor found on the hub stops the
    run before any work, naming it; SIDs that do not embed text do not need it."""
    from baselines.tiger import Tiger

    if encoder == "empty folder":
        encoder = str(tmp_path / "no-encoder")
        Path(encoder).mkdir()
    out = tmp_path / "out"
    assert main(["run", "--profile", "smoke", "--methods", f"pop,tiger:sid_encoder={encoder}", "--out", str(out)]) == 2
    assert f"cannot load sentence encoder '{encoder}'" in capsys.readouterr().err
    assert not [path for path in Path(os.environ["GRBENCH_CACHE"]).rglob("*") if path.is_file()]
    assert not out.exists()
    settings = Tiger.profiles["smoke"]
    Tiger.check_available({**settings, "sid_source": "collaborative", "sid_encoder": encoder})
    Tiger.check_available(settings)  # the packaged encoder
