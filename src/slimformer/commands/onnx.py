"""`export`, `optimize` and `quantize`: ONNX export, ONNX Runtime graph optimization and INT8 quantization.

Flag names follow optimum-onnx where it has one (`--output`, `--per-channel`, `--level`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slimformer.commands.options import (
    DataDirOption,
    LabelColumnOption,
    OutputOption,
    SeedOption,
    TextColumnOption,
    load_data_option,
)

NO_DATA = "none"
ModelDirArgument = Annotated[Path, typer.Argument(help="Fine-tuned classifier folder (PyTorch checkpoint).")]
ParityDataOption = Annotated[
    str,
    typer.Option(
        "--data",
        help="Dataset whose validation split checks parity/accuracy: clinc150[:config], a folder or a file; "
        f"'{NO_DATA}' uses a few built-in sentences.",
    ),
]
ThreadsOption = Annotated[
    int | None, typer.Option("--threads", help="Intra-op threads saved in session.json (default: all cores).")
]
MaxLengthOption = Annotated[int, typer.Option("--max-length", help="Truncate texts to this many tokens.")]


def _load_data(data: str, data_dir: Path | None, text_column: str, label_column: str, seed: int = 42) -> Any:
    return None if data == NO_DATA else load_data_option(data, data_dir, text_column, label_column, seed)


def export(
    model_dir: ModelDirArgument,
    output: OutputOption,
    data: ParityDataOption = "clinc150",
    data_dir: DataDirOption = None,
    text_column: TextColumnOption = "text",
    label_column: LabelColumnOption = "label",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (17-20).")] = 17,
    parity_tolerance: Annotated[
        float, typer.Option("--atol", help="Largest |logit difference| vs PyTorch accepted.")
    ] = 1e-4,
    parity_examples: Annotated[
        int | None, typer.Option("--parity-examples", help="Validation examples compared (default all).")
    ] = None,
    max_length: MaxLengthOption = 128,
    threads: ThreadsOption = None,
) -> None:
    """Export a classifier to ONNX (dynamic batch/sequence axes) and check it against PyTorch; writes
    model.onnx + tokenizer + config.json + parity.json + metrics.json."""
    from slimformer.commands.options import print_json
    from slimformer.onnx import ExportConfig, export_onnx

    config = ExportConfig(
        opset=opset,
        parity_tolerance=parity_tolerance,
        parity_examples=parity_examples,
        max_length=max_length,
        threads=threads,
    )
    config.validate()
    splits = _load_data(data, data_dir, text_column, label_column)
    metrics = export_onnx(model_dir, output, config, splits)
    print_json({"output": str(output), "parity": metrics["parity"], "validation": metrics.get("validation")})


def optimize(
    onnx_dir: Annotated[Path, typer.Argument(help="ONNX folder written by `slimformer export`.")],
    output: OutputOption,
    level: Annotated[
        int, typer.Option("--level", help="ORT optimization before fusion: 0, 1 (basic), 2 (extended), 99 (all).")
    ] = 2,
    num_heads: Annotated[
        int | None, typer.Option("--num-heads", help="Attention heads (default: from config.json).")
    ] = None,
    hidden_size: Annotated[
        int | None, typer.Option("--hidden-size", help="Attention width, heads x head size (default: config.json).")
    ] = None,
    model_type: Annotated[str, typer.Option("--model-type", help="ORT optimizer model type.")] = "bert",
    max_length: MaxLengthOption = 128,
    threads: ThreadsOption = None,
) -> None:
    """Fuse an exported ONNX graph with ONNX Runtime's transformer optimizer; records the fusion counts and
    warns when attention was not fused."""
    from slimformer.commands.options import print_json
    from slimformer.onnx import OptimizeConfig, optimize_onnx

    config = OptimizeConfig(
        level=level,
        num_heads=num_heads,
        hidden_size=hidden_size,
        model_type=model_type,
        max_length=max_length,
        threads=threads,
    )
    metrics = optimize_onnx(onnx_dir, output, config)
    print_json(
        {
            "output": str(output),
            "fusions": metrics["fusions"],
            "attention_fully_fused": metrics["attention_fully_fused"],
            "warnings": metrics["warnings"],
        }
    )


def quantize(
    model_dir: Annotated[
        Path, typer.Argument(help="Classifier checkpoint, or an (optimized) ONNX folder for dynamic/static.")
    ],
    output: OutputOption,
    method: Annotated[str, typer.Option("--method", help="dynamic | static | torch-dynamic | qat.")] = "dynamic",
    per_channel: Annotated[
        bool, typer.Option("--per-channel/--per-tensor", help="One weight scale per output channel.")
    ] = True,
    reduce_range: Annotated[
        bool | None,
        typer.Option("--reduce-range/--no-reduce-range", help="7-bit weights (default: only on CPUs without VNNI)."),
    ] = None,
    embeddings: Annotated[
        bool, typer.Option("--embeddings/--no-embeddings", help="Quantize the embedding tables too.")
    ] = True,
    calibration_samples: Annotated[
        int, typer.Option("--calibration-samples", help="static: training examples to calibrate on.")
    ] = 256,
    calibration_method: Annotated[
        str, typer.Option("--calibration-method", help="static: minmax | entropy | percentile.")
    ] = "minmax",
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            "--max-accuracy-drop",
            help="Accuracy-aware: keep sensitive layers fp32 until the "
            "validation accuracy drop is at most this many points.",
        ),
    ] = None,
    level: Annotated[int, typer.Option("--level", help="ORT optimizer level when a checkpoint is exported first.")] = 2,
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="qat: fp32 teacher (default: the model itself).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="qat: weight of the hard-label loss (1 = no teacher).")] = 0.5,
    temperature: Annotated[float, typer.Option(help="qat: distillation temperature.")] = 2.0,
    epochs: Annotated[float, typer.Option(help="qat: passes over the training split.")] = 1.0,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="qat: peak learning rate.")] = 2e-5,
    batch_size: Annotated[int, typer.Option("--batch-size", help="qat: training batch size.")] = 32,
    max_train_samples: Annotated[
        int | None, typer.Option("--max-train-samples", help="Subsample training rows (qat, calibration).")
    ] = None,
    max_eval_samples: Annotated[
        int | None, typer.Option("--max-eval-samples", help="Validation rows for accuracy (default all).")
    ] = None,
    data: ParityDataOption = "clinc150",
    data_dir: DataDirOption = None,
    text_column: TextColumnOption = "text",
    label_column: LabelColumnOption = "label",
    max_length: MaxLengthOption = 128,
    threads: ThreadsOption = None,
    seed: SeedOption = 42,
) -> None:
    """Quantize a classifier to INT8 and measure it against fp32 (accuracy delta, argmax agreement)."""
    from slimformer.commands.options import print_json
    from slimformer.onnx import QuantizeConfig
    from slimformer.onnx import quantize as run_quantize

    config = QuantizeConfig(
        method=method,
        per_channel=per_channel,
        reduce_range=reduce_range,
        quantize_embeddings=embeddings,
        calibration_samples=calibration_samples,
        calibration_method=calibration_method,
        max_accuracy_drop=max_accuracy_drop,
        optimize_level=level,
        max_eval_samples=max_eval_samples,
        max_length=max_length,
        threads=threads,
        teacher=str(teacher) if teacher else None,
        alpha=alpha,
        temperature=temperature,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_train_samples=max_train_samples,
        seed=seed,
    )
    splits = _load_data(data, data_dir, text_column, label_column, seed)
    config.validate(splits)  # before any model work, so a wrong flag fails at once
    metrics = run_quantize(model_dir, output, config, splits)
    summary = {
        key: metrics.get(key)
        for key in (
            "method",
            "reduce_range",
            "reduce_range_reason",
            "size_mb",
            "accuracy_delta_points",
            "agreement",
            "accuracy_aware",
        )
    }
    print_json({"output": str(output), **summary})


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command()(optimize)
    app.command()(quantize)
