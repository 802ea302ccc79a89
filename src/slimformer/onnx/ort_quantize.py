"""ONNX Runtime INT8 of one ONNX folder: each method's graph (dynamic here, static in :mod:`.static`) built in a
work folder, fitted to an accuracy budget when one is given, scored against the fp32 graph on validation, and
written as a self-contained folder with its metrics. `auto` (:mod:`.quantize_select`) builds both and keeps one.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimformer.artifacts import Session, StageResult
from slimformer.errors import ModelError
from slimformer.evaluation import score_logits
from slimformer.onnx.embeddings import compact_embedding_rows, pack_word_embeddings_4bit
from slimformer.onnx.runtime import EMBEDDING_OPS, ONNX_FILE, copy_model_files, parity, parity_texts
from slimformer.onnx.static import QOPERATOR_EXTRA_OPS, STATIC_OPS

if TYPE_CHECKING:
    from slimformer.data import DataSplits
    from slimformer.onnx.quantize import QuantizeConfig

# ops whose weights ORT dynamic quantization turns to int8 (Gather / EmbedLayerNormalization: embeddings;
# Gemm: the pooler and classifier, quantized as MatMulInteger)
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization")
# the fused ops ORT's static quantizer has no form of; static with `dynamic_attention` quantizes them dynamically
FUSED_DYNAMIC_OPS = ("Attention", "EmbedLayerNormalization")
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
    "QLinearMatMul",
    "QGemm",
)


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

    def subset(self, rows: int | None) -> _Evaluation:
        """Evenly spaced `rows` of this set (a split stored intent by intent would otherwise give a few intents)."""
        if rows is None or rows >= len(self.texts):
            return self
        picked = np.linspace(0, len(self.texts) - 1, rows).astype(int)
        labels = None if self.labels is None else self.labels[picked]
        return _Evaluation([self.texts[i] for i in picked], labels, self.folder, self.threads, self.max_length)


@dataclass
class Int8Graph:
    """One quantized graph in the work folder and how it was made."""

    method: str  # "dynamic" | "static"
    path: Path
    op_types: tuple[str, ...]
    quantize_seconds: float
    search: dict[str, Any] | None = None  # the accuracy-aware search, when a budget was given
    per_channel: bool = True  # one weight scale per output channel, else one per weight matrix

    @property
    def name(self) -> str:
        return candidate_name(self.method, self.per_channel)


def candidate_name(method: str, per_channel: bool) -> str:
    """How `auto` names a candidate: the method, and "per-tensor" when its weights have one scale each."""
    return method if per_channel else f"{method} per-tensor"


def op_types(
    method: str, quantize_embeddings: bool, quant_format: str = "qdq", dynamic_attention: bool = False
) -> tuple[str, ...]:
    """The op types `method` quantizes (embeddings included or not); static: those of its static pass in
    `quant_format`, plus the fused ops its dynamic pass takes when `dynamic_attention`."""
    ops = DYNAMIC_OPS
    if method == "static":
        ops = STATIC_OPS + QOPERATOR_EXTRA_OPS if quant_format == "qoperator" else STATIC_OPS
        ops += tuple(op for op in FUSED_DYNAMIC_OPS if dynamic_attention and op not in ops)
    return ops if quantize_embeddings else tuple(op for op in ops if op not in EMBEDDING_OPS)


def graph_format(method: str, quant_format: str, dynamic_attention: bool = False) -> str:
    """How metrics.json names an ORT INT8 graph's format."""
    if method != "static":
        return "dynamic (QOperator)"
    text = "QDQ (static activation ranges)" if quant_format == "qdq" else "QOperator (static activation ranges)"
    return text + (" + dynamic QAttention / QEmbedLayerNormalization" if dynamic_attention else "")


