"""`run`: one command for the whole recipe (distil → prune → export → optimize → quantize → report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def run(
    recipe: Annotated[
        Path | None, typer.Argument(help="Recipe YAML (default: the packaged recipe, see `slimformer recipe`).")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder: stages, report, model/.")] = Path(
        "slimformer-run"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Same recipe on a small subset, 1 epoch per stage.")] = False,
    model: Annotated[str | None, typer.Option("--model", help="Override the recipe's model.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Override the recipe's dataset.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Folder of the CLINC150 JSON files.")] = None,
    text_column: Annotated[
        str | None, typer.Option("--text-column", help="Override the recipe's text column (local data).")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option("--label-column", help="Override the recipe's label column (local data).")
    ] = None,
) -> None:
    """Run a recipe; finished stages are reused, a killed stage is redone. Writes report.md/.html and model/."""
    from slimformer.pipeline import load_recipe, run_recipe

    parsed = load_recipe(recipe)
    if model:
        parsed.model = model
    if data:
        parsed.data = data
    if data_dir:
        parsed.data_dir = str(data_dir)
    if text_column:
        parsed.text_column = text_column
    if label_column:
        parsed.label_column = label_column
    summary = run_recipe(parsed, output, quick=quick)
    typer.echo(f"final model: {output / 'model'} (from {summary['final_model']})")


def recipe(
    stage: Annotated[
        str | None,
        typer.Option("--stage", help="Print every option of this recipe stage instead, commented, with its default."),
    ] = None,
) -> None:
    """Print the packaged default recipe (copy it to start your own), or one stage's options."""
    from slimformer.config import commented_options
    from slimformer.errors import ConfigError
    from slimformer.pipeline import config_class, default_recipe_path, stage_kinds

    if stage is None:
        typer.echo(default_recipe_path().read_text())
        return
    if stage not in stage_kinds():
        raise ConfigError(f"unknown stage {stage!r} (valid: {', '.join(stage_kinds())})")
    typer.echo(f"  - stage: {stage}\n" + commented_options(config_class(stage), indent="    "))


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(recipe)
