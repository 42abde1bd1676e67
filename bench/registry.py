"""The method interface and registry: a method is one file in ``baselines/`` or ``methods/``.

A method subclasses :class:`Method`, decorates itself with :func:`register_method`, and implements
``fit(data, context)`` and ``recommend(histories, k, users)``. The harness owns data, split,
evaluation, timing and storage; a method never sees a test target while it trains.

On the command line a method is named by a *spec*: ``sasrec`` or ``sasrec:loss=bce,epochs=50``.
Options override the method's settings for the chosen profile, and the full spec is the row label.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from bench.costs import CostMeter, StageCost
from bench.errors import GRBenchError, UnknownNameError
from bench.split import TrainData

METHOD_PACKAGES = ("baselines", "methods")
FAMILIES = ("baseline", "id-based", "generative", "llm")
T = TypeVar("T")
# Method.training_inputs: input set name -> rows of (dense user index or None, dense item ids of the row)
TrainingInputs = dict[str, list[tuple[int | None, list[int]]]]


@dataclass
class RunContext:
    """What the harness gives a method for one (dataset, profile, seed) run."""

    seed: int
    profile: str
    device: str
    cache_dir: Path  # stage checkpoints of this (dataset split, method spec, profile, seed)
    costs: CostMeter = field(default_factory=CostMeter)
    track: Callable[..., Iterable] = field(default=lambda iterable, description="", total=None: iterable)
    # one line of news from a long stage (an epoch's loss and score): shown above the progress bars, and the
    # only progress a log file gets when output is not a terminal
    log: Callable[[str], None] = field(default=lambda text: None)

    def stage(self, name: str) -> AbstractContextManager[StageCost]:
        """Times a named training stage (``with context.stage("cpt"): ...``)."""
        return self.costs.stage(name)

    def carry_over(self, wall_s: float, gpu_hours: float) -> None:
        """Counts training time spent by an interrupted earlier process of this run (see bench.checkpoint)."""
        self.costs.carry_over(wall_s, gpu_hours)

    def progress(self, iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Wraps a loop in a progress bar (``for batch in context.progress(loader, "epoch 1")``)."""
        return iter(self.track(iterable, description=description, total=total))