class Int8Job:
    """What every INT8 graph of one fp32 ONNX folder shares: its fp32 scores on the evaluation texts, the
    sensitivity subset, reduce_range and (built once, on first use) the static calibration."""

    def __init__(self, fp32_dir: Path, work: Path, config: QuantizeConfig, data: DataSplits | None) -> None:
        from slimformer.models import classifier_labels, load_tokenizer, read_config
        from slimformer.onnx.quantize import choose_reduce_range

        self.fp32_dir, self.work, self.config, self.data = fp32_dir, work, config, data
        self.fp32_model = fp32_dir / ONNX_FILE
        self.tokenizer = load_tokenizer(fp32_dir)
        self.model_labels = classifier_labels(fp32_dir) or _id2label(read_config(fp32_dir))
        texts, self.label_ids, self.text_source = parity_texts(data, config.max_eval_samples)
        self.evaluation = _evaluation(fp32_dir, texts, self.label_ids, self.model_labels, data, config)
        self.sensitivity_set = self.evaluation.subset(config.sensitivity_samples)
        self.reduce_range = choose_reduce_range(config.reduce_range)
        self.reference_logits = self.evaluation.logits(self.fp32_model)
        self.reference_accuracy = self.evaluation.accuracy(self.reference_logits)
        self._static_input: Path | None = None
        self._static_failure: ModelError | None = None
        self.calibration: dict[str, Any] | None = None

    def quantize_graph(
        self, method: str, excluded: list[str], path: Path, per_channel: bool | None = None, **static_options: Any
    ) -> Path:
        """The INT8 graph of `method` with the nodes `excluded` kept fp32, written to `path`; weights per channel
        or per tensor as `per_channel` says (None: the config's). `static_options` override the config's static
        settings (benchmarks/static_vs_dynamic.py compares them)."""
        per_channel = self.config.per_channel if per_channel is None else per_channel
        # the dynamic quantizer rewrites a Gemm into a MatMul named "<gemm>_MatMul" before it reads the list
        excluded = [*excluded, *(f"{name}_MatMul" for name in excluded)]
        if method == "static":
            return self._static(excluded, path, {"per_channel": per_channel, **static_options})
        with quiet():
            ops = op_types(method, self.config.quantize_embeddings)
            _dynamic(self.fp32_model, path, self.reduce_range[0], ops, excluded, per_channel)
        return path

    def _static(self, excluded: list[str], path: Path, options: dict[str, Any]) -> Path:
        from slimformer.onnx.static import calibration_data, graph_input_names, static_graph, with_inferred_shapes

        config = self.config
        if self._static_input is None:
            if self._static_failure is not None:  # shape inference failed once: it fails again
                raise self._static_failure
            try:
                with quiet():
                    self._static_input = with_inferred_shapes(self.fp32_model, self.work / "shape-inferred.onnx")
            except ModelError as exc:
                self._static_failure = exc
                raise
        if self.calibration is None:
            assert self.data is not None  # validate() checked
            self.calibration = calibration_data(
                self.tokenizer,
                self.data,
                config.calibration_samples,
                config.max_length,
                config.seed,
                self.work,
                graph_input_names(self.fp32_model),
            )
        settings: dict[str, Any] = {  # quantize_graph always passes per_channel
            "quant_format": config.quant_format,
            "dynamic_attention": config.dynamic_attention,
            **options,
        }
        per_channel = settings["per_channel"]
        dynamic_attention = settings.pop("dynamic_attention")
        ops = op_types("static", config.quantize_embeddings, settings["quant_format"])
        static_path = path.with_name(f"{path.stem}-static-part.onnx") if dynamic_attention else path
        with quiet():
            static_graph(
                self._static_input,
                static_path,
                self.calibration,
                reduce_range=self.reduce_range[0],
                op_types=ops,
                excluded=excluded,
                calibration_method=config.calibration_method,
                **settings,
            )
            if dynamic_attention:  # what ORT's static quantizer leaves fp32, quantized dynamically
                fused = op_types("dynamic", config.quantize_embeddings)
                fused = tuple(op for op in fused if op in FUSED_DYNAMIC_OPS)
                try:
                    _dynamic(static_path, path, self.reduce_range[0], fused, excluded, per_channel)
                except AssertionError:  # ORT's "Graph is not a DAG": fused embeddings whose tables sit behind
                    # QDQ nodes (seen on small models) cannot be quantized dynamically; quantize Attention only
                    fused = tuple(op for op in fused if op != "EmbedLayerNormalization")
                    _dynamic(static_path, path, self.reduce_range[0], fused, excluded, per_channel)
                static_path.unlink()
        return path

    def build(self, method: str, per_channel: bool | None = None) -> Int8Graph:
        """Quantize everything `method` covers, weights per channel or per tensor (`per_channel`; None: the
        config's); with a budget, keep the most sensitive layers fp32 until it fits."""
        started = time.perf_counter()
        config = self.config
        per_channel = config.per_channel if per_channel is None else per_channel
        ops = op_types(method, config.quantize_embeddings, config.quant_format, config.dynamic_attention)
        prefix = method if per_channel else f"{method}-per-tensor"
        graph = self.quantize_graph(method, [], self.work / f"{prefix}-all.onnx", per_channel)
        search = None
        if self.config.max_accuracy_drop is not None:
            from slimformer.onnx.accuracy_aware import fit_accuracy_budget

            def quantize_excluding(excluded: list[str], path: Path) -> Path:
                return self.quantize_graph(method, excluded, path.with_name(f"{prefix}-{path.name}"), per_channel)

            graph, search = fit_accuracy_budget(
                self.fp32_model,
                graph,
                self.work,
                self.config,
                ops,
                self.evaluation,
                self.sensitivity_set,
                self.reference_accuracy,
                quantize_excluding,
            )
        return Int8Graph(method, graph, ops, time.perf_counter() - started, search, per_channel)

    def write(self, graph: Int8Graph, folder: Path, extra: dict[str, Any] | None = None) -> StageResult:
        """Write `graph` into the INT8 folder `folder` (embedding rows compacted, the word table 4-bit when the
        config asks); its metrics and session."""
        embedding_rows = compact_embedding_rows(graph.path, folder / ONNX_FILE)
        word_table_4bit = None
        if self.config.word_embeddings_4bit:
            word_table_4bit = pack_word_embeddings_4bit(folder / ONNX_FILE, folder / ONNX_FILE)
        copy_model_files(self.fp32_dir, folder)
        quantized_logits = self.evaluation.logits(folder / ONNX_FILE)
        metrics = self._metrics(graph, folder)
        metrics.update(
            agreement={**parity(self.reference_logits, quantized_logits), "texts": self.text_source},
            quantize_seconds=round(graph.quantize_seconds, 1),
            embedding_rows=embedding_rows,
            word_embeddings_4bit=word_table_4bit,
            **(extra or {}),
        )
        if self.data is not None and self.label_ids is not None:
            metrics.update(
                validation_report(self.data, self.label_ids, self.model_labels, self.reference_logits, quantized_logits)
            )
        session = Session(self.config.max_length, self.config.threads)
        return StageResult(metrics, session, thread_queries=self.evaluation.texts)

    def _metrics(self, graph: Int8Graph, folder: Path) -> dict[str, Any]:
        """What metrics.json says about how the INT8 folder was made and what it holds."""
        config, fp32_size = self.config, self.fp32_model.stat().st_size
        metrics: dict[str, Any] = {
            "method": config.method,
            "source_model": str(self.fp32_dir),
            "config": asdict(config),
            "format": graph_format(graph.method, config.quant_format, config.dynamic_attention),
            "weight_type": "int8 (symmetric)",
            "activation_type": "uint8 (asymmetric)",
            "per_channel": graph.per_channel,
            "reduce_range": self.reduce_range[0],
            "reduce_range_reason": self.reduce_range[1],
            "quantized_op_types": list(graph.op_types),
            "embeddings_quantized": config.quantize_embeddings,
            "quantized_nodes": op_histogram(folder / ONNX_FILE, QUANTIZED_OPS),
            "reference": "fp32 ONNX model (= PyTorch within 1e-4)",
            "fp32_size_mb": round(fp32_size / 1e6, 2),
            "size_mb": round((folder / ONNX_FILE).stat().st_size / 1e6, 2),
            "size_ratio": round(fp32_size / (folder / ONNX_FILE).stat().st_size, 2),
        }
        if graph.method == "static" and self.calibration is not None:
            samples, method = self.calibration["samples"], config.calibration_method
            metrics["calibration"] = {"method": method, "samples": samples, "texts": "training split"}
        if graph.search is not None:
            metrics["accuracy_aware"] = graph.search
        return metrics


