"""`distill` and `search`: knowledge distillation into a smaller student, and an Optuna search over its
settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimformer.commands.options import (
    DataDirOption,
    DataOption,
    LabelColumnOption,
    OutputOption,
    SeedOption,
    TextColumnOption,
    load_data_option,
)
from slimformer.errors import ConfigError

TeacherOption = Annotated[Path, typer.Option("--teacher", help="Fine-tuned teacher classifier folder.")]
StudentOption = Annotated[
    str | None, typer.Option("--student", help="Student checkpoint folder, or 'default' (packaged MiniLM-L6).")
]
StudentLayersOption = Annotated[
    int | None,
    typer.Option("--student-layers", help="Build the student from K evenly spaced teacher layers (incl. the last)."),
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", help="Training batch size.")]
MaxLengthOption = Annotated[int, typer.Option("--max-length", help="Truncate texts to this many tokens.")]
GroupByLengthOption = Annotated[
    bool, typer.Option("--group-by-length/--no-group-by-length", help="Batch texts of similar length.")
]
MaxTrainOption = Annotated[int | None, typer.Option("--max-train-samples", help="Subsample training rows.")]
MaxEvalOption = Annotated[int | None, typer.Option("--max-eval-samples", help="Subsample eval rows.")]
CacheDirOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Teacher-logit cache (default: $SLIMFORMER_CACHE_DIR or ~/.cache/slimformer)."),
]


def distill(
    teacher: TeacherOption,
    output: OutputOption,
    student: StudentOption = None,
    student_layers: StudentLayersOption = None,
    data: DataOption = "clinc150",
    data_dir: DataDirOption = None,
    text_column: TextColumnOption = "text",
    label_column: LabelColumnOption = "label",
    alpha: Annotated[float, typer.Option(help="Weight of the hard-label loss (1 = plain fine-tuning).")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of teacher and student.")] = 2.0,
    epochs: Annotated[float, typer.Option(help="Passes over the training split.")] = 5.0,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="Peak learning rate.")] = 1e-4,
    batch_size: BatchSizeOption = 32,
    max_length: MaxLengthOption = 64,
    group_by_length: GroupByLengthOption = True,
    max_train_samples: MaxTrainOption = None,
    max_eval_samples: MaxEvalOption = None,
    cache_dir: CacheDirOption = None,
    seed: SeedOption = 42,
) -> None:
    """Distil a fine-tuned teacher into a smaller student; writes an HF checkpoint + metrics.json."""
    from slimformer.commands.options import print_json
    from slimformer.distill import DistillConfig
    from slimformer.distill import distill as run_distill

    config = DistillConfig(
        student=student,
        student_layers=student_layers,
        alpha=alpha,
        temperature=temperature,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        group_by_length=group_by_length,
        seed=seed,
        max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples,
        cache_dir=str(cache_dir) if cache_dir else None,
    )
    config.validate()  # before the data loads, so a wrong flag fails at once
    splits = load_data_option(data, data_dir, text_column, label_column, seed)
    metrics = run_distill(teacher, output, config, splits)
    print_json(
        {
            "output": str(output),
            "validation": metrics["validation"],
            "test": metrics["test"],
            "teacher_logits": metrics["teacher_logits"],
        }
    )


def search(
    teacher: TeacherOption,
    output: OutputOption,
    student: StudentOption = None,
    student_layers: StudentLayersOption = None,
    layers_choices: Annotated[
        str | None, typer.Option("--layers-choices", help="Search the student depth too, e.g. 2,3,4.")
    ] = None,
    data: DataOption = "clinc150",
    data_dir: DataDirOption = None,
    text_column: TextColumnOption = "text",
    label_column: LabelColumnOption = "label",
    trials: Annotated[int, typer.Option(help="Total finished trials the study should hold (resumes).")] = 8,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default sqlite:///OUTPUT/study.db; postgresql://...).")
    ] = None,
    study_name: Annotated[str | None, typer.Option("--study-name", help="Default: from teacher + data.")] = None,
    objective: Annotated[str, typer.Option(help="accuracy, or accuracy,latency for a Pareto front.")] = "accuracy",
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", help="Cap on the epochs range.")] = None,
    epochs_range: Annotated[str, typer.Option("--epochs-range", help="LOW,HIGH (int).")] = "5,10",
    alpha_range: Annotated[str, typer.Option("--alpha-range", help="LOW,HIGH.")] = "0,1",
    temperature_range: Annotated[str, typer.Option("--temperature-range", help="LOW,HIGH (int).")] = "2,20",
    learning_rate_range: Annotated[str, typer.Option("--learning-rate-range", help="LOW,HIGH (log).")] = "1e-5,1e-3",
    startup_trials: Annotated[int, typer.Option("--startup-trials", help="Random trials before TPE.")] = 4,
    latency_queries: Annotated[int, typer.Option("--latency-queries", help="Batch-1 queries timed.")] = 50,
    batch_size: BatchSizeOption = 32,
    max_length: MaxLengthOption = 64,
    max_train_samples: MaxTrainOption = None,
    max_eval_samples: MaxEvalOption = None,
    cache_dir: CacheDirOption = None,
    seed: SeedOption = 42,
) -> None:
    """Optuna search over alpha, temperature, epochs and learning rate; re-running the command resumes it."""
    from slimformer.commands.options import print_json
    from slimformer.search import SearchConfig
    from slimformer.search import search as run_search

    config = SearchConfig(
        trials=trials,
        objective=objective,
        storage=storage,
        study_name=study_name,
        student=student,
        student_layers=student_layers,
        layers_choices=tuple(int(k) for k in _parse_range(layers_choices, "--layers-choices", None))
        if layers_choices
        else None,
        epochs_range=_parse_range(epochs_range, "--epochs-range", int),
        max_epochs=max_epochs,
        alpha_range=_parse_range(alpha_range, "--alpha-range", float),
        temperature_range=_parse_range(temperature_range, "--temperature-range", int),
        learning_rate_range=_parse_range(learning_rate_range, "--learning-rate-range", float),
        startup_trials=startup_trials,
        latency_queries=latency_queries,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples,
        cache_dir=str(cache_dir) if cache_dir else None,
    )
    config.validate()
    splits = load_data_option(data, data_dir, text_column, label_column, seed)
    metrics = run_search(teacher, output, config, splits)
    print_json(
        {
            "output": str(output),
            "study_name": metrics["study_name"],
            "trials": metrics["trials"],
            "best_params": metrics["best_params"],
            "best_values": metrics["best_values"],
            "test": metrics["test"],
        }
    )


def _parse_range(text: str, flag: str, kind: type | None) -> tuple:
    """'LOW,HIGH' -> (LOW, HIGH) of `kind`; with kind None, any number of ints."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts) if kind is None else tuple(kind(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if kind is not None and len(values) != 2:
        raise ConfigError(f"{flag} takes LOW,HIGH, got {text!r}")
    if not values:
        raise ConfigError(f"{flag} is empty")
    return values


def register(app: typer.Typer) -> None:
    app.command()(distill)
    app.command()(search)
