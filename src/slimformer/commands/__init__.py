"""CLI commands, grouped by technique. Each module has `register(app)`; options shared by all live in
:mod:`slimformer.commands.options`."""

from __future__ import annotations

import importlib

import typer

# modules are registered in this order; a module that is not there yet is skipped
COMMAND_MODULES = ("distill", "onnx", "prune", "pipeline", "serve")


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"slimformer.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"slimformer.commands.{name}":
                raise
            continue
        module.register(app)
