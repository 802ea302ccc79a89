"""`slimformer auto`: compress to a budget. Its options are AutoConfig's fields (written once, with their help)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Annotated, Any

import typer

from slimformer.auto.config import AutoConfig
from slimformer.commands.options import DataDirOption, LabelColumnOption, OutputOption, TextColumnOption
from slimformer.commands.stages import config_parameters

HELP = (
    "Find the most accurate compressed model within a budget (--max-latency-ms, --min-speedup or --max-size-mb) "
    "and --max-accuracy-drop: an Optuna search over depth, heads, FFN, vocabulary, INT8 method, threads and "
    "distillation, shapes screened untrained before any training. Resumable; --storage postgresql://... and "
    "--workers N share one study."
)


def _parameters() -> tuple[list[inspect.Parameter], set[str]]:
    kind = inspect.Parameter.KEYWORD_ONLY
    model_help = "Fine-tuned teacher folder, or a base model (fine-tuned on --data first), or 'default'."
    data_help = "clinc150[:plus|full|small|imbalanced], a folder with train/validation/test files, or one file"
    params = [
        inspect.Parameter(
            "model", kind, default="default", annotation=Annotated[str, typer.Option("--model", help=model_help)]
        ),
        inspect.Parameter(
            "data", kind, default="clinc150", annotation=Annotated[str, typer.Option("--data", help=data_help)]
        ),
        inspect.Parameter("data_dir", kind, default=None, annotation=DataDirOption),
        inspect.Parameter("text_column", kind, default="text", annotation=TextColumnOption),
        inspect.Parameter("label_column", kind, default="label", annotation=LabelColumnOption),
        inspect.Parameter("output", kind, default="slimformer-auto", annotation=OutputOption),
        inspect.Parameter(
            "quick",
            kind,
            default=False,
            annotation=Annotated[bool, typer.Option("--quick", help="A small data subset, 3 trials of 1 epoch.")],
        ),
    ]
    fields, variadic = config_parameters(AutoConfig)
    return params + fields, variadic


def auto(**kwargs: Any) -> None:
    from slimformer.auto.run import DataSpec
    from slimformer.auto.run import auto as run_auto
    from slimformer.config import build_config

    names = [f.name for f in dataclasses.fields(AutoConfig)]
    options = {name: kwargs[name] for name in names}
    for name in VARIADIC:
        options[name] = tuple(options[name]) if options[name] is not None else None
    config = build_config(AutoConfig, options)
    data = DataSpec(
        kwargs["data"],
        str(kwargs["data_dir"]) if kwargs["data_dir"] else None,
        kwargs["text_column"],
        kwargs["label_column"],
    )
    summary = run_auto(kwargs["model"], kwargs["output"], config, data, quick=kwargs["quick"])
    typer.echo(f"final model: {kwargs['output']}/model (trial {summary['pick']['trial']})")


PARAMETERS, VARIADIC = _parameters()
auto.__signature__ = inspect.Signature(PARAMETERS)  # type: ignore[attr-defined]
auto.__annotations__ = {p.name: p.annotation for p in PARAMETERS}


def register(app: typer.Typer) -> None:
    app.command(name="auto", help=HELP)(auto)
