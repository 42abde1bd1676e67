from __future__ import annotations

import re

import pytest

from benchmarks.sdpa_backward import main


def test_the_benchmark_counts_non_finite_query_gradients_with_and_without_the_guard(capsys):
    assert main(["--widths", "40,64", "--padding", "8"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"(default kernels|attention_without_cudnn), width +(\d+): (\d+) non-finite query gradients "
                      r"of (\d+)", out)
    assert [(label, int(width)) for label, width, _, _ in rows] == [
        ("default kernels", 40), ("default kernels", 64), ("attention_without_cudnn", 40),
        ("attention_without_cudnn", 64)]
    assert all(int(total) == 2 * 9 * int(width) * 64 for _, width, _, total in rows)
    assert all(int(bad) == 0 for _, _, bad, _ in rows)  # a CPU has no cuDNN attention: finite either way


def test_padding_must_leave_every_row_a_key():
    with pytest.raises(SystemExit):
        main(["--widths", "64", "--padding", "64"])
