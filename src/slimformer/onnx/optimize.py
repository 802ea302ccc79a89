"""`slimformer optimize`: ONNX Runtime's transformer optimizer on an exported folder, fusions counted.

``onnxruntime.transformers.optimizer.optimize_model`` rewrites the BERT-style subgraphs into fused contrib
ops (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu). A model whose attention is not
fused runs much slower and quantizes worse, so the counts are recorded and a missing fusion is a warning.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from slimformer.artifacts import atomic_output_dir, write_metrics
from slimformer.errors import ConfigError, ModelError
from slimformer.models import fit_max_length
from slimformer.onnx.embeddings import compact_embedding_rows
from slimformer.onnx.runtime import (
    BUILTIN_SENTENCES,
    GRAPH_LEVELS,
    ONNX_FILE,
    copy_model_files,
    encode_batches,
    encoder_shape,
    first_line,
    make_session,
    onnx_folder,
    onnx_logits,
    parity,
    write_session_file,
)

OPTIMIZATION_LEVELS = (0, 1, 2, 99)
# the fused ops the issue asks to count, in the order a BERT layer uses them
REPORTED_FUSIONS = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "LayerNormalization",
)
# transformers model types the "bert" graph patterns of the optimizer match
BERT_LIKE = {"bert", "slimbert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet", "albert"}


@dataclass
class OptimizeConfig:
    """Options of `slimformer optimize`."""

    level: int = 2  # ORT level before fusion: 0 fusions only, 1 basic, 2 extended, 99 all (hardware-specific)
    num_heads: int | None = None  # attention heads (None: from config.json)
    hidden_size: int | None = None  # attention width, heads x head size (None: from config.json)
    model_type: str = "bert"  # ORT optimizer graph patterns ("bert" covers BERT, RoBERTa, DistilBERT, MiniLM)
    parity_tolerance: float = 1e-3  # largest |logit difference| vs the unoptimized graph accepted
    max_length: int = 128  # saved in session.json
    threads: int | None = None  # intra-op threads saved in session.json (None: every core at load time)
    graph_optimization_level: str = "all"  # ONNX Runtime session level saved in session.json

    def validate(self) -> None:
        if self.level not in OPTIMIZATION_LEVELS:
            raise ConfigError(f"optimization level must be one of {OPTIMIZATION_LEVELS}, got {self.level}")
        if self.parity_tolerance <= 0:
            raise ConfigError(f"parity tolerance must be > 0, got {self.parity_tolerance}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.graph_optimization_level not in GRAPH_LEVELS:
            raise ConfigError(f"graph optimization level must be one of {', '.join(GRAPH_LEVELS)}")


def optimize_onnx(
    onnx_dir: str | Path,
    output: str | Path,
    config: OptimizeConfig | None = None,
    data: Any = None,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Optimize the ONNX folder `onnx_dir` (from `export_onnx`) into `output`: fused model.onnx, tokenizer,
    config.json, session.json and metrics.json with the fusion counts and parity vs the input graph.

    Warns (and records a warning) when fewer Attention fusions than layers were made. `data` and `teacher`
    are part of the stage contract and unused here. Returns the metrics.
    """
    config = config or OptimizeConfig()
    config.validate()
    source = onnx_folder(onnx_dir)
    config = replace(config, max_length=fit_max_length(source, config.max_length))  # at most the model's limit
    shape = encoder_shape(source)
    num_heads = config.num_heads or shape["num_heads"]
    hidden_size = config.hidden_size or shape["attention_size"]
    if not num_heads or not hidden_size:
        raise ModelError(f"{source}/config.json names no attention heads / hidden size; pass them explicitly")
    if hidden_size % num_heads:
        raise ConfigError(f"hidden size {hidden_size} is not a multiple of {num_heads} attention heads")

    with atomic_output_dir(output) as folder:
        started = time.perf_counter()
        fusions, optimizer_warnings = _run_optimizer(
            source / ONNX_FILE, folder / ONNX_FILE, config, num_heads, hidden_size
        )
        optimize_seconds = time.perf_counter() - started
        embedding_rows = compact_embedding_rows(folder / ONNX_FILE, folder / ONNX_FILE)
        copy_model_files(source, folder)
        check = _parity_with_input(source, folder, config)
        if check["max_abs_logit_diff"] > config.parity_tolerance:
            raise ModelError(
                f"the optimized graph drifts from {source}: max |logit difference| "
                f"{check['max_abs_logit_diff']:.2e} > {config.parity_tolerance:.0e}; try a lower --level"
            )
        layers = shape["num_layers"]
        attention_fused = fusions.get("Attention", 0) + fusions.get("MultiHeadAttention", 0)
        problems = list(optimizer_warnings)
        if layers and attention_fused < layers:
            problems.append(
                f"attention fused in {attention_fused} of {layers} layers: export with eager attention and the "
                "TorchScript exporter (slimformer export does), or check --num-heads/--hidden-size"
            )
        for problem in problems:
            warnings.warn(problem, stacklevel=2)
        settings = write_session_file(folder, config.threads, config.max_length, config.graph_optimization_level)
        metrics = {
            "stage": "optimize",
            "source_model": str(onnx_dir),
            "config": asdict(config),
            "optimizer": "onnxruntime.transformers.optimizer.optimize_model",
            "optimizer_model_type": config.model_type,
            "num_heads": num_heads,
            "hidden_size": hidden_size,
            "num_layers": layers,
            "fusions": {name: fusions.get(name, 0) for name in REPORTED_FUSIONS},
            "attention_fused_layers": attention_fused,
            "attention_fully_fused": bool(layers) and attention_fused == layers,
            "portable": config.level <= 2,  # level 99 adds CPU-specific layout transforms
            "optimize_seconds": round(optimize_seconds, 2),
            "onnx_size_mb_before": round((source / ONNX_FILE).stat().st_size / 1e6, 2),
            "onnx_size_mb": round((folder / ONNX_FILE).stat().st_size / 1e6, 2),
            "parity_vs_input": check,
            "embedding_rows": embedding_rows,  # repeated rows stored once (vocabulary clustering), else None
            "warnings": problems,
            "session": settings,
        }
        write_metrics(folder, metrics)
    return metrics


