"""INT8 quantization: every method gives a loadable model that agrees with fp32; static formats; auto; accuracy-aware
mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from slimformer.errors import ConfigError, DataError, ModelError


def _export_test_module():
    # the tiny trained model and its exported / optimized folders are the export tests' fixtures
    path = Path(__file__).with_name("test_onnx_export.py")
    spec = importlib.util.spec_from_file_location("_onnx_export_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fixtures = _export_test_module()
trained_tiny_dir = _fixtures.trained_tiny_dir
exported_dir = _fixtures.exported_dir
optimized_dir = _fixtures.optimized_dir
one_torch_thread = _fixtures.one_torch_thread


def _agreement_with_fp32(folder: Path, reference: Path, texts: list[str]) -> float:
    from slimformer import load

    quantized, fp32 = load(folder, threads=1), load(reference, threads=1)
    return float(np.mean(np.array(quantized.predict(texts)[0]) == np.array(fp32.predict(texts)[0])))


@pytest.mark.parametrize(
    ("method", "source", "quantized_op"),
    [
        ("dynamic", "optimized", "MatMulInteger"),
        ("static", "optimized", "QuantizeLinear"),
        ("torch-dynamic", "checkpoint", None),
    ],
)
def test_each_method_gives_a_loadable_model_that_agrees_with_fp32(
    method: str,
    source: str,
    quantized_op: str | None,
    trained_tiny_dir: Path,
    optimized_dir: Path,
    clinc_slice,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnx
    import onnxruntime as ort

    from slimformer.data import column
    from slimformer.onnx import QuantizeConfig, quantize

    monkeypatch.setenv("SLIMFORMER_CACHE_DIR", str(tmp_path / "cache"))  # qat's teacher logits
    own = {"static": {"calibration_samples": 32}, "qat": {"epochs": 1}}.get(method, {})  # each method's options
    config = QuantizeConfig(method=method, threads=1, max_train_samples=64, **own)
    model_dir = optimized_dir if source == "optimized" else trained_tiny_dir
    metrics = quantize(model_dir, tmp_path / "int8", config, clinc_slice)

    assert metrics["stage"] == "quantize" and metrics["method"] == method
    assert json.loads((tmp_path / "int8" / "metrics.json").read_text())["method"] == method
    texts = column(clinc_slice.validation, "text") + column(clinc_slice.test, "text")
    assert _agreement_with_fp32(tmp_path / "int8", trained_tiny_dir, texts) >= 0.75
    assert metrics["agreement"]["argmax_agreement"] >= 0.75
    assert metrics["agreement"]["examples"] == len(clinc_slice.validation)
    assert abs(metrics["accuracy_delta_points"]) <= 25
    assert metrics["validation"]["accuracy"] == pytest.approx(
        metrics["reference_validation"]["accuracy"] + metrics["accuracy_delta_points"] / 100, abs=1e-3
    )
    if quantized_op is None:  # torch-dynamic: fp32 checkpoint + marker, quantized when loaded
        from slimformer import load

        assert json.loads((tmp_path / "int8" / "quantization.json").read_text())["method"] == "torch-dynamic"
        assert load(tmp_path / "int8").settings()["quantization"] == "torch-dynamic"
        assert metrics["quantized_linear_layers"] == 2 * 6 + 2  # 6 per layer + pooler + classifier
        assert metrics["int8_state_mb"] < metrics["fp32_state_mb"]
        return
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    assert any(node.op_type == quantized_op for node in graph.node)
    assert metrics["size_mb"] < metrics["fp32_size_mb"]
    session = ort.InferenceSession(str(tmp_path / "int8" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((2, 7), dtype=np.int64) for i in session.get_inputs()}
    assert session.run(None, feed)[0].shape == (2, len(clinc_slice.labels))
    assert json.loads((tmp_path / "int8" / "session.json").read_text())["threads"] == 1
    if method == "static":
        assert metrics["calibration"] == {"method": "minmax", "samples": 32, "texts": "training split"}


def _ops_after_session_optimization(model: Path, tmp_path: Path) -> dict[str, int]:
    """Op histogram of the graph ONNX Runtime actually runs (its ORT_ENABLE_ALL rewrite, saved to a file)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "session-optimized.onnx")
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx.load(options.optimized_model_filepath).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _expected_4bit(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hand computation of the 4-bit word table: per row, a scale spanning [min(row, 0), max(row, 0)] in 15 steps
    (stored fp16), codes 0-15 around a zero point, offset -zero_point * scale (fp16); returns values and scales."""
    low, high = np.minimum(table.min(axis=1), 0), np.maximum(table.max(axis=1), 0)
    scale = ((high - low) / 15).astype(np.float16).astype(np.float32)
    zero_point = np.round(-low / scale)
    codes = np.clip(np.round(table / scale[:, None] + zero_point[:, None]), 0, 15)
    offset = (-zero_point * scale).astype(np.float16).astype(np.float32)
    return codes * scale[:, None] + offset[:, None], scale


@pytest.mark.parametrize("width", [8, 7])  # an odd width: the last byte holds one code
def test_the_4bit_word_table_unpacks_to_the_hand_computed_values(width: int) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from slimformer.onnx.embeddings import _unpack_4bit

    table = np.random.default_rng(0).normal(0, 0.05, (5, width)).astype(np.float32)
    table[2] = np.abs(table[2])  # a row with no negative value: 0 is its lower end
    tensors, nodes = _unpack_4bit(table, "word")
    assert tensors[0].name == "word_codes" and list(tensors[0].dims) == [5, (width + 1) // 2]  # two codes a byte
    output = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph(nodes, "unpack", [], [output], tensors), opset_imports=[helper.make_opsetid("", 17)]
    )
    unpacked = ort.InferenceSession(model.SerializeToString()).run(None, {})[0]
    expected, scale = _expected_4bit(table)
    np.testing.assert_allclose(unpacked, expected, atol=1e-6)
    assert (np.abs(unpacked - table) <= scale[:, None] / 2 + 1e-3 * scale[:, None]).all()  # half a step at most


def test_word_embeddings_4bit_halve_the_table_and_fold_at_session_load(
    optimized_dir: Path, clinc_slice, tmp_path: Path
) -> None:
    """dynamic INT8 with the word table in 4 bits: the QEmbedLayerNormalization becomes a float
    EmbedLayerNormalization whose table ORT computes once at load (none of the unpacking runs per query)."""
    import onnx
    from onnx import numpy_helper

    from slimformer.onnx import QuantizeConfig, quantize

    int8 = quantize(optimized_dir, tmp_path / "int8", QuantizeConfig(method="dynamic", threads=1), clinc_slice)
    config = QuantizeConfig(method="dynamic", threads=1, word_embeddings_4bit=True)
    packed = quantize(optimized_dir, tmp_path / "4bit", config, clinc_slice)

    table = packed["word_embeddings_4bit"]
    int8_graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    int8_table = next(numpy_helper.to_array(i) for i in int8_graph.initializer if i.name == table["table"])
    assert table["bytes_before"] == int8_table.nbytes
    rows, width = int8_table.shape
    assert table["bytes_after"] == rows * (width // 2) + rows * 2 * 2 + 1 + 3 * 8 + 2 * 8  # codes, fp16 scale/offset
    assert (tmp_path / "4bit" / "model.onnx").stat().st_size < (tmp_path / "int8" / "model.onnx").stat().st_size
    assert int8["word_embeddings_4bit"] is None
    assert packed["agreement"]["argmax_agreement"] >= 0.9
    assert abs(packed["accuracy_delta_points"] - int8["accuracy_delta_points"]) <= 5

    stored = [node.op_type for node in onnx.load(str(tmp_path / "4bit" / "model.onnx")).graph.node]
    assert "QEmbedLayerNormalization" not in stored and "BitShift" in stored
    running = _ops_after_session_optimization(tmp_path / "4bit" / "model.onnx", tmp_path)
    assert running.get("EmbedLayerNormalization") == 1
    assert not {"BitShift", "Concat"} & set(running)  # folded: nothing unpacks per query


_LOAD_AND_MEASURE = """
import re, sys
from slimformer.predictor import OnnxPredictor


def anonymous_mb():
    return int(re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024


before = anonymous_mb()
predictor = OnnxPredictor.from_file(sys.argv[1], sys.argv[2], threads=1)
print(anonymous_mb() - before)
"""


def test_a_session_keeps_the_unpacked_table_but_not_the_memory_its_unpacking_freed(
    tiny_classifier_dir: Path, tmp_path: Path
) -> None:
    """Constant folding unpacks a 4-bit table (MiniLM's size: 45 MiB as floats) through tensors it frees once the
    session is made; the predictor hands that memory back to the system, which glibc would otherwise keep."""
    import subprocess
    import sys

    from onnx import TensorProto, helper

    from slimformer.onnx.embeddings import _unpack_4bit

    if not Path("/proc/self/status").is_file():
        pytest.skip("reads the resident memory from /proc")
    table = np.random.default_rng(0).normal(0, 0.05, (30522, 384)).astype(np.float32)
    tensors, nodes = _unpack_4bit(table, "word")
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])
    rows = helper.make_tensor_value_info("rows", TensorProto.FLOAT, [1, None, 384])
    gather = helper.make_node("Gather", [nodes[-1].output[0], "input_ids"], ["rows"])
    graph = helper.make_graph([*nodes, gather], "lookup", [ids], [rows], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])  # the export's opset
    (tmp_path / "lookup.onnx").write_bytes(model.SerializeToString())
    script = tmp_path / "load.py"
    script.write_text(_LOAD_AND_MEASURE)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "lookup.onnx"), str(tiny_classifier_dir)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    grown_mb = float(done.stdout.split()[-1])
    assert 40 < grown_mb < 80  # the float table (44.7 MiB) and the session's own few MiB, not what folding freed


@pytest.mark.parametrize("form", ["dynamic", "qdq"])
def test_a_quantized_gather_table_goes_4bit_without_its_dequantize(form: str, tmp_path: Path) -> None:
    """ORT's INT8 lookups, as the static student has them: dynamic's Gather of uint8 rows then DequantizeLinear,
    static QDQ's Gather of DequantizeLinear(uint8 table)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from slimformer.onnx.embeddings import pack_word_embeddings_4bit

    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (6, 4)).astype(np.uint8)
    if form == "dynamic":
        nodes = [
            helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
            helper.make_node("DequantizeLinear", ["rows", "scale", "zero"], ["embedded"]),
        ]
    else:
        nodes = [
            helper.make_node("DequantizeLinear", ["table", "scale", "zero"], ["table_float"]),
            helper.make_node("Gather", ["table_float", "input_ids"], ["embedded"]),
        ]
    initializers = [
        numpy_helper.from_array(codes, "table"),
        numpy_helper.from_array(np.float32(0.01), "scale"),
        numpy_helper.from_array(np.uint8(128), "zero"),
    ]
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None])
    out = helper.make_tensor_value_info("embedded", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "lookup", [ids], [out], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "in.onnx")
    summary = pack_word_embeddings_4bit(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert summary is not None and summary["bytes_before"] == codes.nbytes
    packed = onnx.load(tmp_path / "out.onnx").graph
    assert "DequantizeLinear" not in [node.op_type for node in packed.node]  # ORT would not fold it
    assert "table" not in {init.name for init in packed.initializer}  # the uint8 table is gone
    session = ort.InferenceSession(tmp_path / "out.onnx", providers=["CPUExecutionProvider"])
    looked_up = session.run(None, {"input_ids": np.array([4, 0, 4])})[0]
    expected, _ = _expected_4bit((codes.astype(np.float32) - 128) * np.float32(0.01))
    np.testing.assert_allclose(looked_up, expected[[4, 0, 4]], atol=1e-6)


def test_two_valued_rows_pack_at_one_bit_and_the_lookup_returns_the_same_rows(tmp_path: Path) -> None:
    """Vocabulary pruning's sign rows (two values a row) go 1 bit a value, the other rows 4 bits, repeated rows
    once; a uint16 token -> row index puts every token's row back where the lookup expects it, and where another
    Gather reads the table by id (DistilBERT's, placed before the lookup), there too."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from slimformer.onnx.embeddings import pack_word_embeddings_4bit

    rng = np.random.default_rng(2)
    width = 12  # not a multiple of 8: the last byte of each row is half padding
    magnitude = rng.uniform(0.01, 0.1, (16, 1)).astype(np.float32)
    table = np.where(rng.random((16, width)) < 0.5, magnitude, -magnitude).astype(np.float32)
    table[[1, 5, 9, 12]] = rng.normal(0, 0.05, (4, width)).astype(np.float32)  # exact rows, in between
    table[13] = table[5]  # a shared (clustered) row
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("embedded", "again")]
    lookup = helper.make_node("Gather", ["table", "input_ids"], ["embedded"])
    again = helper.make_node("Gather", ["table", "input_ids"], ["again"], name="shape_of")  # DistilBERT's 2nd read
    graph = helper.make_graph([again, lookup], "lookup", [ids], outputs, [numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "in.onnx")

    summary = pack_word_embeddings_4bit(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert summary is not None and summary["one_bit_rows"] == 11
    stored = {init.name: numpy_helper.to_array(init) for init in onnx.load(tmp_path / "out.onnx").graph.initializer}
    assert stored["table_1bit_codes"].shape == (11, 2)  # 12 bits in 2 bytes a row
    assert stored["table_4bit_codes"].shape == (4, 6)  # 4 distinct exact rows, two codes a byte
    assert stored["table_row_of_token_uint16"].dtype == np.uint16
    session = ort.InferenceSession(tmp_path / "out.onnx", providers=["CPUExecutionProvider"])
    every_token = np.arange(16)
    looked_up, read_again = session.run(None, {"input_ids": every_token})
    np.testing.assert_array_equal(read_again, looked_up)  # the second reader follows the row index too
    signed = [i for i in every_token if i not in (1, 5, 9, 12, 13)]
    np.testing.assert_allclose(looked_up[signed], table[signed], rtol=1e-3)  # fp16 low and step
    expected, _ = _expected_4bit(table[[1, 5, 9, 12, 13]])
    np.testing.assert_allclose(looked_up[[1, 5, 9, 12, 13]], expected, atol=1e-6)


@pytest.mark.parametrize(("quant_format", "dynamic_attention"), [("qdq", False), ("qoperator", False), ("qdq", True)])
def test_static_formats_give_int8_graphs_that_agree_with_fp32(
    quant_format: str,
    dynamic_attention: bool,
    optimized_dir: Path,
    trained_tiny_dir: Path,
    clinc_slice,
    tmp_path: Path,
) -> None:
    import onnx

    from slimformer.data import column
    from slimformer.onnx import QuantizeConfig, quantize

    config = QuantizeConfig(
        method="static",
        quant_format=quant_format,
        dynamic_attention=dynamic_attention,
        threads=1,
        calibration_samples=48,
    )
    metrics = quantize(optimized_dir, tmp_path / "int8", config, clinc_slice)
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert "MatMulInteger" not in ops  # the MatMuls' activation ranges are static, not measured per batch
    if dynamic_attention:  # ORT has no static form of the fused Attention: the default quantizes it dynamically
        assert "Attention" not in ops and ops.count("QAttention") == 2 and "QEmbedLayerNormalization" in ops
        assert metrics["format"].endswith("+ dynamic QAttention / QEmbedLayerNormalization")
        assert metrics["quantized_op_types"] == ["MatMul", "Gemm", "Gather", "Attention", "EmbedLayerNormalization"]
    else:
        assert "Attention" in ops and "QAttention" not in ops and "DynamicQuantizeLinear" not in ops
    if quant_format == "qdq":
        assert metrics["format"].startswith("QDQ (static activation ranges)")
        assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
        # MatMul outputs stay float (no requantize before the fp32 SkipLayerNorm / Gelu) ...
        quantized_inputs = {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
        matmul_outputs = {node.output[0] for node in graph.node if node.op_type in ("MatMul", "Gemm")}
        assert not quantized_inputs & matmul_outputs
        # ... so ORT runs each DQ -> MatMul as one integer MatMul with a float output
        run_ops = _ops_after_session_optimization(tmp_path / "int8" / "model.onnx", tmp_path)
        assert run_ops.get("MatMulIntegerToFloat", 0) >= 2 * 3  # FFN in/out + attention output, 2 layers
        assert "DequantizeLinear" not in run_ops  # the residual stream (SkipLayerNorm's skip input) stays fp32
        assert ("QAttention" in run_ops) is dynamic_attention
    else:
        assert metrics["format"] == "QOperator (static activation ranges)"
        assert ops.count("QLinearMatMul") >= 2 * 3 and "DequantizeLinear" in ops
        assert metrics["quantized_nodes"]["QLinearMatMul"] == ops.count("QLinearMatMul")
    assert metrics["size_mb"] < metrics["fp32_size_mb"]
    assert metrics["calibration"] == {"method": "minmax", "samples": 48, "texts": "training split"}
    assert metrics["reduce_range"] is False or "no VNNI" in metrics["reduce_range_reason"]
    texts = column(clinc_slice.validation, "text") + column(clinc_slice.test, "text")
    assert _agreement_with_fp32(tmp_path / "int8", trained_tiny_dir, texts) >= 0.8
    assert metrics["agreement"]["argmax_agreement"] >= 0.8


def test_auto_keeps_the_faster_candidate_within_a_huge_tolerance(
    optimized_dir: Path, clinc_slice, tmp_path: Path
) -> None:
    import onnx

    from slimformer.cpu import cpu_model
    from slimformer.onnx import QuantizeConfig, quantize

    # a 100-point budget: every candidate qualifies, so speed alone decides
    config = QuantizeConfig(
        method="auto", threads=1, calibration_samples=32, latency_samples=60, max_accuracy_drop=100.0
    )
    metrics = quantize(optimized_dir, tmp_path / "int8", config, clinc_slice)
    auto = metrics["auto"]
    names = {"dynamic", "static", "dynamic per-tensor", "static per-tensor"}  # each method, both weight scales
    assert metrics["method"] == "auto" and set(auto["candidates"]) == names
    p50 = {name: entry["latency_ms"]["p50"] for name, entry in auto["candidates"].items()}
    assert auto["kept"] == min(p50, key=p50.get)
    assert all(entry["latency_ms"]["n"] == 60 for entry in auto["candidates"].values())
    assert auto["reason"].endswith(f"all within 100 pts: kept {auto['kept']}")
    assert auto["tolerance_points"] == 100.0 and auto["tolerance_from"] == "max_accuracy_drop"
    assert auto["latency"]["threads"] == 1 and auto["cpu"]["model"] == cpu_model()
    assert set(auto["cpu"]["isa"]) >= {"avx2", "avx512_vnni", "amx"}
    # the folder holds the kept candidate, scored as the candidate was
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert ("QuantizeLinear" in ops) is auto["kept"].startswith("static")  # static activation scales
    kept = auto["candidates"][auto["kept"]]
    assert metrics["per_channel"] is kept["per_channel"] is ("per-tensor" not in auto["kept"])
    # the kept graph's weight quantization parameters: one per output channel, or one per matrix
    sizes = {init.name: int(np.prod(init.dims)) for init in graph.initializer}
    weight_params = [  # MatMulInteger's weight zero point; a weight's DequantizeLinear scale (static QDQ)
        sizes.get(node.input[3] if node.op_type == "MatMulInteger" else node.input[1], 0)
        for node in graph.node
        if node.op_type == "MatMulInteger" or (node.op_type == "DequantizeLinear" and node.input[0] in sizes)
    ]
    assert weight_params and (max(weight_params) > 1) is kept["per_channel"]
    assert metrics["validation"]["accuracy"] == pytest.approx(kept["accuracy"])
    assert metrics["format"] == kept["format"]
    assert ("calibration" in metrics) is auto["kept"].startswith("static")  # both static candidates calibrate
    for entry in auto["candidates"].values():
        assert entry["drop_points"] == pytest.approx(100 * (auto["reference_accuracy"] - entry["accuracy"]), abs=1e-3)


def test_auto_keeps_the_more_accurate_when_no_candidate_fits(optimized_dir: Path, clinc_slice, tmp_path: Path) -> None:
    from slimformer.onnx import QuantizeConfig, quantize

    # -100 points: a candidate would have to be 100 points *more* accurate than fp32
    config = QuantizeConfig(
        method="auto",
        threads=1,
        calibration_samples=32,
        latency_samples=40,
        max_accuracy_drop=-100.0,
        try_per_tensor=False,
    )
    with pytest.warns(UserWarning, match="no INT8 candidate is within -100 points"):
        metrics = quantize(optimized_dir, tmp_path / "int8", config, clinc_slice)
    candidates = metrics["auto"]["candidates"]
    assert set(candidates) == {"dynamic", "static"}  # per-channel weights only
    expected = min(
        candidates, key=lambda name: (candidates[name]["drop_points"], candidates[name]["latency_ms"]["p50"])
    )
    assert metrics["auto"]["kept"] == expected
    assert "none within -100 pts" in metrics["auto"]["reason"]
    assert all(entry["accuracy_aware_fits"] is False for entry in candidates.values())


def test_auto_skips_a_candidate_that_cannot_be_built(
    optimized_dir: Path, clinc_slice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph static quantization cannot type (ORT's symbolic shape inference gives up on some) still gets the
    dynamic candidates, and the report says which were skipped and why."""
    from slimformer.errors import ModelError
    from slimformer.onnx import QuantizeConfig, quantize, static

    calls = []

    def untypable(model: Path, output: Path) -> Path:
        calls.append(model)
        raise ModelError(f"shape inference for static quantization failed on {model}: Incomplete")

    monkeypatch.setattr(static, "with_inferred_shapes", untypable)
    config = QuantizeConfig(method="auto", threads=1, calibration_samples=32, latency_samples=40)
    with pytest.warns(UserWarning, match="quantize auto: static skipped: shape inference"):
        metrics = quantize(optimized_dir, tmp_path / "int8", config, clinc_slice)
    assert set(metrics["auto"]["candidates"]) == {"dynamic", "dynamic per-tensor"}
    assert set(metrics["auto"]["skipped"]) == {"static", "static per-tensor"}
    assert metrics["auto"]["kept"] in metrics["auto"]["candidates"]
    assert len(calls) == 1  # the failure is remembered, not met again for the per-tensor candidate


def test_auto_rule() -> None:
    from slimformer.onnx.quantize_select import choose

    def candidate(p50: float, drop: float) -> dict:
        return {"latency_ms": {"p50": p50}, "drop_points": drop}

    both = {"dynamic": candidate(0.52, 0.1), "static": candidate(0.41, 0.3)}
    assert choose(both, 0.5) == ("static", "static 0.410 ms vs dynamic 0.520 ms, both within 0.5 pts: kept static")
    kept, reason = choose({"dynamic": candidate(0.52, 0.1), "static": candidate(0.41, 0.8)}, 0.5)
    assert kept == "dynamic"
    assert reason == "static 0.410 ms vs dynamic 0.520 ms; static drops 0.8 pts (> 0.5): kept dynamic"
    with pytest.warns(UserWarning):
        kept, reason = choose({"dynamic": candidate(0.52, 0.9), "static": candidate(0.41, 0.7)}, 0.5)
    assert kept == "static" and reason.endswith("kept the more accurate, static")
    with pytest.warns(UserWarning):  # a tie in accuracy goes to the faster
        assert choose({"dynamic": candidate(0.30, 0.9), "static": candidate(0.41, 0.9)}, 0.5)[0] == "dynamic"
    # the demo's two per-tensor graphs: 0.261 against 0.262 ms is noise, so the more accurate is kept every run
    tied = {"dynamic per-tensor": candidate(0.261, 0.097), "static per-tensor": candidate(0.262, 0.0)}
    kept, reason = choose(tied, 0.5)
    assert kept == "static per-tensor" and "within 3 % of each other's p50: the more accurate" in reason
    # 10 % faster is not a tie: speed wins within the tolerance
    assert choose({"dynamic": candidate(0.24, 0.4), "static": candidate(0.27, 0.0)}, 0.5)[0] == "dynamic"


def test_auto_without_data_is_a_one_line_config_error(
    optimized_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from slimformer.cli import main
    from slimformer.onnx import QuantizeConfig, quantize

    with pytest.raises(ConfigError, match="method 'auto' needs a dataset") as error:
        quantize(optimized_dir, tmp_path / "a", QuantizeConfig(method="auto"))
    assert "\n" not in str(error.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(optimized_dir), "--output", str(tmp_path / "b"), "--method", "auto", "--data", "none"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "method 'auto' needs a dataset" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_static_quantization_takes_relative_paths(
    optimized_dir: Path, clinc_slice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the shape-inference step changes directory, so relative folders must be resolved first."""
    import shutil

    from slimformer.onnx import QuantizeConfig, quantize

    shutil.copytree(optimized_dir, tmp_path / "opt")
    monkeypatch.chdir(tmp_path)
    config = QuantizeConfig(method="static", threads=1, calibration_samples=16)
    metrics = quantize(Path("opt"), Path("int8"), config, clinc_slice)
    assert metrics["method"] == "static" and (tmp_path / "int8" / "model.onnx").is_file()


def test_dynamic_chooses_reduce_range_from_the_cpu(optimized_dir: Path, tmp_path: Path) -> None:
    from slimformer.cpu import isa_flags
    from slimformer.onnx import QuantizeConfig, quantize
    from slimformer.onnx.quantize import VNNI_FLAGS

    metrics = quantize(optimized_dir, tmp_path / "int8", QuantizeConfig(threads=1))
    has_vnni = bool(set(VNNI_FLAGS) & isa_flags())
    assert metrics["reduce_range"] is (not has_vnni)
    assert ("has VNNI" if has_vnni else "no VNNI") in metrics["reduce_range_reason"]
    assert metrics["agreement"]["texts"] == "built-in sentences" and "validation" not in metrics
    assert metrics["embeddings_quantized"] and metrics["quantized_nodes"].get("QEmbedLayerNormalization") == 1
    explicit = quantize(optimized_dir, tmp_path / "explicit", QuantizeConfig(threads=1, reduce_range=True))
    assert explicit["reduce_range"] is True and explicit["reduce_range_reason"] == "set explicitly"


def test_accuracy_aware_keeps_layers_in_fp32_for_an_impossible_tolerance(
    optimized_dir: Path, clinc_slice, tmp_path: Path
) -> None:
    from slimformer.onnx import QuantizeConfig, quantize
    from slimformer.onnx.accuracy_aware import layer_groups
    from slimformer.onnx.ort_quantize import DYNAMIC_OPS

    groups = layer_groups(optimized_dir / "model.onnx", DYNAMIC_OPS)
    assert list(groups) == ["embeddings", "layer.0", "layer.1", "head"]
    assert len(groups["head"]) == 2  # pooler and classifier
    assert groups["layer.1"][0] == "Attention_1" and len(groups["layer.0"]) == 4  # Attention + 3 MatMuls

    # -100 points: the INT8 model would have to be 100 points *more* accurate; nothing can satisfy that
    config = QuantizeConfig(threads=1, max_accuracy_drop=-100.0)
    with pytest.warns(UserWarning, match="still exceeds"):
        metrics = quantize(optimized_dir, tmp_path / "int8", config, clinc_slice)
    search = metrics["accuracy_aware"]
    assert search["fits"] is False
    assert [entry["group"] for entry in search["sensitivity"]] == list(groups)
    assert sorted(search["kept_fp32"]) == sorted(groups)
    assert sorted(search["nodes_kept_fp32"]) == sorted(n for nodes in groups.values() for n in nodes)
    assert metrics["quantized_nodes"] == {}  # every quantizable node stayed fp32

    # a generous budget fits at once and keeps everything quantized
    relaxed = quantize(
        optimized_dir, tmp_path / "relaxed", QuantizeConfig(threads=1, max_accuracy_drop=100.0), clinc_slice
    )
    assert relaxed["accuracy_aware"]["fits"] is True and relaxed["accuracy_aware"]["kept_fp32"] == []
    assert relaxed["quantized_nodes"]["QAttention"] == 2


def test_quantize_rejects_bad_requests(
    optimized_dir: Path, trained_tiny_dir: Path, tiny_base_dir: Path, tmp_path: Path
) -> None:
    from slimformer.onnx import QuantizeConfig, quantize

    with pytest.raises(ConfigError, match="unknown quantization method"):
        quantize(optimized_dir, tmp_path / "a", QuantizeConfig(method="int4"))
    with pytest.raises(DataError, match="needs a dataset"):
        quantize(optimized_dir, tmp_path / "b", QuantizeConfig(method="static"))
    with pytest.raises(ModelError, match="takes a PyTorch checkpoint"):
        quantize(optimized_dir, tmp_path / "c", QuantizeConfig(method="torch-dynamic"))
    with pytest.raises(ModelError, match="base model"):
        quantize(tiny_base_dir, tmp_path / "d", QuantizeConfig(method="torch-dynamic"))
    with pytest.raises(ConfigError, match="unknown calibration method"):
        quantize(optimized_dir, tmp_path / "e", QuantizeConfig(method="static", calibration_method="kl"))
    with pytest.raises(ConfigError, match="--calibration-method is for static / auto quantization, not dynamic"):
        quantize(optimized_dir, tmp_path / "e", QuantizeConfig(calibration_method="entropy"))
    with pytest.raises(ConfigError, match="unknown quant format"):
        quantize(optimized_dir, tmp_path / "f", QuantizeConfig(method="static", quant_format="qlinear"))
    with pytest.raises(ConfigError, match="4-bit word embeddings are for the ONNX methods"):
        quantize(trained_tiny_dir, tmp_path / "g", QuantizeConfig(method="torch-dynamic", word_embeddings_4bit=True))
    assert not any((tmp_path / name).exists() for name in "abcdefg")


def test_cli_quantize(exported_dir: Path, clinc_slice_dir: Path, tmp_path: Path, capsys) -> None:
    from slimformer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "quantize",
                str(exported_dir),
                "--output",
                str(tmp_path / "int8"),
                "--method",
                "static",
                "--calibration-samples",
                "16",
                "--calibration-method",
                "percentile",
                "--no-per-channel",
                "--data",
                str(clinc_slice_dir),
                "--threads",
                "1",
            ]
        )
    assert exit_info.value.code == 0
    metrics = json.loads((tmp_path / "int8" / "metrics.json").read_text())
    assert metrics["calibration"]["method"] == "percentile" and metrics["per_channel"] is False
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(exported_dir), "--output", str(tmp_path / "bad"), "--method", "qat", "--data", "none"])
    assert exit_info.value.code == 2
    assert "needs a dataset" in capsys.readouterr().err


def test_qat_writes_a_checkpoint_trained_for_int8(trained_tiny_dir, clinc_slice, tmp_path, monkeypatch) -> None:
    """QAT trains with fake-quantized Linears and writes the checkpoint: export/optimize/quantize come next."""
    from slimformer.models import load_classifier
    from slimformer.onnx import QuantizeConfig, quantize

    monkeypatch.setenv("SLIMFORMER_CACHE_DIR", str(tmp_path / "cache"))
    config = QuantizeConfig(method="qat", threads=1, epochs=1, max_train_samples=64)
    metrics = quantize(trained_tiny_dir, tmp_path / "qat", config, clinc_slice)
    assert metrics["qat"]["fake_quantized_linears"] == 2 * 6 + 2  # + pooler and classifier
    assert metrics["qat"]["loss"].startswith("distillation") and metrics["qat"]["teacher"] == str(trained_tiny_dir)
    assert metrics["accuracy_delta_points"] == pytest.approx(
        100 * (metrics["validation"]["accuracy"] - metrics["reference_validation"]["accuracy"]), abs=1e-3
    )
    model = load_classifier(tmp_path / "qat")
    assert all(type(m).__name__ != "FakeQuantLinear" for m in model.modules())  # fake quantization removed


def test_int8_keeps_a_trained_classifiers_accuracy(clinc_slice, tmp_path, private_cache_one_thread):
    """A tiny classifier trained to real accuracy, then INT8: within one validation row of fp32 (48 rows), and
    the INT8 accuracy recomputed through the Predictor matches what the stage recorded."""
    from slimformer.evaluation import evaluate_predictor
    from slimformer.finetune import FinetuneConfig, finetune
    from slimformer.onnx.export import export_onnx
    from slimformer.onnx.optimize import optimize_onnx
    from slimformer.onnx.quantize import QuantizeConfig, quantize
    from slimformer.predictor import load
    from tests.test_distill import _all_texts, build_tiny_bert

    untrained = build_tiny_bert(tmp_path / "untrained", _all_texts(clinc_slice), clinc_slice.labels, layers=2)
    options = FinetuneConfig(epochs=30, learning_rate=3e-3, batch_size=16)
    trained = finetune(untrained, tmp_path / "ft", options, clinc_slice)
    assert trained["validation"]["accuracy"] > 0.6  # far above the 1/6 of chance: the weights mean something
    export_onnx(tmp_path / "ft", tmp_path / "onnx", None, clinc_slice)
    optimize_onnx(tmp_path / "onnx", tmp_path / "opt")
    int8 = quantize(tmp_path / "opt", tmp_path / "int8", QuantizeConfig(method="dynamic"), clinc_slice)
    fp32 = evaluate_predictor(load(tmp_path / "opt", threads=1), clinc_slice.validation, clinc_slice)["accuracy"]
    quantized = evaluate_predictor(load(tmp_path / "int8", threads=1), clinc_slice.validation, clinc_slice)
    assert abs(quantized["accuracy"] - fp32) <= 1 / len(clinc_slice.validation) + 1e-9
    assert int8["validation"]["accuracy"] == pytest.approx(quantized["accuracy"], abs=1e-9)
    assert int8["agreement"]["argmax_agreement"] >= 0.95
