"""`finetune` and `benchmark`: the foundation commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.options import (
    DataDirOption,
    DataOption,
    LabelColumnOption,
    TextColumnOption,
    load_data_option,
)


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
) -> None:
    """Accuracy, latency (mean ± std, p50/p95/p99), throughput, size and memory of each model."""
    from slimformer.artifacts import write_json
    from slimformer.benchmark import BenchmarkConfig, benchmark_models, print_table, write_plot

    splits = load_data_option(data, data_dir, text_column, label_column)
    config = BenchmarkConfig(
        threads=threads,
        max_samples=max_samples,
        latency_samples=latency_samples,
        warmup=warmup,
        rounds=rounds,
        split=split,
        isolate=isolate,
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


def register(app: typer.Typer) -> None:
    app.command()(benchmark)
