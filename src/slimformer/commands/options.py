"""Options that several commands share, so each reads the same way everywhere."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from slimformer.config import build_config, field_types

DataOption = Annotated[
    str,
    typer.Option(
        "--data",
        help="clinc150[:plus|full|small|imbalanced], a folder with train/validation/test files, or one file.",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder of the CLINC150 JSON files (default: $SLIMFORMER_DATA_DIR or ../shared/data/clinc150).",
    ),
]
TextColumnOption = Annotated[str, typer.Option("--text-column", help="Text column of a local dataset.")]
LabelColumnOption = Annotated[str, typer.Option("--label-column", help="Label column of a local dataset.")]
OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Output folder (written atomically).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed.")]


def load_data_option(data: str, data_dir: Path | None, text_column: str, label_column: str, seed: int = 42) -> Any:
    """Load the dataset named by the shared options (see :func:`slimformer.data.load_data`)."""
    from slimformer.data import load_data

    return load_data(data, data_dir=data_dir, text_column=text_column, label_column=label_column, seed=seed)


def print_json(payload: Any) -> None:
    import json

    from rich.console import Console

    Console().print_json(json.dumps(payload, default=str))


def _option_type(annotation: Any) -> tuple[Any, bool]:
    """The type Typer should parse for a config field, and whether it is a variadic tuple (given as a list)."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    inner = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    if typing.get_origin(inner) is tuple and typing.get_args(inner)[-1] is Ellipsis:
        element = list[typing.get_args(inner)[0]]
        return (element | None if optional else element), True
    return annotation, False


def config_parameters(config_class: type) -> tuple[list[inspect.Parameter], set[str]]:
    """One keyword CLI option per field of `config_class` (help from the field), and the variadic tuple fields."""
    kind = inspect.Parameter.KEYWORD_ONLY
    params = []
    variadic = set()
    types_ = field_types(config_class)
    for field in dataclasses.fields(config_class):
        if field.metadata.get("cli") is False:
            continue
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


def generated_command(
    name: str,
    summary: str,
    config_class: type,
    leading: list[inspect.Parameter],
    body: Callable[[Any, dict[str, Any]], None],
) -> Callable[..., None]:
    """A Typer command whose options are `leading` (arguments and options that are not config fields: model
    folders, data, output) followed by one option per field of `config_class`. Called, it builds the config
    from the field options (validated: bad values are one-line ConfigErrors) and runs ``body(config, kwargs)``."""
    fields, variadic = config_parameters(config_class)
    params = leading + fields
    field_names = [p.name for p in fields]

    def command(**kwargs: Any) -> None:
        options = {name: kwargs[name] for name in field_names}
        for field in variadic:
            options[field] = tuple(options[field]) if options[field] is not None else None
        body(build_config(config_class, options), kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = name.replace("-", "_")
    command.__doc__ = summary
    return command


def keyword(name: str, default: Any, annotation: Any) -> inspect.Parameter:
    """A keyword-only parameter of a generated command."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def data_parameters(data_help: str | None = None) -> list[inspect.Parameter]:
    """--data, --data-dir, --text-column and --label-column, as every command that reads a dataset has them."""
    data_option = DataOption if data_help is None else Annotated[str, typer.Option("--data", help=data_help)]
    return [
        keyword("data", "clinc150", data_option),
        keyword("data_dir", None, DataDirOption),
        keyword("text_column", "text", TextColumnOption),
        keyword("label_column", "label", LabelColumnOption),
    ]
