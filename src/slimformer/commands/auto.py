"""`slimformer auto`: compress to a budget. Its options are AutoConfig's fields (written once, with their help)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from slimformer.auto.config import AutoConfig
from slimformer.commands.options import OutputOption, data_parameters, generated_command, keyword

HELP = (
    "Find the most accurate compressed model within a budget (--max-latency-ms, --min-speedup or --max-size-mb) "
    "and --max-accuracy-drop: an Optuna search over depth, heads, FFN, vocabulary, INT8 method, threads and "
    "distillation, shapes screened untrained before any training. Resumable; --storage postgresql://... and "
    "--workers N share one study."
)
MODEL_HELP = "Fine-tuned teacher folder, or a base model (fine-tuned on --data first), or 'default'."
DATA_HELP = "clinc150[:plus|full|small|imbalanced], a folder with train/validation/test files, or one file"
QUICK_HELP = "A small data subset, 3 trials of 1 epoch."


def _run(config: AutoConfig, kwargs: dict[str, Any]) -> None:
    from slimformer.auto.run import DataSpec
    from slimformer.auto.run import auto as run_auto

    data = DataSpec(
        kwargs["data"],
        str(kwargs["data_dir"]) if kwargs["data_dir"] else None,
        kwargs["text_column"],
        kwargs["label_column"],
    )
    summary = run_auto(kwargs["model"], kwargs["output"], config, data, quick=kwargs["quick"])
    typer.echo(f"final model: {kwargs['output']}/model (trial {summary['pick']['trial']})")


LEADING = [
    keyword("model", "default", Annotated[str, typer.Option("--model", help=MODEL_HELP)]),
    *data_parameters(DATA_HELP),
    keyword("output", "slimformer-auto", OutputOption),
    keyword("quick", False, Annotated[bool, typer.Option("--quick", help=QUICK_HELP)]),
]
auto = generated_command("auto", HELP, AutoConfig, LEADING, _run)


def register(app: typer.Typer) -> None:
    app.command(name="auto", help=HELP)(auto)
