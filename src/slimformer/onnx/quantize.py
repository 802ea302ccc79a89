"""`slimformer quantize`: INT8 models, each compared with its fp32 reference on the validation split.

Methods (``QuantizeConfig.method``):

- ``dynamic``: ONNX Runtime dynamic quantization (int8 weights, per-channel by default, embeddings included;
  activations quantized per batch at run time). The fast path on CPU.
- ``static``: ONNX Runtime static QDQ quantization, activation ranges calibrated on N training examples
  (MinMax, Entropy or Percentile).
- ``torch-dynamic``: the book's ``torch.ao.quantization.quantize_dynamic`` on the Linear layers, kept as a
  baseline. PyTorch cannot save that model portably (only pickling it would), so the folder holds the fp32
  checkpoint plus ``quantization.json``; :func:`slimformer.load` applies the same quantization when loading.
- ``qat``: quantization-aware fine-tuning — every encoder Linear sees int8 fake-quantized weights and
  activations (the rounding ORT's dynamic quantization will apply), trained with the distillation loss
  against an fp32 teacher (the model itself unless another is given) — then exported and quantized with
  ORT dynamic quantization using the same settings.

With ``max_accuracy_drop``, the ONNX methods become accuracy-aware: when validation accuracy falls by more
than that many points, a sensitivity pass quantizes everything but one layer group at a time, and the most
sensitive groups are kept in fp32 (``nodes_to_exclude``) until the drop fits.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from slimformer.artifacts import atomic_output_dir, write_metrics, write_session
from slimformer.config import QUICK_MAX_EPOCHS, StageConfig, option
from slimformer.cpu import VNNI_FLAGS, isa_flags
from slimformer.errors import ConfigError, DataError, ModelError
from slimformer.evaluation import score_logits
from slimformer.onnx.embeddings import compact_embedding_rows
from slimformer.onnx.runtime import (
    ONNX_FILE,
    copy_model_files,
    parity,
    parity_texts,
)

if TYPE_CHECKING:
    from slimformer.data import DataSplits

QUANTIZATION_METHODS = ("dynamic", "static", "torch-dynamic", "qat")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# ops whose weights ORT dynamic quantization turns to int8 (Gather / EmbedLayerNormalization: embeddings;
# Gemm: the pooler and classifier, quantized as MatMulInteger)
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization")
# ops static QDQ quantization covers here: ORT has no QDQ form of the fused Attention op
STATIC_OPS = ("MatMul", "Gemm", "Gather")
EMBEDDING_OPS = ("Gather", "EmbedLayerNormalization")
# op types that show a graph was quantized, counted in metrics.json
QUANTIZED_OPS = (
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QAttention",
    "QEmbedLayerNormalization",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QuantizeLinear",
    "DequantizeLinear",
)


@dataclass
class QuantizeConfig(StageConfig):
    """Options of `slimformer quantize`."""

    uses_data: ClassVar[str] = "optional"  # dynamic without data: agreement on built-in sentences only

    method: str = option("dynamic", "Dynamic | static | torch-dynamic | qat.")
    per_channel: bool = option(True, "One weight scale per output channel (more accurate, about as fast)")
    reduce_range: bool | None = option(None, "7-bit weights; None: True exactly when the CPU lacks VNNI.")
    quantize_embeddings: bool = option(True, "Int8 word/position embeddings too (most of MiniLM's size)")
    calibration_samples: int = option(256, "Static: training examples the activation ranges are calibrated on.")
    calibration_method: str = option("minmax", "Static: minmax | entropy | percentile.")
    max_accuracy_drop: float | None = option(None, "Accuracy-aware mode: allowed validation accuracy loss in points.")
    max_eval_samples: int | None = option(None, "Validation rows used for accuracy (None: all)")
    sensitivity_samples: int | None = option(1000, "Validation rows used by the per-layer sensitivity pass.")
    max_length: int | None = option(None, "Truncate texts to this many tokens (default: the source's, else 128).")
    threads: int | None = option(None, "Intra-op threads saved in session.json (None: every core at load time)")
    # qat only
    alpha: float = option(0.5, "Weight of the hard-label loss; 1.0 = plain cross-entropy, no teacher.")
    temperature: float = option(2.0, "Distillation softmax temperature.")
    epochs: float = option(1.0, "QAT passes over the training split (a short fine-tune from the fp32 weights)")
    learning_rate: float = option(2e-5, "Small: QAT starts from trained weights.")
    batch_size: int = option(32, "QAT training batch size.")
    max_train_samples: int | None = option(None, "Subsample the training split (QAT and calibration)")
    seed: int = option(42, "Random seed (QAT, calibration rows).")

    @property
    def needs_teacher(self) -> bool:
        return self.method == "qat" and self.alpha < 1.0

    def quick(self) -> QuantizeConfig:
        return replace(self, epochs=min(self.epochs, QUICK_MAX_EPOCHS))

    def validate(self, data: Any = ...) -> None:
        """Option ranges; with `data` given (None included), also whether this method can run without data."""
        if self.method not in QUANTIZATION_METHODS:
            methods = ", ".join(QUANTIZATION_METHODS)
            raise ConfigError(f"unknown quantization method {self.method!r}; use one of {methods}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration method {self.calibration_method!r}; use one of {', '.join(CALIBRATION_METHODS)}"
            )
        if self.calibration_samples < 1:
            raise ConfigError(f"calibration samples must be >= 1, got {self.calibration_samples}")
        if self.max_accuracy_drop is not None and not -100 <= self.max_accuracy_drop <= 100:
            raise ConfigError(f"max accuracy drop is in points (0-100), got {self.max_accuracy_drop}")
        if self.max_accuracy_drop is not None and self.method == "torch-dynamic":
            raise ConfigError("accuracy-aware mode (--max-accuracy-drop) works on the ONNX methods, not torch-dynamic")
        if not 0 <= self.alpha <= 1 or self.temperature <= 0 or self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError("qat needs 0 <= alpha <= 1, temperature > 0, epochs > 0 and learning rate > 0")
        if data is None and (
            self.method in ("static", "qat") or self.max_accuracy_drop is not None
        ):  # `...` (the default) skips this check
            what = "accuracy-aware mode" if self.max_accuracy_drop is not None else f"method {self.method!r}"
            raise DataError(f"{what} needs a dataset (--data): it calibrates, trains or measures accuracy on it")


def choose_reduce_range(requested: bool | None) -> tuple[bool, str]:
    """reduce_range and why: asked for explicitly, or True exactly when the CPU has no VNNI instructions."""
    if requested is not None:
        return requested, "set explicitly"
    found = sorted(set(VNNI_FLAGS) & isa_flags())
    if found:
        return False, (
            f"CPU has VNNI ({', '.join(found)}): 8-bit products accumulate without saturation, "
            "so full 8-bit weights (onnxruntime's guidance for U8S8 on VNNI CPUs)"
        )
    return True, (
        "CPU has no VNNI: 7-bit weights avoid int16 saturation of U8S8 products "
        "(onnxruntime's guidance for x86 CPUs without VNNI)"
    )


def quantize(
    model_dir: str | Path,
    output: str | Path,
    config: QuantizeConfig,
    data: DataSplits | None = None,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Quantize `model_dir` with ``config.method`` into `output` and return its metrics.

    dynamic / static take an ONNX folder (give the optimized one: `slimformer export` then `optimize`) and
    write an INT8 ONNX folder; torch-dynamic takes a PyTorch checkpoint. qat fine-tunes a PyTorch checkpoint
    with fake-quantized Linears, distilling from `teacher` (default: the checkpoint itself), and writes the
    trained checkpoint: export, optimize and quantize it with `dynamic` next (a stage never runs another stage).
    `data` gives the validation split for accuracy and agreement (else built-in sentences, agreement only) and
    the training split for calibration / QAT. metrics.json records the method, settings (reduce_range and why),
    accuracy of the fp32 reference and the INT8 model, their delta in points, argmax agreement, sizes and, in
    accuracy-aware mode, the sensitivity pass and the layers kept in fp32.
    """
    from slimformer.models import resolve_max_length, resolve_model_path

    config.validate(data)
    source = resolve_model_path(model_dir)
    config = replace(config, max_length=resolve_max_length(source, config.max_length))
    is_onnx = (source / ONNX_FILE).is_file()
    if config.method in ("torch-dynamic", "qat") and is_onnx:
        raise ModelError(f"method {config.method!r} takes a PyTorch checkpoint, and {source} is an ONNX folder")
    if config.method in ("dynamic", "static") and not is_onnx:
        raise ModelError(
            f"method {config.method!r} takes an ONNX folder and {source} is a PyTorch checkpoint: run "
            "`slimformer export` and `slimformer optimize` on it first"
        )
    if not is_onnx:
        _check_classifier(source, data)
    if config.method == "torch-dynamic":
        from slimformer.onnx.torch_dynamic import quantize_torch_dynamic

        return quantize_torch_dynamic(source, output, config, data)
    if config.method == "qat":
        assert data is not None  # validate() checked
        from slimformer.onnx.qat import quantization_aware_training

        return quantization_aware_training(source, output, config, data, teacher)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".work-{output.name}-", dir=output.parent) as work_dir:
        return _ort_quantize_folder(source, output, Path(work_dir), config, data)