class Method(ABC):
    """Base class of every benchmarked method."""

    name: ClassVar[str]
    family: ClassVar[str]
    description: ClassVar[str]
    needs_text: ClassVar[bool] = False  # LLM and text-SID methods cannot run without item titles
    # True where the small and paper schedules take a GPU in practice: a headline cell never run says so
    needs_gpu: ClassVar[bool] = False
    # False for count-based floors (pop, random): no training schedule exists to cut short, so their rows
    # are never marked "reduced schedule" in CPU profiles.
    has_training_schedule: ClassVar[bool] = True
    # Per-profile settings; a profile missing here falls back to "quick", then to {}.
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}
    # What decides a method's training data: a subclass that overrides one of these below the class that wrote
    # training_inputs may train on inputs that hook never shows, so the leakage audit calls it not audited.
    training_entry_points: ClassVar[tuple[str, ...]] = ("fit",)
    # True where training does not depend on the ``epochs`` setting (no schedule sized to the total step count):
    # then a run with a higher limit continues the epoch checkpoint of the same run cut at a lower one
    # (bench.training.train_with_early_stopping), and ``bench run --dry-run`` says which cell it would continue.
    extends_shorter_runs: ClassVar[bool] = False
    # True where training goes through Hugging Face's Trainer, which trains data-parallel under a distributed launch
    # (accelerate launch, torchrun, a multi-task cluster job); the other methods train on rank 0 alone meanwhile
    data_parallel: ClassVar[bool] = False
    # True where training wants a GPU: the cluster launcher (bench.cluster) gives this method's jobs GPUs
    wants_gpu: ClassVar[bool] = False

    def __init__(self, settings: dict[str, Any], context: RunContext) -> None:
        self.settings = settings
        self.context = context
        self.rng = np.random.default_rng(context.seed)

    @classmethod
    def settings_for(cls, profile: str, options: dict[str, Any]) -> dict[str, Any]:
        """The profile's settings with command-line options applied; unknown option names fail."""
        base = dict(cls.profiles.get(profile, cls.profiles.get("quick", {})))
        unknown = sorted(set(options) - set(base))
        if unknown:
            raise GRBenchError(f"method {cls.name!r} has no option {unknown[0]!r}; "
                               f"its options are: {', '.join(sorted(base)) or 'none'}")
        for key, value in options.items():
            try:
                base[key] = _coerce(value, base[key])
            except GRBenchError as error:
                raise GRBenchError(f"method {cls.name!r}, option {key}: {error}") from None
        cls.check_settings(base)
        return base

    @classmethod
    def variant(cls, settings: dict[str, Any]) -> str:
        """A few words shown next to the row label in leaderboards (e.g. the loss of SASRec)."""
        return ""

    @classmethod
    def validate_every(cls, settings: dict[str, Any]) -> int:
        """After how many epochs training validates (besides the first and the last epoch)."""
        return 1

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        """Raises GRBenchError for a bad combination of settings, before any work starts."""
        return None

    @classmethod
    def check_available(cls, settings: dict[str, Any]) -> None:
        """Raises GRBenchError where something the method loads from outside the suite (a model) is missing: a run
        calls it before any work, so that hours of earlier cells or stages are not spent on a run that must fail."""
        return None

    @abstractmethod
    def fit(self, data: TrainData, context: RunContext) -> None:
        """Trains on training sequences (validation targets may drive early stopping)."""

    @abstractmethod
    def recommend(self, histories: Sequence[np.ndarray], k: int, users: np.ndarray) -> np.ndarray:
        """Top-``k`` distinct dense item ids per history, best first: an int array (len(histories), k)."""

    def report(self) -> dict[str, Any]:
        """What the method wants stored with its result (best epoch, validation curve, ...)."""
        return {}

    @contextmanager
    def decoding_batch(self, users: int) -> Iterator[None]:
        """Inside the block, :meth:`recommend` decodes ``users`` users at a time (the throughput measurement tries
        several batch sizes). Methods that take whatever batch they are given need nothing; those that split it
        by an ``infer_batch_size`` setting (the LLM methods) use ``users`` for the duration."""
        if "infer_batch_size" not in self.settings:
            yield
            return
        saved = self.settings["infer_batch_size"]
        self.settings["infer_batch_size"] = users
        try:
            yield
        finally:
            self.settings["infer_batch_size"] = saved

    def analyze(self, data: TrainData, folder: Path) -> dict[str, Any]:
        """Analyses of the fitted model (``python -m bench analyze``): writes plots into ``folder`` and returns
        a JSON-able summary. Only methods that override this have analyses."""
        raise NotImplementedError

    def training_inputs(self, data: TrainData) -> TrainingInputs:
        """What ``fit`` would train on, for the leakage audit (``python -m bench audit``), without training.

        Named input sets ("sft examples", "cpt corpus", ...), each a list of rows ``(user, items)``: the dense
        user index the row was built from (None for rows of no user, such as catalog lines) and every dense item
        id in that row's input and target, repeats kept, padding left out. Built by the very functions ``fit``
        calls, so the audit checks the real inputs, not a re-implementation. A method that overrides none of
        this is reported as not audited."""
        raise NotImplementedError

    def validation_exposure(self) -> dict[str, str]:
        """Input sets of :meth:`training_inputs` that show validation targets on purpose, each with the documented
        reason (e.g. the study's CPT corpus); the audit flags them instead of failing. Never for test targets."""
        return {}


def _coerce(text: str, default: Any) -> Any:
    """Converts a command-line option to the type of the profile's default."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise GRBenchError(f"option value {text!r}: expected true or false")
        return text.lower() in ("true", "1")
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(text)
            except ValueError:
                raise GRBenchError(f"option value {text!r}: expected {kind.__name__}") from None
    return text


_METHODS: dict[str, type[Method]] = {}
_DISCOVERED = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if cls.family not in FAMILIES:
        raise ValueError(f"{cls.__name__}.family must be one of {FAMILIES}")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    _DISCOVERED = True
    for package_name in METHOD_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{package_name}.{module.name}")


def methods() -> dict[str, type[Method]]:
    """All registered methods by name (importing every file in ``baselines/`` and ``methods/``)."""
    if not _DISCOVERED:  # a method module imported directly registers itself, but not its siblings
        _discover()
    return dict(_METHODS)


def default_methods() -> list[str]:
    """What ``--methods all`` runs: every registered method in its default variant."""
    return sorted(methods())


def parse_method_spec(spec: str) -> tuple[type[Method], dict[str, str]]:
    """Splits ``name[:key=value,...]`` into the method class and its options."""
    name, _, option_text = spec.partition(":")
    known = methods()
    if name not in known:
        raise UnknownNameError("method", name, list(known))
    options: dict[str, str] = {}
    for part in filter(None, option_text.split(",")):
        key, equals, value = part.partition("=")
        if not equals or not key:
            raise GRBenchError(f"method spec {spec!r}: option {part!r} is not key=value")
        options[key.strip()] = value.strip()
    return known[name], options


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and (where installed) torch, deterministically on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)
