"""`benchmark` and `tune-threads`: measuring artefacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.benchmark import BenchmarkConfig
from slimformer.commands.options import (
    DataDirOption,
    DataOption,
    LabelColumnOption,
    TextColumnOption,
    load_data_option,
)
from slimformer.config import help_text


def benchmark(
    models: Annotated[list[str], typer.Argument(help="Model folders (PyTorch checkpoints or ONNX folders).")],
    data: DataOption = "clinc150",
    data_dir: DataDirOption = None,
    text_column: TextColumnOption = "text",
    label_column: LabelColumnOption = "label",
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: all cores).")] = None,
    max_samples: Annotated[int | None, typer.Option("--max-samples", help="Evaluation rows (default all).")] = None,
    latency_samples: Annotated[int, typer.Option("--latency-samples", help="Batch-1 queries timed.")] = 1000,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up calls.")] = 20,
    rounds: Annotated[
        int, typer.Option(help="Latency rounds: the models take turns, so machine noise hits them alike.")
    ] = 5,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the results JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the accuracy-vs-latency plot (PNG).")] = None,
    isolate: Annotated[bool, typer.Option(help="Run each model in a fresh process.")] = True,
    profile: Annotated[bool, typer.Option(help=help_text(BenchmarkConfig, "profile"))] = False,
) -> None:
    """Accuracy, latency (mean ± std, p50/p95/p99), throughput, size and memory of each model."""
    from slimformer.artifacts import write_json
    from slimformer.benchmark import benchmark_models, print_table, write_plot

    splits = load_data_option(data, data_dir, text_column, label_column)
    config = BenchmarkConfig(
        threads=threads,
        max_samples=max_samples,
        latency_samples=latency_samples,
        warmup=warmup,
        rounds=rounds,
        split=split,
        isolate=isolate,
        profile=profile,
    )
    report = benchmark_models(models, splits, config)
    print_table(report)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json(output, report)
        typer.echo(f"results written to {output}")
    if plot:
        write_plot(report["results"], plot)
        typer.echo(f"plot written to {plot}")


def tune_threads(
    folder: Annotated[str, typer.Argument(help="ONNX model folder (model.onnx, tokenizer.json, config.json).")],
    data: DataOption = "clinc150",
    data_dir: DataDirOption = None,
    text_column: TextColumnOption = "text",
    label_column: LabelColumnOption = "label",
    split: Annotated[str, typer.Option(help="Split the queries are drawn from.")] = "test",
    queries: Annotated[int, typer.Option(help="Batch-1 queries timed at each setting.")] = 200,
    max_threads: Annotated[
        int | None, typer.Option("--max-threads", help="Most intra-op threads tried (default: every core).")
    ] = None,
) -> None:
    """Time batch 1 at 1..N intra-op threads, spinning on and off; record the fastest in the folder's session.json."""
    from slimformer.data import column
    from slimformer.errors import ConfigError
    from slimformer.models import resolve_model_path
    from slimformer.threads import print_sweep
    from slimformer.threads import tune_threads as tune
    from slimformer.timing import sample_queries

    if queries < 1:
        raise ConfigError(f"queries must be >= 1, got {queries}")
    model = resolve_model_path(folder)
    texts = column(load_data_option(data, data_dir, text_column, label_column).split(split), "text")
    print_sweep(tune(model, sample_queries(texts, queries), max_threads), typer.echo)


def register(app: typer.Typer) -> None:
    app.command()(benchmark)
    app.command(name="tune-threads")(tune_threads)
