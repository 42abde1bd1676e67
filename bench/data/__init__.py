"""Dataset sources. Each module in this package registers its sources with :func:`register_source`.

A dataset is named on the command line by a *spec*: ``ml-100k``, ``beauty``, ``seq:<path>``,
``synthetic`` or ``synthetic:users=200,items=80``. Adding a source is one new module here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path, PurePath

from bench.data.base import Dataset, SourceInfo
from bench.errors import GRBenchError, UnknownNameError

_SOURCES: dict[str, SourceInfo] = {}
_DISCOVERED = False


def register_source(
    name: str, description: str, *, argument: str | None = None, argument_required: bool = False,
    pending_downloads: Callable[[str | None], list[Path]] | None = None, title: str | None = None,
) -> Callable[[Callable[[str | None], Dataset]], Callable[[str | None], Dataset]]:
    """Decorator registering ``loader(argument) -> Dataset`` under ``name``. A source that downloads on first use
    passes ``pending_downloads(argument)``: the files still to fetch, so that a dry run can list them instead.
    ``title`` is how leaderboards name the dataset (default: ``name``)."""

    def decorate(loader: Callable[[str | None], Dataset]) -> Callable[[str | None], Dataset]:
        if name in _SOURCES:
            raise ValueError(f"dataset source {name!r} registered twice")
        _SOURCES[name] = SourceInfo(name, description, loader, argument, argument_required, pending_downloads,
                                    title)
        return loader

    return decorate


def _discover() -> None:
    global _DISCOVERED
    _DISCOVERED = True
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


def sources() -> dict[str, SourceInfo]:
    """All registered sources by name."""
    if not _DISCOVERED:  # a source module imported directly registers itself, but not its siblings
        _discover()
    return dict(_SOURCES)


def parse_spec(spec: str) -> tuple[SourceInfo, str | None]:
    """Splits ``name[:argument]`` and finds the source; raises a clear error for unknown names."""
    name, _, argument = spec.partition(":")
    known = sources()
    if name not in known:
        raise UnknownNameError("dataset", name, list(known))
    source = known[name]
    if argument and source.argument is None:
        raise GRBenchError(f"dataset {name!r} takes no argument, got {spec!r}")
    if source.argument_required and not argument:
        raise GRBenchError(f"dataset {name!r} needs an argument: {name}:{source.argument}")
    return source, argument or None


def dataset_name(spec: str) -> str:
    """The name results and leaderboards carry for ``spec``: ``seq:<path>`` is named ``seq:<file stem>`` (so a
    run that read the file from another folder lands in the same leaderboard); every other spec is its name."""
    if spec.startswith("seq:"):
        return f"seq:{PurePath(spec[4:]).stem}"
    return spec


def dataset_title(name: str) -> str:
    """How pages and tables name the dataset that results call ``name``: its source's title (``beauty`` is
    "Beauty", as in the study's tables), else the name itself."""
    source = sources().get(name)
    return source.title if source is not None and source.title else name


def load_dataset(spec: str) -> Dataset:
    """Loads the dataset named by ``spec``."""
    source, argument = parse_spec(spec)
    return source.loader(argument)


__all__ = ["Dataset", "dataset_name", "dataset_title", "load_dataset", "parse_spec", "register_source", "sources"]
