from __future__ import annotations

import numpy as np
import pytest

from bench.compat import SMOLLM2_GGUF, import_recbole, package_dir, restore_numpy_aliases, smollm2_gguf
from bench.errors import GRBenchError


def test_recbole_imports_under_numpy_2():
    restore_numpy_aliases()
    assert np.float_ is np.float64
    config = import_recbole("recbole.config")
    assert hasattr(config, "Config")


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
