"""One CLI command per registered stage, generated from its config dataclass: every field is an option whose
`--help` text is the field's own, so an option is written once (on the config).

``slimformer STAGE SOURCE --output DIR [--data D ...] [--teacher T] [--FIELD VALUE ...]`` builds the config,
checks the output folder can be written, loads the data and calls the stage function.
"""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any

import typer

from slimformer.commands.options import (
    OutputOption,
    data_parameters,
    generated_command,
    keyword,
    load_data_option,
    print_json,
)
from slimformer.stages import STAGES, Stage

NO_DATA = "none"
SUMMARY_KEYS = ("validation", "test", "parity", "fusions", "attention_fully_fused", "accuracy_delta_points", "warnings")
DATA_HELP = "clinc150[:plus|full|small|imbalanced], a folder with train/validation/test files, or one file"
TEACHER_HELP = "Fine-tuned teacher to distil from (default for distill and QAT: the source itself)."


def _leading(stage: Stage) -> list[inspect.Parameter]:
    """SOURCE, --output, the data options (when the stage reads data) and --teacher (when it learns from one)."""
    source_help = "Model folder to start from (or 'default')."
    params = [
        inspect.Parameter(
            "source",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[str, typer.Argument(help=source_help)],
        ),
        keyword("output", inspect.Parameter.empty, OutputOption),
    ]
    if stage.config.uses_data != "none":
        optional = stage.config.uses_data == "optional"
        params += data_parameters(
            DATA_HELP + (f"; '{NO_DATA}': built-in sentences (agreement only)" if optional else "")
        )
    if stage.config.accepts_teacher:
        params.append(keyword("teacher", None, Annotated[str | None, typer.Option("--teacher", help=TEACHER_HELP)]))
    return params


def make_command(stage: Stage) -> typing.Callable[..., None]:
    """A Typer command function for `stage` (its signature generated from the config's fields)."""

    def body(config: Any, kwargs: dict[str, Any]) -> None:
        from slimformer.artifacts import check_output_dir, is_main_process

        output = check_output_dir(kwargs["output"])
        data = None
        if "data" in kwargs and kwargs["data"] != NO_DATA:
            seed = getattr(config, "seed", 42)
            data = load_data_option(
                kwargs["data"], kwargs["data_dir"], kwargs["text_column"], kwargs["label_column"], seed
            )
        metrics = stage.run(kwargs["source"], output, config, data, kwargs.get("teacher"))
        if is_main_process():  # under torchrun, one summary
            print_json({"output": str(output), **{k: metrics[k] for k in SUMMARY_KEYS if k in metrics}})

    return generated_command(stage.name, stage.summary, stage.config, _leading(stage), body)


def register(app: typer.Typer) -> None:
    """One command per registered stage."""
    for stage in STAGES.values():
        app.command(name=stage.name, help=stage.summary)(make_command(stage))
