"""The leakage audit (``python -m bench audit``): no method trains on a user's validation or test target.

Every method shows what it would train on through :meth:`bench.registry.Method.training_inputs`, built by the
functions its ``fit`` calls (nothing trains), and the audit checks each row against the split itself:

- a row built from user ``u`` may hold ``u``'s items at most as often as ``u``'s training sequence (``items[:-2]``)
  does. The validation target (``items[-2]``) or the test target (``items[-1]``) once more is a *leak* of that
  target; any other item beyond the training sequence is counted as *foreign* (not a leak: it is no held-out
  target of this user);
- rows of no user (catalog lines: an item's SID and text) are counted;
- a set the method documents as showing validation targets on purpose (:meth:`Method.validation_exposure`, e.g.
  ``sft:cpt_corpus=paper``, the study's CPT corpus) is *flagged*, not failed. A test leak always fails.

Rows are checked one by one, because many methods write one training event into many rows (every prefix of a
sequence). So a held-out target that the user's training sequence already holds as often as the row does (a repeat
purchase) is invisible: on data with repeats (the synthetic source) fewer users are flagged than exposed; ml-100k
has no repeats.

The split is checked too: every test history is the whole sequence but its last item (so it ends exactly before
the test item), every validation history is the training sequence, and the training view holds ``items[:-2]`` and
the validation target ``items[-2]``. The audit fails (exit status 1) on a test leak, an undocumented validation
leak, a split problem, a hook that cannot be read, or a method without a current hook (not audited).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.progress import Progress

from bench.data import load_dataset, parse_spec
from bench.errors import GRBenchError
from bench.profiles import Profile, get_profile
from bench.registry import Method
from bench.runner import MethodRun, make_method, make_progress, resolve_methods
from bench.split import Split, leave_last_out

SHOWN_USERS = 5  # users named per leak line (the counts cover all of them)


@dataclass
class InputSetAudit:
    """One named input set of one method, checked row by row."""

    name: str
    rows: int = 0
    users: int = 0  # distinct users with at least one row
    catalog_rows: int = 0  # rows of no user
    valid_leaks: list[int] = field(default_factory=list)  # dense users whose validation target shows once more
    test_leaks: list[int] = field(default_factory=list)  # dense users whose test target shows once more
    foreign_items: int = 0  # other item occurrences beyond the user's training sequence
    exposure: str | None = None  # the method's documented reason for showing validation targets

    @property
    def failed(self) -> bool:
        return bool(self.test_leaks) or (bool(self.valid_leaks) and self.exposure is None)

    @property
    def status(self) -> str:
        if self.test_leaks:
            return "TEST LEAK"
        if self.valid_leaks:
            return "VALIDATION LEAK" if self.exposure is None else "flagged: validation exposure (documented)"
        return "clean"


@dataclass
class MethodAudit:
    spec: str
    sets: list[InputSetAudit] = field(default_factory=list)
    problem: str | None = None  # why it could not be audited (fails the audit)
    skipped: str | None = None  # why it does not run on this dataset at all (does not fail it)

    @property
    def failed(self) -> bool:
        return self.problem is not None or any(s.failed for s in self.sets)


@dataclass
class AuditReport:
    split: Split
    profile: str
    split_problems: list[str]
    methods: list[MethodAudit]

    @property
    def failed(self) -> bool:
        return bool(self.split_problems) or any(m.failed for m in self.methods)


def _defining_class(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def unaudited_reason(cls: type[Method]) -> str | None:
    """Why ``cls`` has no current training_inputs hook: none at all, or a training entry point overridden below
    the class that wrote the hook (a subclass's own stages, which the inherited hook never shows)."""
    owner = _defining_class(cls, "training_inputs")
    if owner is Method:
        return "the method has no training_inputs hook"
    for name in cls.training_entry_points:
        definer = _defining_class(cls, name)
        if definer is not owner and issubclass(definer, owner):
            return (f"{definer.__name__}.{name} overrides training, but its training_inputs is "
                    f"{owner.__name__}'s, which does not show that class's own inputs")
    return None


def audit_split(split: Split, evaluation_users: np.ndarray) -> list[str]:
    """What is wrong with the split's histories and targets (nothing, for a correct split)."""
    data = split.train_view()
    histories, targets, valid_histories = split.test_histories(), split.test_targets(), data.valid_histories()
    chosen = dict(zip(evaluation_users.tolist(), split.test_histories(evaluation_users)))
    problems = []
    if data.n_users != split.n_users or len(data.valid_targets) != split.n_users:
        problems.append(f"the training view has {data.n_users} users, the split {split.n_users}")
    for user, sequence in enumerate(split.sequences[: data.n_users]):
        whose = f"user {split.user_ids[user]}"
        if not (np.array_equal(histories[user], sequence[:-1]) and targets[user] == sequence[-1]):
            problems.append(f"{whose}: the test history is not the sequence up to just before the test item")
        if user in chosen and not np.array_equal(chosen[user], sequence[:-1]):
            problems.append(f"{whose}: the scored test history differs from the sequence before the test item")
        if not (np.array_equal(data.train_sequences[user], sequence[:-2]) and data.valid_targets[user] == sequence[-2]):
            problems.append(f"{whose}: the training view is not items[:-2] with validation target items[-2]")
        if not np.array_equal(valid_histories[user], data.train_sequences[user]):
            problems.append(f"{whose}: the validation history is not the training sequence")
    return problems


def audit_input_set(name: str, rows: Sequence[tuple[int | None, Sequence[int]]], split: Split,
                    training: Sequence[Counter], exposure: str | None = None) -> InputSetAudit:
    """Checks every row of one input set (``training[u]``: the item counts of user u's training sequence)."""
    result = InputSetAudit(name, rows=len(rows), exposure=exposure)
    users: set[int] = set()
    valid_leaks: set[int] = set()
    test_leaks: set[int] = set()
    for user, items in rows:
        if user is None:
            result.catalog_rows += 1
            continue
        if not 0 <= user < split.n_users:
            raise GRBenchError(f"input set {name!r} has a row of user index {user}; the split has {split.n_users}")
        users.add(user)
        valid, test = int(split.sequences[user][-2]), int(split.sequences[user][-1])
        allowed = training[user]
        for item, count in Counter(int(i) for i in items).items():
            if count <= allowed[item]:
                continue
            if item == valid:
                valid_leaks.add(user)
            if item == test:
                test_leaks.add(user)
            if item not in (valid, test):
                result.foreign_items += count - allowed[item]
    result.users = len(users)
    result.valid_leaks, result.test_leaks = sorted(valid_leaks), sorted(test_leaks)
    return result


def audit_method(split: Split, run: MethodRun, profile: Profile, seed: int, training: Sequence[Counter],
                 progress: Progress) -> MethodAudit:
    """One method's input sets, as an untrained instance of it builds them."""
    data = split.train_view()
    if run.method.needs_text and not data.has_text:
        return MethodAudit(run.spec, skipped="needs item text; this dataset has no titles, so it never runs here")
    reason = unaudited_reason(run.method)
    if reason is not None:
        return MethodAudit(run.spec, problem=f"not audited: {reason}")
    method, _ = make_method(split, run, profile, seed, progress)
    task = progress.add_task(f"audit {run.spec} / {split.dataset}", total=1)
    try:
        inputs = method.training_inputs(data)
        exposure = method.validation_exposure()
        return MethodAudit(run.spec, [audit_input_set(name, rows, split, training, exposure.get(name))
                                      for name, rows in inputs.items()])
    except NotImplementedError as error:
        return MethodAudit(run.spec, problem=f"not audited: {error or 'training_inputs is not implemented'}")
    except (GRBenchError, ValueError) as error:
        return MethodAudit(run.spec, problem=f"its training inputs cannot be read: {error}")
    finally:
        progress.update(task, completed=1)


def run_audit(method_specs: Sequence[str], dataset_spec: str, profile_name: str, seed: int = 0,
              console: Console | None = None) -> AuditReport:
    """``python -m bench audit``: the split's checks and every method's input sets on one dataset."""
    console = console or Console(stderr=True)
    profile = get_profile(profile_name)
    method_runs = resolve_methods(method_specs, profile)
    parse_spec(dataset_spec)
    with make_progress(console) as progress:
        task = progress.add_task(f"load + split {dataset_spec}", total=1)
        split = leave_last_out(load_dataset(dataset_spec))
        progress.update(task, completed=1)
        training = [Counter(sequence[:-2].tolist()) for sequence in split.sequences]
        audits = [audit_method(split, run, profile, seed, training, progress) for run in method_runs]
    return AuditReport(split, profile.name, audit_split(split, split.evaluation_users(profile.max_test_users)),
                       audits)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int]) -> list[str]:
    """Text columns two spaces apart, the ``right`` ones (counts) right-aligned."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return ["  ".join(cell.rjust(width) if c in right else cell.ljust(width)
                      for c, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in cells]


def _users(split: Split, users: Sequence[int]) -> str:
    named = ", ".join(f"{user} (source id {split.user_ids[user]})" for user in users[:SHOWN_USERS])
    return named + (f" and {len(users) - SHOWN_USERS} more" if len(users) > SHOWN_USERS else "")


def render(report: AuditReport) -> str:
    """The audit as text: the split's verdict, one table row per method and input set, then each finding."""
    split = report.split
    lines = [f"leakage audit of {split.dataset} (split {split.fingerprint}, {split.n_users} users, "
             f"{split.n_items} items), profile {report.profile}", ""]
    if report.split_problems:
        lines += [f"SPLIT: {problem}" for problem in report.split_problems[:SHOWN_USERS]]
        if len(report.split_problems) > SHOWN_USERS:
            lines.append(f"SPLIT: ... {len(report.split_problems) - SHOWN_USERS} more problems")
    else:
        lines.append("split: every test history ends exactly before the test item; every validation history is the "
                     "training sequence: ok")
    rows: list[list[object]] = []
    findings: list[str] = []
    for audit in report.methods:
        if audit.problem or audit.skipped:
            rows.append([audit.spec, "-", "", "", "", "", "", "", "NOT AUDITED" if audit.problem else "skipped"])
            findings.append(f"{'FAIL' if audit.problem else 'skip'} {audit.spec}: {audit.problem or audit.skipped}")
        elif not audit.sets:
            rows.append([audit.spec, "(no per-user training input)", 0, 0, 0, 0, 0, 0, "clean"])
        for s in audit.sets:
            rows.append([audit.spec, s.name, s.rows, s.users, s.catalog_rows, len(s.valid_leaks), len(s.test_leaks),
                         s.foreign_items, s.status])
            where = f"{audit.spec} / {s.name}"
            if s.test_leaks:
                findings.append(f"FAIL {where}: the test target of user {_users(split, s.test_leaks)} is a training "
                                "input")
            if s.valid_leaks:
                verdict = "FAIL" if s.exposure is None else "flagged"
                why = f" (documented: {s.exposure})" if s.exposure else ""
                findings.append(f"{verdict} {where}: the validation target of user {_users(split, s.valid_leaks)} is "
                                f"a training input{why}")
    header = ["method", "input set", "rows", "users", "catalog rows", "valid leaks", "test leaks", "foreign items",
              "status"]
    lines += ["", *_table(header, rows, right=range(2, 8))]
    if findings:
        lines += ["", *findings]
    verdict = "FAILED" if report.failed else "passed"
    lines += ["", f"audit {verdict}: leaks count users whose held-out target a row shows more often than their "
              "training sequence does; foreign items are other items beyond it"]
    return "\n".join(lines)