# --- ONNX Runtime methods ---------------------------------------------------------------------------------


@dataclass
class _Evaluation:
    """Texts with labels in the model's label order (None: agreement only), scored through the Predictor."""

    texts: list[str]
    labels: np.ndarray | None
    folder: Path  # tokenizer, labels and truncation length of every graph scored
    threads: int | None
    max_length: int

    def logits(self, graph: Path) -> np.ndarray:
        from slimformer.predictor import OnnxPredictor

        predictor = OnnxPredictor.from_file(graph, self.folder, threads=self.threads, max_length=self.max_length)
        return predictor.predict_logits(self.texts, batch_size=64)

    def accuracy(self, logits: np.ndarray) -> float | None:
        return None if self.labels is None else float((logits.argmax(axis=-1) == self.labels).mean())


def _ort_quantize_folder(
    fp32_dir: Path,
    output: Path,
    work: Path,
    config: QuantizeConfig,
    data: DataSplits | None,
) -> dict[str, Any]:
    from slimformer.models import classifier_labels, load_tokenizer, read_config

    fp32_model = fp32_dir / ONNX_FILE
    tokenizer = load_tokenizer(fp32_dir)
    model_labels = classifier_labels(fp32_dir) or _id2label(read_config(fp32_dir))
    texts, label_ids, text_source = parity_texts(data, config.max_eval_samples)
    evaluation = _evaluation(fp32_dir, texts, label_ids, model_labels, data, config)
    sensitivity_set = evaluation
    if config.sensitivity_samples is not None and config.sensitivity_samples < len(texts):
        # evenly spaced rows: a split stored intent by intent would otherwise give a few intents only
        rows = np.linspace(0, len(texts) - 1, config.sensitivity_samples).astype(int)
        sensitivity_set = _evaluation(
            fp32_dir,
            [texts[i] for i in rows],
            None if label_ids is None else [label_ids[i] for i in rows],
            model_labels,
            data,
            config,
        )
    reduce_range, reduce_range_reason = choose_reduce_range(config.reduce_range)
    op_types = _op_types(config)
    calibration = _calibration(tokenizer, data, config, work) if config.method == "static" else None
    static_input = _with_inferred_shapes(fp32_model, work / "shape-inferred.onnx") if calibration else fp32_model

    def quantize_excluding(excluded: list[str], path: Path) -> Path:
        # the dynamic quantizer rewrites a Gemm into a MatMul named "<gemm>_MatMul" before it reads the list
        excluded = [*excluded, *(f"{name}_MatMul" for name in excluded)]
        if config.method == "static":
            _static(static_input, path, config, reduce_range, op_types, excluded, calibration)
        else:
            _dynamic(fp32_model, path, config, reduce_range, op_types, excluded)
        return path

    reference_logits = evaluation.logits(fp32_model)
    reference_accuracy = evaluation.accuracy(reference_logits)
    started = time.perf_counter()
    candidate = quantize_excluding([], work / "int8-all.onnx")
    search: dict[str, Any] | None = None
    if config.max_accuracy_drop is not None:
        from slimformer.onnx.accuracy_aware import fit_accuracy_budget

        candidate, search = fit_accuracy_budget(
            fp32_model,
            candidate,
            work,
            config,
            op_types,
            evaluation,
            sensitivity_set,
            reference_accuracy,
            quantize_excluding,
        )
    quantize_seconds = time.perf_counter() - started

    with atomic_output_dir(output) as folder:
        embedding_rows = compact_embedding_rows(candidate, folder / ONNX_FILE)
        copy_model_files(fp32_dir, folder)
        settings = write_session(folder, config.max_length, config.threads)
        quantized_logits = evaluation.logits(folder / ONNX_FILE)
        agreement = parity(reference_logits, quantized_logits)
        metrics = _int8_metrics(fp32_dir, folder, config, (reduce_range, reduce_range_reason), op_types)
        metrics.update(
            agreement={**agreement, "texts": text_source},
            quantize_seconds=round(quantize_seconds, 1),
            embedding_rows=embedding_rows,
            session=settings,
        )
        metrics["size_ratio"] = round(metrics["fp32_size_mb"] / metrics["size_mb"], 2)
        if config.method == "static":
            metrics["calibration"] = {
                "method": config.calibration_method,
                "samples": calibration["samples"],
                "texts": "training split",
            }
        if search is not None:
            metrics["accuracy_aware"] = search
        if data is not None and label_ids is not None:
            metrics.update(validation_report(data, label_ids, model_labels, reference_logits, quantized_logits))
        write_metrics(folder, metrics)
    return metrics


