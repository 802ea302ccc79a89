"""`benchmark` and `tune-threads`: measuring artefacts. Their options are BenchmarkConfig's and
ThreadTuneConfig's fields (written once, with their help)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from slimformer.benchmark import BenchmarkConfig
from slimformer.commands.options import data_parameters, generated_command, keyword, load_data_option
from slimformer.threads import ThreadTuneConfig

BENCHMARK_HELP = "Accuracy, latency (mean ± std, p50/p95/p99), throughput, size and memory of each model."
TUNE_HELP = (
    "Time batch 1 at 1..N intra-op threads, spinning on and off; record the fastest in the folder's session.json."
)


def _benchmark(config: BenchmarkConfig, kwargs: dict[str, Any]) -> None:
    from slimformer.artifacts import write_json
    from slimformer.benchmark import benchmark_models, print_table, write_plot

    splits = load_data_option(kwargs["data"], kwargs["data_dir"], kwargs["text_column"], kwargs["label_column"])
    report = benchmark_models(kwargs["models"], splits, config)
    print_table(report)
    if output := kwargs["output"]:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json(output, report)
        typer.echo(f"results written to {output}")
    if plot := kwargs["plot"]:
        write_plot(report["results"], plot)
        typer.echo(f"plot written to {plot}")


def _tune_threads(config: ThreadTuneConfig, kwargs: dict[str, Any]) -> None:
    from slimformer.data import column
    from slimformer.models import resolve_model_path
    from slimformer.threads import TUNE_WARMUP, print_sweep, tune_threads
    from slimformer.timing import sample_queries

    model = resolve_model_path(kwargs["folder"])
    splits = load_data_option(kwargs["data"], kwargs["data_dir"], kwargs["text_column"], kwargs["label_column"])
    queries = sample_queries(column(splits.split(config.split), "text"), config.queries, config.seed)
    print_sweep(tune_threads(model, queries, config.max_threads, config.rounds, TUNE_WARMUP), typer.echo)


def _argument(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation)


benchmark = generated_command(
    "benchmark",
    BENCHMARK_HELP,
    BenchmarkConfig,
    [
        _argument("models", Annotated[list[str], typer.Argument(help="Model folders (PyTorch checkpoints or ONNX).")]),
        *data_parameters(),
        keyword("output", None, Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON here.")]),
        keyword(
            "plot", None, Annotated[Path | None, typer.Option("--plot", help="Write the accuracy-vs-latency PNG.")]
        ),
    ],
    _benchmark,
)
tune = generated_command(
    "tune-threads",
    TUNE_HELP,
    ThreadTuneConfig,
    [
        _argument("folder", Annotated[str, typer.Argument(help="ONNX model folder (model.onnx, tokenizer, config).")]),
        *data_parameters(),
    ],
    _tune_threads,
)


def register(app: typer.Typer) -> None:
    app.command(name="benchmark", help=BENCHMARK_HELP)(benchmark)
    app.command(name="tune-threads", help=TUNE_HELP)(tune)
