"""Where GRBench keeps downloaded data and stage caches (both overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def data_dir() -> Path:
    """Downloaded raw datasets: ``$GRBENCH_DATA``, else ``<user cache dir>/grbench/data``."""
    configured = os.environ.get("GRBENCH_DATA")
    return Path(configured).expanduser() if configured else Path(user_cache_dir("grbench")) / "data"


def cache_dir() -> Path:
    """Stage caches (checkpoints, semantic IDs): ``$GRBENCH_CACHE``, else ``<user cache dir>/grbench/cache``."""
    configured = os.environ.get("GRBENCH_CACHE")
    return Path(configured).expanduser() if configured else Path(user_cache_dir("grbench")) / "cache"


def lock_beside(folder: Path) -> Path:
    """The lock file of a cell or LLM stage folder, beside it (``<folder>.lock``): one naming rule for the processes
    that take it (:func:`bench.runner.cell_lock`, ``methods.llm.stages.stage_lock``) and for ``bench progress``,
    which looks for it."""
    return folder.with_name(folder.name + ".lock")


def check_hub_model(name: str) -> None:
    """Raises OSError or ValueError where the Hugging Face model ``name`` (a folder or a hub id) has no config to
    load: not in the folder, not in the Hugging Face cache, not on the hub (or no network). Only the config is looked
    for, a moment even online, so that a run can check the models it will load before any work."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoConfig

    if Path(name).is_dir() or not isinstance(try_to_load_from_cache(name, "config.json"), str):
        AutoConfig.from_pretrained(name)