def _int8_metrics(
    fp32_dir: Path, folder: Path, config: QuantizeConfig, reduce_range: tuple[bool, str], op_types: tuple[str, ...]
) -> dict[str, Any]:
    """What metrics.json says about how an INT8 ONNX folder was made and what it holds."""
    return {
        "stage": "quantize",
        "method": config.method,
        "source_model": str(fp32_dir),
        "config": asdict(config),
        "format": "QDQ (static activation ranges)" if config.method == "static" else "dynamic (QOperator)",
        "weight_type": "int8 (symmetric)",
        "activation_type": "uint8 (asymmetric)",
        "per_channel": config.per_channel,
        "reduce_range": reduce_range[0],
        "reduce_range_reason": reduce_range[1],
        "quantized_op_types": list(op_types),
        "embeddings_quantized": config.quantize_embeddings,
        "quantized_nodes": _op_histogram(folder / ONNX_FILE, QUANTIZED_OPS),
        "reference": "fp32 ONNX model (= PyTorch within 1e-4)",
        "fp32_size_mb": round((fp32_dir / ONNX_FILE).stat().st_size / 1e6, 2),
        "size_mb": round((folder / ONNX_FILE).stat().st_size / 1e6, 2),
    }


def _dynamic(
    fp32_model: Path,
    output: Path,
    config: QuantizeConfig,
    reduce_range: bool,
    op_types: tuple[str, ...],
    excluded: list[str],
) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            fp32_model,
            output,
            op_types_to_quantize=list(op_types),
            per_channel=config.per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            # the optimizer's fused contrib ops lack type info the quantizer needs: assume float tensors
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _static(
    fp32_model: Path,
    output: Path,
    config: QuantizeConfig,
    reduce_range: bool,
    op_types: tuple[str, ...],
    excluded: list[str],
    calibration: dict[str, Any] | None,
) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    assert calibration is not None
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with _quiet():
        quantize_static(
            fp32_model,
            output,
            calibration["reader"](),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=config.per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=methods[config.calibration_method],
            # ranges are computed once and reused by every quantization of the accuracy-aware search
            calibration_cache_path=calibration["cache"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "CalibMovingAverage": False},
        )


