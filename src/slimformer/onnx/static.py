"""Static INT8 with ONNX Runtime: activation ranges calibrated on training rows, then ``quantize_static`` set up
for x86 integer kernels (U8S8: uint8 asymmetric activations, int8 symmetric weights, the pair MLAS runs on
AVX-512 VNNI and AMX), in the QDQ or the QOperator format.

What it quantizes in an optimizer-fused graph: the MatMul / Gemm nodes (FFN, attention output projection,
pooler, classifier) and the word-embedding Gather. ORT has no static form of the fused ``Attention`` op (it is
in neither the QDQ nor the QLinear registry), so the q/k/v projection inside it stays fp32; dynamic
quantization turns it into ``QAttention``. SkipLayerNormalization / BiasGelu stay fp32 in both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimformer.errors import ModelError

if TYPE_CHECKING:
    from slimformer.data import DataSplits

# ops static quantization covers here: ORT has no static (QDQ or QLinear) form of the fused Attention op, and
# only the QOperator format has one of the fused embeddings (QEmbedLayerNormalization, weights only)
STATIC_OPS = ("MatMul", "Gemm", "Gather")
QOPERATOR_EXTRA_OPS = ("EmbedLayerNormalization",)
QUANT_FORMATS = ("qdq", "qoperator")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# op types whose outputs stay float in QDQ: a DQ -> MatMul with a float output runs as one MatMulIntegerToFloat
# at load time, instead of QLinearMatMul + a requantize / dequantize pair before the fp32 SkipLayerNorm or Gelu
FLOAT_OUTPUT_OPS = ("MatMul", "Gemm")


def static_graph(
    fp32_model: Path,
    output: Path,
    calibration: dict[str, Any],
    *,
    quant_format: str,
    per_channel: bool,
    reduce_range: bool,
    op_types: tuple[str, ...],
    excluded: list[str],
    calibration_method: str,
    float_outputs: bool = True,
) -> None:
    """Write the static INT8 graph of `fp32_model` (already shape-inferred: :func:`with_inferred_shapes`) to
    `output`. `calibration` is :func:`calibration_data`'s; its range cache makes every later call (the
    accuracy-aware search, a second format) reuse the first call's ranges."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    extra_options: dict[str, Any] = {
        "DefaultTensorType": onnx.TensorProto.FLOAT,  # the optimizer's contrib ops lack type info
        "CalibMovingAverage": False,
        "ActivationSymmetric": False,  # uint8 activations with a zero point: U8S8, VNNI's operand pair
        "WeightSymmetric": True,  # int8 weights with zero point 0 (what the integer kernels expect)
        "MatMulConstBOnly": True,  # activation x activation MatMuls (an unfused attention) stay fp32
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # one scale per output column of B [K, N]
    }
    if quant_format == "qdq" and float_outputs:
        extra_options["OpTypesToExcludeOutputQuantization"] = list(FLOAT_OUTPUT_OPS)
    quantize_static(
        fp32_model,
        output,
        calibration["reader"](),
        quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=list(op_types),
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        calibrate_method=methods[calibration_method],
        calibration_cache_path=calibration["cache"],
        extra_options=extra_options,
    )
    if quant_format == "qdq":
        _float_inputs_for_fp32_consumers(output)


def _float_inputs_for_fp32_consumers(path: Path) -> None:
    """Give the fp32 consumers of a quantized activation the float tensor again. The QDQ quantizer points every
    consumer of a tensor it quantizes for a MatMul at the DequantizeLinear output, so the residual input of the
    next SkipLayerNormalization would carry uint8 rounding down the whole encoder; only the MatMul needs it."""
    import onnx

    model = onnx.load(str(path))
    nodes = model.graph.node
    quantized_from = {node.output[0]: node.input[0] for node in nodes if node.op_type == "QuantizeLinear"}
    float_of = {  # DequantizeLinear output -> the float activation its QuantizeLinear read
        node.output[0]: quantized_from[node.input[0]]
        for node in nodes
        if node.op_type == "DequantizeLinear" and node.input[0] in quantized_from
    }
    integer_consumers = {name for node in nodes if node.op_type in FLOAT_OUTPUT_OPS for name in node.input}
    changed = False
    for node in nodes:
        if node.op_type in (*FLOAT_OUTPUT_OPS, "QuantizeLinear", "DequantizeLinear"):
            continue
        for index, name in enumerate(node.input):
            # only where a MatMul keeps the Q/DQ pair alive (a quantized Gather's output stays as it is)
            if name in float_of and name in integer_consumers:
                node.input[index] = float_of[name]
                changed = True
    if changed:
        onnx.save(model, str(path))


def with_inferred_shapes(fp32_model: Path, output: Path) -> Path:
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
        with contextlib.chdir(target.parent):
            quant_pre_process(source, target, skip_optimization=True)
    except Exception as exc:  # symbolic shape inference raises bare Exceptions
        raise ModelError(f"shape inference for static quantization failed on {fp32_model}: {exc}") from exc
    return output


def graph_input_names(model_path: Path) -> list[str]:
    """The names of an ONNX graph's inputs (its initializers aside), read without the weights."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    return [value.name for value in graph.input if value.name not in weights]


def calibration_data(
    tokenizer: Any,
    data: DataSplits,
    samples: int,
    max_length: int,
    seed: int,
    work: Path,
    input_names: list[str],
) -> dict[str, Any]:
    """A factory of CalibrationDataReaders over `samples` shuffled training texts (one text per call), their
    count, and where the computed ranges are cached. Only the graph's `input_names` are fed (a static student
    takes no token_type_ids although its BERT tokenizer makes them)."""
    from onnxruntime.quantization import CalibrationDataReader

    from slimformer.data import column

    train = data.train.shuffle(seed=seed)
    texts = column(train.select(range(min(samples, len(train)))), "text")
    # one row per call, all padded to the longest text: the histogram calibrators (entropy, percentile) stack
    # every call's activations into one array, so their shapes must match
    longest = max(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
    feeds = []
    for text in texts:
        row = tokenizer([text], padding="max_length", truncation=True, max_length=longest, return_tensors="np")
        feeds.append({name: np.asarray(value, dtype=np.int64) for name, value in row.items() if name in input_names})

    class TextReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    return {"reader": TextReader, "samples": len(texts), "cache": work / "calibration-ranges.json"}
