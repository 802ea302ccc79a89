"""One CLI command per registered stage, generated from its config dataclass: every field is an option whose
`--help` text is the field's own, so an option is written once (on the config).

``slimformer STAGE SOURCE --output DIR [--data D ...] [--teacher T] [--FIELD VALUE ...]`` builds the config,
checks the output folder can be written, loads the data and calls the stage function.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Annotated, Any

import typer

from slimformer.commands.options import (
    DataDirOption,
    LabelColumnOption,
    OutputOption,
    TextColumnOption,
    load_data_option,
    print_json,
)
from slimformer.config import build_config, field_types
from slimformer.stages import STAGES, Stage

NO_DATA = "none"
SUMMARY_KEYS = ("validation", "test", "parity", "fusions", "attention_fully_fused", "accuracy_delta_points", "warnings")


def _option_type(annotation: Any) -> tuple[Any, bool]:
    """The type Typer should parse for a config field, and whether it is a variadic tuple (given as a list)."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    inner = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    if typing.get_origin(inner) is tuple and typing.get_args(inner)[-1] is Ellipsis:
        element = list[typing.get_args(inner)[0]]
        return (element | None if optional else element), True
    return annotation, False


def _parameters(stage: Stage) -> tuple[list[inspect.Parameter], set[str]]:
    kind = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(
            "source",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[str, typer.Argument(help="Model folder to start from (or 'default').")],
        ),
        inspect.Parameter("output", kind, annotation=OutputOption),
    ]
    uses_data = stage.config.uses_data
    if uses_data != "none":
        help_text = "clinc150[:plus|full|small|imbalanced], a folder with train/validation/test files, or one file"
        if uses_data == "optional":
            help_text += f"; '{NO_DATA}': built-in sentences (agreement only)"
        params += [
            inspect.Parameter(
                "data", kind, default="clinc150", annotation=Annotated[str, typer.Option("--data", help=help_text)]
            ),
            inspect.Parameter("data_dir", kind, default=None, annotation=DataDirOption),
            inspect.Parameter("text_column", kind, default="text", annotation=TextColumnOption),
            inspect.Parameter("label_column", kind, default="label", annotation=LabelColumnOption),
        ]
    if stage.config.accepts_teacher:
        teacher_help = "Fine-tuned teacher to distil from (default for distill and QAT: the source itself)."
        params.append(
            inspect.Parameter(
                "teacher",
                kind,
                default=None,
                annotation=Annotated[str | None, typer.Option("--teacher", help=teacher_help)],
            )
        )
    fields, variadic = config_parameters(stage.config)
    return params + fields, variadic


def config_parameters(config_class: type) -> tuple[list[inspect.Parameter], set[str]]:
    """One keyword CLI option per field of `config_class` (help from the field), and the variadic tuple fields."""
    kind = inspect.Parameter.KEYWORD_ONLY
    params = []
    variadic = set()
    types_ = field_types(config_class)
    for field in dataclasses.fields(config_class):
        annotation, is_variadic = _option_type(types_[field.name])
        if is_variadic:
            variadic.add(field.name)
        flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
        if bool in (annotation, *typing.get_args(annotation)):
            flag = f"{flag}/--no-{flag[2:]}"
        default = field.default
        if is_variadic and default is not None:
            default = list(default)
        option = typer.Option(flag, help=str(field.metadata.get("help", "")))
        params.append(inspect.Parameter(field.name, kind, default=default, annotation=Annotated[annotation, option]))
    return params, variadic


def make_command(stage: Stage) -> typing.Callable[..., None]:
    """A Typer command function for `stage` (its signature generated from the config's fields)."""
    params, variadic = _parameters(stage)
    field_names = [f.name for f in dataclasses.fields(stage.config)]

    def command(**kwargs: Any) -> None:
        from slimformer.artifacts import check_output_dir, is_main_process

        options = {name: kwargs[name] for name in field_names}
        for name in variadic:
            options[name] = tuple(options[name]) if options[name] is not None else None
        config = build_config(stage.config, options)
        output = check_output_dir(kwargs["output"])
        data = None
        if "data" in kwargs and kwargs["data"] != NO_DATA:
            seed = options.get("seed", 42)
            data = load_data_option(
                kwargs["data"], kwargs["data_dir"], kwargs["text_column"], kwargs["label_column"], seed
            )
        metrics = stage.run(kwargs["source"], output, config, data, kwargs.get("teacher"))
        if is_main_process():  # under torchrun, one summary
            print_json({"output": str(output), **{k: metrics[k] for k in SUMMARY_KEYS if k in metrics}})

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = stage.name
    command.__doc__ = stage.summary
    return command


def register(app: typer.Typer) -> None:
    """One command per registered stage."""
    for stage in STAGES.values():
        app.command(name=stage.name, help=stage.summary)(make_command(stage))
