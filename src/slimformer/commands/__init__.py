"""CLI commands: one per registered stage (generated from its config), plus benchmark, run/recipe and serve."""

from __future__ import annotations

import typer

from slimformer.commands import core, pipeline, serve, stages


def register_all(app: typer.Typer) -> None:
    """Register every command on `app`."""
    for module in (stages, core, pipeline, serve):
        module.register(app)
