"""`slimformer export`: a transformers classifier to a self-contained ONNX folder, checked against PyTorch.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used with eager attention: measured
with torch 2.13 and onnxruntime 1.32 on MiniLM-L6, its graph gets one Attention fusion per layer (plus
EmbedLayerNormalization, SkipLayerNormalization, BiasGelu) in ONNX Runtime's BERT optimizer, while the
dynamo exporter's graph (torch 2.13's default) and SDPA attention get no Attention fusion at all.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from slimformer.artifacts import Session, StageResult, write_json
from slimformer.config import StageConfig, option
from slimformer.envelope import Stage, run_stage
from slimformer.errors import ConfigError, ModelError
from slimformer.evaluation import score_logits
from slimformer.onnx.runtime import (
    GRAPH_LEVELS,
    ONNX_FILE,
    first_line,
    parity,
    parity_texts,
)
from slimformer.threads import THREADS_HELP

if TYPE_CHECKING:
    from slimformer.data import DataSplits

PARITY_FILE = "parity.json"
PARITY_BATCH = 64  # texts per call when PyTorch and ONNX Runtime are compared (padded batches, as in serving)
EXPORTER = "torchscript (torch.onnx.export dynamo=False)"
EXPORTER_REASON = (
    "its graph gets Attention/EmbedLayerNormalization fusion in onnxruntime's BERT optimizer; the dynamo "
    "exporter's graph (torch 2.13 default) and SDPA attention get none"
)


@dataclass
class ExportConfig(StageConfig):
    """Options of `slimformer export`."""

    uses_data: ClassVar[str] = "optional"  # parity and accuracy on the validation split, else built-in sentences

    opset: int = option(17, "ONNX opset; >= 17 has LayerNormalization as one op.")
    max_length: int | None = option(None, "Truncate texts to this many tokens (default: the source's, else 128).")
    parity_tolerance: float = option(1e-4, "Largest |logit difference| vs PyTorch accepted for an fp32 export.")
    parity_examples: int | None = option(None, "Validation examples compared (None: all)")
    threads: int | None = option(None, THREADS_HELP)
    graph_optimization_level: str = option("all", "ONNX Runtime session level saved in session.json.")

    def validate(self) -> None:
        if not 17 <= self.opset <= 20:
            raise ConfigError(f"opset must be between 17 and 20 (the TorchScript exporter's range), got {self.opset}")
        if self.parity_tolerance <= 0:
            raise ConfigError(f"parity tolerance must be > 0, got {self.parity_tolerance}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max length must be >= 2, got {self.max_length}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.graph_optimization_level not in GRAPH_LEVELS:
            raise ConfigError(f"graph optimization level must be one of {', '.join(GRAPH_LEVELS)}")


def export_onnx(
    model_dir: str | Path,
    output: str | Path,
    config: ExportConfig | None = None,
    data: DataSplits | None = None,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Export the classifier checkpoint `model_dir` to `output` (model.onnx + tokenizer + config.json +
    session.json + parity.json + metrics.json) with dynamic batch and sequence axes.

    Parity vs PyTorch is measured on the validation split of `data` (else on built-in sentences); an export
    whose max |logit difference| exceeds ``config.parity_tolerance`` raises ModelError and writes nothing.
    Returns the metrics.
    """
    return run_stage(STAGE, model_dir, output, config, data, teacher)


