"""What a result needs to be rerun and trusted: package versions and the git commit."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = ("grbench", "numpy", "pandas", "torch", "recbole", "transformers", "peft", "trl",
                    "sentence-transformers", "accelerate", "vector-quantize-pytorch")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages that can change a number."""
    found = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str:
    """The commit named by ``$GRBENCH_GIT_COMMIT`` (set where a copy of a checkout was shipped to another machine:
    the copy may carry a stale ``.git``), else HEAD of the GRBench checkout with ``-dirty`` when tracked files
    differ, else ``unknown``."""
    shipped = os.environ.get("GRBENCH_GIT_COMMIT", "").strip()
    if shipped:
        return shipped
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


@functools.cache
def process_commit() -> str:
    """The commit of the code this process runs: :func:`git_commit` at the first call, kept for the process's
    life. A process loads its modules when it starts, so a commit made while it trains (hours, on a CPU) did not
    produce its numbers; the runner calls this before its first cell, and its records name this commit."""
    return git_commit()
