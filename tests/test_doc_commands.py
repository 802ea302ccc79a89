"""Every `slimformer ...` command line shown in README.md and BENCHMARKS.md parses with today's CLI (a stale
option or a removed positional argument fails here, not in a reader's shell)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "BENCHMARKS.md")


def command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each `slimformer ...` line inside a fenced code block, continuations joined."""
    found, in_code, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            continue
        stripped = line.strip()
        if pending:
            pending += " " + stripped
        elif stripped.startswith("slimformer ") or re.match(r"^\S+=\S+ slimformer ", stripped):
            pending, start = stripped, number
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        found.append((start, pending))
        pending = ""
    return found


def cases() -> list[tuple[str, int, str]]:
    return [(name, n, cmd) for name in DOCUMENTS for n, cmd in command_lines((ROOT / name).read_text())]


def test_the_documents_show_commands() -> None:
    names = {name for name, _, _ in cases()}
    assert {"README.md", "BENCHMARKS.md"} <= names and len(cases()) >= 20


@pytest.mark.parametrize(("document", "line", "command"), cases(), ids=lambda v: str(v)[:40])
def test_command_parses(document: str, line: int, command: str) -> None:
    import click
    import typer

    from slimformer.cli import build_app

    command = re.split(r"\s#|\s&&|\s\||;", command)[0]
    args = shlex.split(command)
    args = args[args.index("slimformer") + 1 :]
    if "..." in args:
        pytest.skip("an elided command")
    args = [re.sub(r"\$\{?\w+\}?", "X", arg) for arg in args]
    group = typer.main.get_command(build_app(args[0]))
    context = click.Context(group, info_name="slimformer")
    try:
        name, sub, rest = group.resolve_command(context, args)
        sub.make_context(name, rest, parent=context)
    except click.exceptions.Exit:
        pass
    except click.ClickException as exc:
        pytest.fail(f"{document}:{line}: `slimformer {' '.join(args)}` does not parse: {exc.format_message()}")
