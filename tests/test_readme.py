"""The README stays short, starts with the set-up commands, and names no command or flag the CLI lacks: every
``python -m bench`` line of its code blocks (``accelerate launch ... -m bench`` too) is parsed by the real parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bench.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
MAX_CHARS = 12_000
CODE_BLOCK = re.compile(r"^[ \t]*```([a-z]*)\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
SHELL = ("", "bash", "sh", "shell", "console")
BENCH = re.compile(r"(?:^|\s)-m bench(?:\s|$)")


def code_blocks(text: str) -> list[str]:
    """The shell code blocks (a Python example may mention a command in a string)."""
    return [block for language, block in CODE_BLOCK.findall(text) if language in SHELL]


def bench_commands(text: str) -> list[str]:
    """Each ``-m bench`` command of the code blocks, backslash continuations joined, from its first word after
    ``-m bench`` on, comments removed."""
    commands = []
    for block in code_blocks(text):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            found = BENCH.search(line)
            if found:
                commands.append(line[found.end():].strip())
    return commands


def parse_errors(commands: list[str]) -> list[str]:
    """The commands argparse refuses (it exits on an unknown command or flag), each with its message."""
    parser = build_parser()
    refused = []
    for command in commands:
        try:
            parser.parse_args(shlex.split(command, comments=True))
        except (SystemExit, ValueError):  # ValueError: unbalanced quotes
            refused.append(command)
    return refused


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8")) <= MAX_CHARS


def test_the_first_commands_are_the_two_set_up_commands():
    first, second = code_blocks(README.read_text(encoding="utf-8"))[:2]
    assert first.strip() == "bash scripts/install.sh && python -m bench run"
    assert second.strip() == "pip install tox && tox"


def test_every_bench_command_in_the_readme_parses(capsys):
    commands = bench_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10 and any(c.startswith("run --profile paper") for c in commands)
    refused = parse_errors(commands)
    assert not refused, f"README commands the CLI refuses: {refused}\n{capsys.readouterr().err}"


@pytest.mark.parametrize("line", ["python -m bench run --no-such-flag", "python -m bench frobnicate",
                                  "accelerate launch -m bench leaderboard --out results --bogus 1"])
def test_a_command_with_a_flag_the_cli_lacks_is_caught(line, capsys):
    text = (f"# T\n\n```bash\npython -m bench methods\n{line}   # a comment\n```\n"
            '```python\ndescription = "for `python -m bench methods`"\n```\n')
    commands = bench_commands(text)
    assert len(commands) == 2  # the Python block's string is no command
    assert parse_errors(commands) == [commands[1]]


def test_continuations_and_environment_prefixes_are_read_whole():
    text = ("```bash\nGRBENCH_DATA=../data python -m bench run --methods pop \\\n    --datasets beauty  # c\n```\n"
            "`python -m bench not-in-a-code-block`\n")
    assert bench_commands(text) == ["run --methods pop  --datasets beauty  # c"]
    assert parse_errors(bench_commands(text)) == []
