"""Every ``idls`` command line written in the README, the docs and the experiment files names a real command
and only options that command has: a stale example (an option renamed or never built) is the first thing a
new user copies, and it fails with an error the documentation itself caused."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "experiments").glob("*.yaml"))]
# where a command is written as code: inline `idls ...` spans, lines of fenced blocks, commented yaml lines
INLINE = re.compile(r"`idls ([a-z][^`]*)`")
BLOCK_LINE = re.compile(r"^\s*(?:\$ )?idls ([a-z].*?)(?:\s+#.*)?$")
YAML_COMMENT = re.compile(r"^#\s+idls ([a-z].*?)(?:\s+#.*)?$")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _joined_lines(text: str) -> list[tuple[int, str]]:
    """(number of its first line, text) per logical line: shell continuations (a trailing backslash) joined."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        start, head = pending if pending else (number, "")
        if line.endswith("\\"):
            pending = (start, head + line[:-1] + " ")
            continue
        joined.append((start, head + line))
        pending = None
    return joined


def _command_lines() -> list[tuple[str, str]]:
    """(where, text after 'idls ') for every documented command line, continuation lines joined."""
    found = []
    for path in SOURCES:
        in_block = False
        for number, line in _joined_lines(path.read_text(encoding="utf-8")):
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            if path.suffix == ".yaml":
                matches = YAML_COMMENT.findall(line)
            elif in_block:
                matches = BLOCK_LINE.findall(line)
            else:
                matches = INLINE.findall(line)
            found += [(f"{path.relative_to(ROOT)}:{number}", match.strip()) for match in matches]
    return found


@functools.cache
def _cli_options() -> dict[str, set[str]]:
    """{command path ('run', 'detector fit'): its option names}, from the typer app itself."""
    import typer.main

    from idls.cli import app

    root = typer.main.get_command(app)
    options: dict[str, set[str]] = {}

    def visit(command, path: str) -> None:
        names = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
        options[path] = names | {"--help"}
        for name, sub in getattr(command, "commands", {}).items():  # a group's sub-commands
            visit(sub, f"{path} {name}".strip())

    visit(root, "")
    return options


COMMANDS = _command_lines()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20, COMMANDS  # the pattern still finds the examples


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_uses_real_options(where, line):
    options = _cli_options()
    words = line.split()
    # the longest command path the line starts with ('detector fit' before 'detector')
    command = next((" ".join(words[:k]) for k in (2, 1) if " ".join(words[:k]) in options), None)
    if command is None:
        pytest.fail(f"{where}: 'idls {words[0]}' is not a command of idls (have: {', '.join(sorted(options))})")
    unknown = sorted({opt for opt in OPTION.findall(line[len(command):]) if opt not in options[command]})
    assert not unknown, f"{where}: 'idls {command}' has no option {', '.join(unknown)}: idls {line}"
