"""User-facing errors.

Every error a user can cause (bad file, unknown name, empty data) is a :class:`GRBenchError`:
the CLI prints its message on one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

from pathlib import Path

MAX_PROBLEM_CHARS = 400  # longer descriptions of a problem (quoting hostile input) keep their ends


def shown_path(path: object) -> str:
    """A path as one line of an error message: quoted when a newline or control character is in it."""
    text = str(path)
    return text if text.isprintable() else repr(text)


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
        where = shown_path(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        if len(problem) > MAX_PROBLEM_CHARS:  # a quoted 10 MB line would bury the message
            problem = f"{problem[:MAX_PROBLEM_CHARS // 2]} [...] {problem[-MAX_PROBLEM_CHARS // 2:]}"
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