def fused_operator_counts(model_path: str | Path) -> dict[str, int]:
    """How many nodes of each reported fused op type a saved ONNX graph holds."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    counts = {name: 0 for name in REPORTED_FUSIONS}
    for node in graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts


def _run_optimizer(
    source: Path, destination: Path, config: OptimizeConfig, num_heads: int, hidden_size: int
) -> tuple[dict[str, int], list[str]]:
    from onnxruntime.transformers import optimizer

    problems = []
    if config.model_type not in optimizer.MODEL_TYPES:
        raise ConfigError(f"unknown optimizer model type {config.model_type!r}; e.g. bert")
    model_type = encoder_shape(source.parent)["model_type"]
    if config.model_type == "bert" and model_type not in BERT_LIKE:
        problems.append(f"model type {model_type!r} is not BERT-like; the optimizer may fuse little")
    quiet = logging.getLogger("onnxruntime.transformers")
    previous = quiet.level
    quiet.setLevel(logging.ERROR)  # it logs every fusion pass at INFO/WARNING
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimizer.optimize_model(
                str(source),
                model_type=config.model_type,
                num_heads=num_heads,
                hidden_size=hidden_size,
                opt_level=config.level,
                use_gpu=False,
            )
        optimized.save_model_to_file(str(destination))
    except Exception as exc:  # ORT's optimizer raises assorted types on graphs it cannot handle
        raise ModelError(f"onnxruntime's optimizer failed on {source}: {first_line(exc)}") from exc
    finally:
        quiet.setLevel(previous)
    return dict(optimized.get_fused_operator_statistics()), problems


def _parity_with_input(source: Path, folder: Path, config: OptimizeConfig) -> dict[str, Any]:
    from slimformer.models import load_tokenizer

    encoded = encode_batches(load_tokenizer(source), list(BUILTIN_SENTENCES), config.max_length)
    reference = onnx_logits(make_session(source / ONNX_FILE, config.threads), encoded)
    optimized = onnx_logits(make_session(folder / ONNX_FILE, config.threads), encoded)
    return {**parity(reference, optimized), "reference": "input ONNX graph", "texts": "built-in sentences"}
