"""`slimformer optimize`: ONNX Runtime's transformer optimizer on an exported folder, fusions counted.

``onnxruntime.transformers.optimizer.optimize_model`` rewrites the BERT-style subgraphs into fused contrib
ops (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu). A model whose attention is not
fused runs much slower and quantizes worse, so the counts are recorded and a missing fusion is a warning.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from slimformer.artifacts import Session, StageResult
from slimformer.config import StageConfig, option
from slimformer.envelope import Stage, run_stage
from slimformer.errors import ConfigError, ModelError
from slimformer.onnx.embeddings import compact_embedding_rows
from slimformer.onnx.runtime import (
    BUILTIN_SENTENCES,
    GRAPH_LEVELS,
    ONNX_FILE,
    copy_model_files,
    encoder_shape,
    first_line,
    onnx_folder,
    parity,
)
from slimformer.threads import THREADS_HELP

OPTIMIZATION_LEVELS = (0, 1, 2, 99)
ORT_WARNINGS, ORT_ERRORS_ONLY = 2, 3  # onnxruntime logger severities (its default logs warnings)
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


@dataclass
class OptimizeConfig(StageConfig):
    """Options of `slimformer optimize`."""

    uses_data: ClassVar[str] = "none"  # parity against the input graph on built-in sentences

    level: int = option(
        2,
        "ORT level before fusion: 0 fusions only, 1 basic, 2 extended, 99 all (CPU-specific only for convolutions)",
    )
    num_heads: int | None = option(None, "Attention heads (None: from config.json)")
    hidden_size: int | None = option(None, "Attention width, heads x head size (None: from config.json)")
    model_type: str | None = option(None, "ORT optimizer graph patterns (None: the family's, see slimformer.families)")
    parity_tolerance: float = option(1e-3, "Largest |logit difference| vs the unoptimized graph accepted.")
    first_token_tail: bool = option(
        True, "Run the last layer's projection, LayerNorms and FFN on the first token only (the one classified)"
    )
    split_skip_layernorm: bool = option(
        True, "Rewrite fused SkipLayerNormalization as Add + LayerNormalization (ORT's CPU kernel is slower)"
    )
    biased_attention: bool = option(
        True, "Fuse attention with an additive score bias ORT cannot fuse (MPNet) into MultiHeadAttention nodes"
    )
    max_length: int | None = option(None, "Truncation saved in session.json (default: the source's, else 128).")
    threads: int | None = option(None, THREADS_HELP)
    graph_optimization_level: str = option("all", "ONNX Runtime session level saved in session.json.")

    def validate(self) -> None:
        if self.level not in OPTIMIZATION_LEVELS:
            raise ConfigError(f"optimization level must be one of {OPTIMIZATION_LEVELS}, got {self.level}")
        if self.parity_tolerance <= 0:
            raise ConfigError(f"parity tolerance must be > 0, got {self.parity_tolerance}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.graph_optimization_level not in GRAPH_LEVELS:
            raise ConfigError(f"graph optimization level must be one of {', '.join(GRAPH_LEVELS)}")
        if self.model_type is not None:
            from onnxruntime.transformers.optimizer import MODEL_TYPES

            if self.model_type not in MODEL_TYPES:
                raise ConfigError(f"unknown optimizer model type {self.model_type!r}; e.g. bert (or leave it unset)")


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
    return run_stage(STAGE, onnx_dir, output, config, data, teacher)


def optimize_folder(
    source: Path, folder: Path, config: OptimizeConfig, data: Any = None, teacher: Path | None = None
) -> StageResult:
    """The optimize stage's body: ORT's fusions and slimformer's exact rewrites of `source`'s graph."""
    source = onnx_folder(source)
    shape = encoder_shape(source)
    num_heads = config.num_heads or shape["num_heads"]
    hidden_size = config.hidden_size or shape["attention_size"]
    if not num_heads or not hidden_size:
        raise ModelError(f"{source}/config.json names no attention heads / hidden size; pass them explicitly")
    if hidden_size % num_heads:
        raise ConfigError(f"hidden size {hidden_size} is not a multiple of {num_heads} attention heads")

    optimizer_type, problems = _optimizer_model_type(config, shape["model_type"])
    started = time.perf_counter()
    fusions = _run_optimizer(
        source / ONNX_FILE, folder / ONNX_FILE, config.level, optimizer_type, num_heads, hidden_size
    )
    optimize_seconds = time.perf_counter() - started
    embedding_rows = compact_embedding_rows(folder / ONNX_FILE, folder / ONNX_FILE)
    copy_model_files(source, folder)
    rewrites, check = _rewrite_checked(source, folder, config, num_heads)
    if check["max_abs_logit_diff"] > config.parity_tolerance:
        raise ModelError(
            f"the optimized graph drifts from {source}: max |logit difference| "
            f"{check['max_abs_logit_diff']:.2e} > {config.parity_tolerance:.0e}; try a lower --level"
        )
    layers = shape["num_layers"]
    rewritten = rewrites.get("biased_attention", {})
    if rewritten.get("applied"):  # slimformer's own fusion (MPNet): counted like ORT's
        fusions["MultiHeadAttention"] = fusions.get("MultiHeadAttention", 0) + rewritten["nodes"]
    attention_fused = fusions.get("Attention", 0) + fusions.get("MultiHeadAttention", 0)
    notes = fusion_notes(shape["model_type"], fusions, layers)
    problems += notes.pop("problems")
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    metrics = {
        "source_model": str(source),
        "config": asdict(config),
        "optimizer": "onnxruntime.transformers.optimizer.optimize_model",
        "optimizer_model_type": optimizer_type,
        "model_type": shape["model_type"],
        "num_heads": num_heads,
        "hidden_size": hidden_size,
        "num_layers": layers,
        "fusions": {name: fusions.get(name, 0) for name in REPORTED_FUSIONS},
        "attention_fused_layers": attention_fused,
        "attention_fully_fused": bool(layers) and attention_fused == layers,
        **notes,  # attention_fusion / embedding_fusion: what was fused, or why onnxruntime cannot
        "portable": config.level <= 2,  # level 99 adds CPU-specific layout transforms
        "optimize_seconds": round(optimize_seconds, 2),
        "onnx_size_mb_before": round((source / ONNX_FILE).stat().st_size / 1e6, 2),
        "onnx_size_mb": round((folder / ONNX_FILE).stat().st_size / 1e6, 2),
        "rewrites": rewrites,  # slimformer.onnx.rewrites: what each did, or why not
        "parity_vs_input": check,
        "embedding_rows": embedding_rows,  # repeated rows stored once (vocabulary clustering), else None
        "warnings": problems,
    }
    session = Session(config.max_length, config.threads, config.graph_optimization_level)
    return StageResult(metrics, session, thread_queries=list(BUILTIN_SENTENCES))


def _optimizer_model_type(config: OptimizeConfig, model_type: str) -> tuple[str, list[str]]:
    """The ORT optimizer model type: the explicit one, else the family's ("bert" for an unknown family, with
    a warning that it may fuse little)."""
    from slimformer.families import family_for_model_type

    if config.model_type is not None:
        return config.model_type, []
    try:
        return family_for_model_type(model_type).ort_model_type, []
    except ModelError as exc:
        return "bert", [f"{exc}; used onnxruntime's bert patterns, which may fuse little"]


def fusion_notes(model_type: str, fusions: dict[str, int], layers: int | None) -> dict[str, Any]:
    """{"attention_fusion", "embedding_fusion", "problems"}: each fusion's outcome in words; a shortfall the
    family should not have is a problem (a warning), one onnxruntime has no pattern for is a plain note."""
    from slimformer.families import family_for_model_type

    try:
        family = family_for_model_type(model_type)
    except ModelError:
        family = None
    attention_fused = fusions.get("Attention", 0) + fusions.get("MultiHeadAttention", 0)
    problems = []
    if family is not None and family.attention_fusion and not attention_fused:
        attention = family.attention_fusion
    else:
        attention = f"fused in {attention_fused} of {layers} layers"
        if layers and attention_fused < layers:
            problems.append(
                f"attention fused in {attention_fused} of {layers} layers: export with eager attention and "
                "the TorchScript exporter (slimformer export does), or check --num-heads/--hidden-size"
            )
    embedded = fusions.get("EmbedLayerNormalization", 0)
    if embedded or family is None or not family.embedding_fusion:
        embedding = "fused" if embedded else "not fused"
    else:
        embedding = family.embedding_fusion
    return {"attention_fusion": attention, "embedding_fusion": embedding, "problems": problems}


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
    source: Path, destination: Path, level: int, model_type: str, num_heads: int, hidden_size: int
) -> dict[str, int]:
    import onnxruntime as ort
    from onnxruntime.transformers import optimizer

    # it logs every fusion pass at INFO/WARNING, under loggers named after its modules (fusion_attention, ...), and
    # at level 99 ONNX Runtime warns that a graph saved after its NCHWc layout pass may be specific to this CPU:
    # that pass rewrites only convolutions, which encoders have none of (a test checks the saved graph)
    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(ORT_ERRORS_ONLY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimizer.optimize_model(
                str(source),
                model_type=model_type,
                num_heads=num_heads,
                hidden_size=hidden_size,
                opt_level=level,
                use_gpu=False,
            )
        optimized.save_model_to_file(str(destination))
    except Exception as exc:  # ORT's optimizer raises assorted types on graphs it cannot handle
        raise ModelError(f"onnxruntime's optimizer failed on {source}: {first_line(exc)}") from exc
    finally:
        logging.disable(logging.NOTSET)
        ort.set_default_logger_severity(ORT_WARNINGS)
    return dict(optimized.get_fused_operator_statistics())


def _rewrite_checked(
    source: Path, folder: Path, config: OptimizeConfig, num_heads: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rewrites (slimformer.onnx.rewrites) on the fused graph, and parity with the input graph; rewrites
    that break parity (or the graph) are dropped, with the reason."""
    from slimformer.onnx.rewrites import rewrite_graph

    path = folder / ONNX_FILE
    fused = path.read_bytes()
    rewrites = rewrite_graph(
        str(path), config.first_token_tail, config.split_skip_layernorm, config.biased_attention, num_heads
    )
    if not any(report["applied"] for report in rewrites.values()):
        return rewrites, _parity_with_input(source, folder, config)
    try:
        check = _parity_with_input(source, folder, config)
        failure = "" if check["max_abs_logit_diff"] <= config.parity_tolerance else "they broke parity"
    except Exception as exc:  # a rewritten graph ORT cannot load or run: keep the fused one
        failure = f"ONNX Runtime failed on the rewritten graph: {first_line(exc)}"
    if not failure:
        return rewrites, check
    path.write_bytes(fused)
    for report in rewrites.values():
        report.update(applied=False, nodes=0, reason=f"dropped: {failure}")
    return rewrites, _parity_with_input(source, folder, config)


def _parity_with_input(source: Path, folder: Path, config: OptimizeConfig) -> dict[str, Any]:
    from slimformer.predictor import OnnxPredictor

    texts = list(BUILTIN_SENTENCES)
    graphs = (source / ONNX_FILE, folder / ONNX_FILE)
    reference, optimized = (
        OnnxPredictor.from_file(graph, source, config.threads, config.max_length).predict_logits(texts, 64)
        for graph in graphs
    )
    return {**parity(reference, optimized), "reference": "input ONNX graph", "texts": "built-in sentences"}


STAGE = Stage(
    "optimize",
    OptimizeConfig,
    optimize_folder,
    "Fuse an exported graph with ONNX Runtime's transformer optimizer; fusion counts recorded.",
)