def export_folder(
    source: Path, folder: Path, config: ExportConfig, data: DataSplits | None = None, teacher: Path | None = None
) -> StageResult:
    """The export stage's body: the checkpoint `source` as model.onnx (+ tokenizer, config.json, parity.json)."""
    from slimformer.models import check_classifier_fits, classifier_labels, load_tokenizer

    if (source / ONNX_FILE).is_file():
        raise ModelError(f"{source} is already an ONNX folder; export takes a PyTorch checkpoint")
    model_labels = classifier_labels(source)
    if model_labels is None:
        raise ModelError(f"{source} is a base model without a classification head; fine-tune it before exporting")
    if data is not None:
        check_classifier_fits(source, data.labels)
    tokenizer = load_tokenizer(source)
    model = _load_eager_classifier(source)

    texts, label_ids, parity_source = parity_texts(data, config.parity_examples)
    from slimformer.predictor import OnnxPredictor, TorchPredictor

    reference = TorchPredictor.from_model(model, tokenizer, config.max_length).predict_logits(texts, PARITY_BATCH)
    started = time.perf_counter()
    input_names = _export_graph(model, tokenizer, folder / ONNX_FILE, config.opset)
    export_seconds = time.perf_counter() - started
    tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)  # config.json with id2label: what the predictor reads labels from
    exported = OnnxPredictor.from_file(
        folder / ONNX_FILE, folder, config.threads, config.max_length, config.graph_optimization_level
    ).predict_logits(texts, PARITY_BATCH)
    report = _parity_report(source, reference, exported, parity_source, config)
    write_json(folder / PARITY_FILE, report)
    metrics: dict[str, Any] = {
        "source_model": str(source),
        "config": asdict(config),
        "exporter": EXPORTER,
        "exporter_reason": EXPORTER_REASON,
        "attention_implementation": "eager",
        "inputs": input_names,
        "dynamic_axes": {"inputs": ["batch", "sequence"], "logits": ["batch"]},
        "export_seconds": round(export_seconds, 2),
        "onnx_size_mb": round((folder / ONNX_FILE).stat().st_size / 1e6, 2),
        "parity": report,
    }
    if data is not None:
        metrics["data"] = data.name
        metrics["data_fingerprint"] = data.fingerprint
        metrics["validation"] = score_logits(exported, model_labels, label_ids, data)
        metrics["validation_pytorch"] = score_logits(reference, model_labels, label_ids, data)
    session = Session(config.max_length, config.threads, config.graph_optimization_level)
    return StageResult(metrics, session, thread_queries=texts)


def _parity_report(source: Path, reference: Any, exported: Any, texts_source: str, config: ExportConfig) -> dict:
    """Logit parity of the export against PyTorch; a ModelError (nothing written) beyond the tolerance."""
    report = {
        **parity(reference, exported),
        "reference": "pytorch fp32 (eager attention)",
        "texts": texts_source,
        "tolerance": config.parity_tolerance,
    }
    report["passed"] = report["max_abs_logit_diff"] <= config.parity_tolerance
    if not report["passed"]:
        raise ModelError(
            f"ONNX export of {source} is not faithful: max |logit difference| vs PyTorch is "
            f"{report['max_abs_logit_diff']:.2e} > {config.parity_tolerance:.0e} on {len(reference)} {texts_source}"
        )
    return report


def _load_eager_classifier(source: Path) -> Any:
    """The classifier with eager attention (the form ORT fuses); an unreadable weights file is a ModelError."""
    from safetensors import SafetensorError

    from slimformer.models import load_classifier

    try:
        return load_classifier(source, attn_implementation="eager").eval()
    except (SafetensorError, RuntimeError) as exc:  # corrupt file / tensor shapes that do not match the config
        raise ModelError(f"cannot load a classifier from {source}: {first_line(exc)}") from exc


def _export_graph(model: Any, tokenizer: Any, path: Path, opset: int) -> list[str]:
    """Trace `model` into `path` with dynamic batch/sequence axes; return the graph's input names."""
    import onnx
    import torch

    # batch 2 of unequal lengths: nothing batch- or length-specific gets folded into the graph
    sample = tokenizer(list(BUILTIN_SAMPLE), padding=True, return_tensors="pt")
    input_names = [name for name in tokenizer.model_input_names if name in sample]
    wrapper = _logits_only(model, input_names)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    dynamic_axes["logits"] = {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes are expected
            torch.onnx.export(
                wrapper,
                tuple(sample[name] for name in input_names),
                str(path),
                input_names=input_names,
                output_names=["logits"],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(str(path))
    except Exception as exc:  # the exporter raises many types; any of them means this model cannot be exported
        raise ModelError(f"torch.onnx.export failed for {type(model).__name__}: {first_line(exc)}") from exc
    return input_names


BUILTIN_SAMPLE = ("book a flight to paris", "what is the weather like in new york city tomorrow morning?")


def _logits_only(model: Any, input_names: list[str]) -> Any:
    """Wrap `model` so that positional tensors go in and the logits tensor (the graph's one output) comes out."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(input_names, tensors, strict=True))).logits

    return LogitsOnly().eval()


STAGE = Stage(
    "export",
    ExportConfig,
    export_folder,
    "Export a classifier to ONNX, parity-checked.",
)
