"""CLI commands: one per registered stage (generated from its config), plus benchmark, run/recipe, auto and serve."""

from __future__ import annotations

import typer

from slimformer.commands import auto, core, pipeline, serve, stages


def register_all(app: typer.Typer) -> None:
    """Register every command on `app`."""
    for module in (stages, core, pipeline, auto, serve):
        module.register(app)
