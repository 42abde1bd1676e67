from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.compat import (
    SMOLLM2_GGUF,
    attention_without_cudnn,
    import_recbole,
    package_dir,
    restore_numpy_aliases,
    smollm2_gguf,
)
from bench.errors import GRBenchError


def test_recbole_imports_under_numpy_2():
    restore_numpy_aliases()
    assert np.float_ is np.float64
    config = import_recbole("recbole.config")
    assert hasattr(config, "Config")


def test_training_a_recbole_model_leaves_anomaly_detection_off(tmp_path):
    """RecBole's sine.py turns anomaly detection on when its models are imported (by RecBole's Config among
    others), which slows every later backward pass; the adapter's path through RecBole must leave it off. In a
    fresh interpreter: a model package imported once (by another test) never runs its top again."""
    script = ("import sys, torch\n"
              "from pathlib import Path\n"
              "from bench.data import load_dataset\n"
              "from bench.registry import RunContext, methods\n"
              "from bench.split import leave_last_out\n"
              "method = methods()['sasrec']\n"
              f"context = RunContext(seed=0, profile='smoke', device='cpu', cache_dir=Path({str(tmp_path)!r}))\n"
              "method(method.settings_for('smoke', {'epochs': '1'}), context).fit(\n"
              "    leave_last_out(load_dataset('synthetic')).train_view(), context)\n"
              "print('recbole.model.sequential_recommender.sine' in sys.modules, torch.is_anomaly_enabled())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.split()[-2:] == ["True", "False"]  # the module that sets it ran; the mode is off


def test_missing_package_is_a_clear_error():
    with pytest.raises(GRBenchError, match="package 'no_such_pkg_grb' is not installed"):
        package_dir("no_such_pkg_grb")


@pytest.mark.real
def test_smollm2_gguf_is_found_without_importing_its_dependencies():
    path = smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


def test_a_carried_smollm2_gguf_is_found_by_its_variable_and_a_wrong_one_is_named(tmp_path, monkeypatch):
    carried = tmp_path / SMOLLM2_GGUF
    carried.write_bytes(b"GGUF")
    monkeypatch.setenv("GRBENCH_SMOLLM2_GGUF", str(carried))
    assert smollm2_gguf() == carried
    monkeypatch.setenv("GRBENCH_SMOLLM2_GGUF", str(tmp_path / "other.gguf"))
    with pytest.raises(GRBenchError, match="GRBENCH_SMOLLM2_GGUF=.*other.gguf: expected an existing file"):
        smollm2_gguf()


def test_attention_without_cudnn_leaves_the_other_kernels_and_restores_the_flags():
    before = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
              torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    with attention_without_cudnn():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
            torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()) == before


def _masked_attention_query_gradient(width: int):
    """The query gradient of one masked attention whose rows all have a log-sum-exp far below -88.7, the case
    pytorch#196678 names (its repro, on the GPU in bf16)."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, 1, width, 64)
    q = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator) * 0.1
    k = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator) * 0.1
    v = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator)
    q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(64)
    q.requires_grad_()
    mask = torch.ones(width, width, dtype=torch.bool, device="cuda").tril()[None, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.backward(torch.randn(out.shape, device="cuda", dtype=out.dtype, generator=generator))
    return q.grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_masked_attention_at_a_width_of_64_past_128s_has_finite_gradients_while_training():
    """Where cuDNN's attention backward fails (H100/H200, torch 2.11+), the training stages' attention does not."""
    with attention_without_cudnn():
        for width in (704, 768):
            assert torch.isfinite(_masked_attention_query_gradient(width)).all(), width
