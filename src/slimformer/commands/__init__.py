"""CLI commands: one per registered stage (generated from its config), plus benchmark, run/recipe, auto and serve."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = ("stages", "core", "pipeline", "auto", "serve")
# commands whose module is registered alone when they are the one invoked: `slimformer serve` then imports
# neither the stage configs nor the training modules (4 MB less peak RSS for the served model, a faster start)
STANDALONE = {"serve": "serve"}


def register_all(app: typer.Typer, command: str | None = None) -> None:
    """Register every command on `app`, or only `command`'s module when it is a standalone one."""
    modules = (STANDALONE[command],) if command in STANDALONE else COMMAND_MODULES
    for name in modules:
        importlib.import_module(f"slimformer.commands.{name}").register(app)