def quantize_with_ort(
    source: Path, folder: Path, config: QuantizeConfig, data: DataSplits | None, teacher: Path | None = None
) -> StageResult:
    """The quantize stage's dynamic and static methods: ORT INT8 of the ONNX folder `source` into `folder`
    (graphs built in a scratch folder beside it)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".work-", dir=folder.parent) as work:
        job = Int8Job(source, Path(work), config, data)
        return job.write(job.build(config.method), folder)


def _dynamic(
    fp32_model: Path, output: Path, reduce_range: bool, ops: tuple[str, ...], excluded: list[str], per_channel: bool
) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fp32_model,
        output,
        op_types_to_quantize=list(ops),
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        # the optimizer's fused contrib ops lack type info the quantizer needs: assume float tensors
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


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


def op_histogram(model_path: Path, ops: tuple[str, ...]) -> dict[str, int]:
    """How many nodes of each of `ops` the graph at `model_path` has (absent types left out)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(model_path)).graph.node:
        if node.op_type in ops:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


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
        to_model = {int(data_id): index for index, data_id in enumerate(label_positions(model_labels, data.labels))}
        labels = np.array([to_model[int(label_id)] for label_id in label_ids])
    return _Evaluation(texts, labels, folder, config.threads, config.max_length)


def _id2label(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    if not id2label:
        raise ModelError("config.json has no id2label; it is not a fine-tuned classifier")
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


class quiet:
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
