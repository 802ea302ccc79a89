"""Progress lines on stderr, written once for `search` and `auto`."""

from __future__ import annotations


def say(tool: str, message: str) -> None:
    """One line on stderr: `tool` in bold, then `message` as plain text. The message is escaped, never read as
    rich markup: a trial's parameters in brackets, "[layers=5, ...]", would otherwise vanish as an unknown tag."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold]{tool}[/bold] {escape(message)}", highlight=False)
