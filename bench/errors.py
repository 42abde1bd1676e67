"""User-facing errors.

Every error a user can cause (bad file, unknown name, empty data) is a :class:`GRBenchError`:
the CLI prints its message on one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class GRBenchError(Exception):
    """An error caused by input or configuration, reported to the user without a traceback."""


class DataError(GRBenchError):
    """Malformed input data: names the file, the line (or field) and what was expected."""

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        message = f"{where}: {problem}"
        if expected:
            message += f" (expected {expected})"
        super().__init__(message)
        self.path = str(path)
        self.line = line
        self.field = field


class UnknownNameError(GRBenchError):
    """An unknown method, dataset or profile name; lists the known ones."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(known))}")
