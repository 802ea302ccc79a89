"""`prune`: magnitude, movement, structured or vocabulary pruning of a fine-tuned classifier."""

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


def prune(
    model_dir: Annotated[Path, typer.Argument(help="Fine-tuned classifier checkpoint folder to prune.")],
    output: OutputOption,
    method: Annotated[
        str, typer.Option(help="magnitude | movement | structured (FFN neurons) | vocab (embedding rows).")
    ] = "magnitude",
    sparsity: Annotated[
        list[float] | None,
        typer.Option(
            help="Final sparsity of the encoder's linear weights (structured: fraction of FFN neurons removed). "
            "Repeat to sweep several levels and plot accuracy against sparsity."
        ),
    ] = None,
    teacher: Annotated[str | None, typer.Option(help="Classifier folder to distil from while pruning.")] = None,
    data: DataOption = "clinc150",
    data_dir: DataDirOption = None,
    text_column: TextColumnOption = "text",
    label_column: LabelColumnOption = "label",
    epochs: Annotated[float, typer.Option(help="Training passes (structured: recovery passes, 0 = none).")] = 3.0,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="Weights' learning rate.")] = 5e-5,
    scores_learning_rate: Annotated[
        float, typer.Option("--scores-learning-rate", help="Movement scores' learning rate.")
    ] = 1e-2,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 32,
    max_length: Annotated[int, typer.Option("--max-length", help="Truncate texts to this many tokens.")] = 64,
    initial_sparsity: Annotated[float, typer.Option("--initial-sparsity", help="s_i of the cubic schedule.")] = 0.0,
    pruning_frequency: Annotated[
        int, typer.Option("--pruning-frequency", help="dt: optimizer steps between mask updates.")
    ] = 10,
    alpha: Annotated[float, typer.Option(help="Hard-label weight when distilling (teacher gets 1 - alpha).")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Distillation temperature.")] = 2.0,
    ffn_fraction: Annotated[
        float | None, typer.Option("--ffn-fraction", help="Structured: FFN neurons removed (default: --sparsity).")
    ] = None,
    heads_fraction: Annotated[
        float,
        typer.Option(
            "--heads-fraction",
            help="Structured: attention heads removed per layer (the model is then saved as a SlimBERT).",
        ),
    ] = 0.0,
    importance: Annotated[
        str, typer.Option(help="Structured: neuron and head importance from magnitude | gradient | movement.")
    ] = "magnitude",
    vocab_unseen: Annotated[
        str,
        typer.Option(
            "--vocab-unseen",
            help="Vocab: unseen tokens share k-means centroid rows (cluster; tokenizer unchanged) or are spelt "
            "with the kept pieces (split; smaller PyTorch file).",
        ),
    ] = "cluster",
    vocab_clusters: Annotated[
        int, typer.Option("--vocab-clusters", help="Vocab, cluster: centroid rows for the unseen tokens.")
    ] = 1024,
    vocab_keep_frequent: Annotated[
        int, typer.Option("--vocab-keep-frequent", help="Vocab: also keep the first N vocabulary ids (frequent).")
    ] = 0,
    max_train_samples: Annotated[
        int | None, typer.Option("--max-train-samples", help="Subsample training rows.")
    ] = None,
    max_eval_samples: Annotated[int | None, typer.Option("--max-eval-samples", help="Subsample eval rows.")] = None,
    seed: SeedOption = 42,
) -> None:
    """Prune a classifier; writes a dense HF checkpoint with zeros (or a smaller one), compressed sparse
    weights and metrics.json (sparsity per layer, sizes, accuracy)."""
    from slimformer.commands.options import print_json
    from slimformer.prune.stage import PruneConfig, encoder_reduction, prune_sweep
    from slimformer.prune.stage import prune as run_prune

    levels = sparsity or [0.5 if method == "structured" else 0.9]
    config = PruneConfig(
        method=method, sparsity=levels[0], teacher=teacher, epochs=epochs, learning_rate=learning_rate,
        scores_learning_rate=scores_learning_rate, batch_size=batch_size, max_length=max_length, seed=seed,
        initial_sparsity=initial_sparsity, pruning_frequency=pruning_frequency, alpha=alpha,
        temperature=temperature, ffn_fraction=ffn_fraction, heads_fraction=heads_fraction, importance=importance,
        vocab_unseen=vocab_unseen,
        vocab_clusters=vocab_clusters,
        vocab_keep_frequent=vocab_keep_frequent,
        max_train_samples=max_train_samples, max_eval_samples=max_eval_samples,
    )  # fmt: skip
    for level in levels:  # fail on a bad option before any data or model is loaded
        PruneConfig(**{**config.__dict__, "sparsity": level}).validate()
    splits = load_data_option(data, data_dir, text_column, label_column, seed)
    if len(levels) == 1:
        metrics = run_prune(model_dir, output, config, splits)
        print_json({
            "output": str(output),
            "encoder_sparsity": encoder_reduction(metrics),
            "size": metrics.get("size") or metrics.get("vocabulary"),
            "validation": metrics["validation"],
            "test": metrics["test"],
        })  # fmt: skip
    else:
        print_json(prune_sweep(model_dir, splits, output, config, levels))


def register(app: typer.Typer) -> None:
    app.command()(prune)