def _with_inferred_shapes(fp32_model: Path, output: Path) -> Path:
    """A fused graph with every tensor's type known (static quantization skips tensors of unknown type, and ONNX
    shape inference cannot see through the optimizer's contrib ops): ORT's symbolic shape inference, without
    its graph optimization. A plain exported graph is returned as it is."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graph = onnx.load(str(fp32_model), load_external_data=False).graph
    if not any(node.domain == "com.microsoft" for node in graph.node):
        return fp32_model
    try:
        # chdir: on failure the shape inference drops a debug model into the working directory
        source, target = fp32_model.resolve(), output.resolve()  # before the chdir: the paths may be relative
        with _quiet(), contextlib.chdir(target.parent):
            quant_pre_process(source, target, skip_optimization=True)
    except Exception as exc:  # symbolic shape inference raises bare Exceptions
        raise ModelError(f"shape inference for static quantization failed on {fp32_model}: {exc}") from exc
    return output


def _calibration(tokenizer: Any, data: DataSplits | None, config: QuantizeConfig, work: Path) -> dict[str, Any]:
    """A factory of CalibrationDataReaders over N shuffled training texts (one text per call)."""
    from onnxruntime.quantization import CalibrationDataReader

    from slimformer.data import column

    assert data is not None
    train = data.train.shuffle(seed=config.seed)
    texts = column(train.select(range(min(config.calibration_samples, len(train)))), "text")
    # one row per call, all padded to the longest text: the histogram calibrators (entropy, percentile) stack
    # every call's activations into one array, so their shapes must match
    longest = max(len(ids) for ids in tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"])
    feeds = []
    for text in texts:
        row = tokenizer([text], padding="max_length", truncation=True, max_length=longest, return_tensors="np")
        feeds.append({name: np.asarray(value, dtype=np.int64) for name, value in row.items()})

    class TextReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    return {"reader": TextReader, "samples": len(texts), "cache": work / "calibration-ranges.json"}


def _op_types(config: QuantizeConfig) -> tuple[str, ...]:
    ops = STATIC_OPS if config.method == "static" else DYNAMIC_OPS
    return ops if config.quantize_embeddings else tuple(op for op in ops if op not in EMBEDDING_OPS)


def validation_report(
    data: DataSplits, label_ids: Any, model_labels: list[str], reference_logits: Any, quantized_logits: Any
) -> dict[str, Any]:
    """Validation metrics of the fp32 reference and the quantized model, and the accuracy delta in points."""
    reference = score_logits(reference_logits, model_labels, label_ids, data)
    quantized = score_logits(quantized_logits, model_labels, label_ids, data)
    return {
        "data": data.name,
        "data_fingerprint": data.fingerprint,
        "reference_validation": reference,
        "validation": quantized,
        "accuracy_delta_points": round(100 * (quantized["accuracy"] - reference["accuracy"]), 3),
    }


# --- shared helpers ---------------------------------------------------------------------------------------


def _check_classifier(source: Path, data: DataSplits | None) -> None:
    from slimformer.models import check_classifier_fits, classifier_labels

    if classifier_labels(source) is None:
        raise ModelError(f"{source} is a base model without a classification head; fine-tune it first")
    if data is not None:
        check_classifier_fits(source, data.labels)


def _evaluation(
    folder: Path,
    texts: list[str],
    label_ids: list[int] | None,
    model_labels: list[str],
    data: DataSplits | None,
    config: QuantizeConfig,
) -> _Evaluation:
    from slimformer.data import label_positions

    labels = None
    if data is not None and label_ids is not None:
        # dataset label ids -> the model's output positions
        to_model = np.argsort(label_positions(model_labels, data.labels))
        labels = to_model[np.asarray(label_ids)]
    return _Evaluation(texts, labels, folder, config.threads, config.max_length)


def _id2label(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    if not id2label:
        raise ModelError("config.json has no id2label; it is not a fine-tuned classifier")
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def _op_histogram(model_path: Path, op_types: tuple[str, ...]) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(model_path)).graph.node:
        if node.op_type in op_types:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


class _quiet:
    """Silence the quantizer's warnings and INFO logging (it logs every node it skips)."""

    def __enter__(self) -> None:
        import logging

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._root = logging.getLogger()
        self._level = self._root.level
        self._root.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._root.setLevel(self._level)
        self._warnings.__exit__(*exc)
