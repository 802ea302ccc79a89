"""Operator-level alternatives for the demo model's INT8 graph, tried in session 8 and not adopted (issue #15).

One-op or few-op ONNX graphs at the demo model's shapes (hidden 384, 12 heads, 10 tokens, FFN 768; random
weights: latency does not depend on them), each timed with ONNX Runtime alone (median of `--calls` runs, in
`--rounds` interleaved rounds) at 1 and 2 intra-op threads:

1. attention: ORT's `QAttention` (what dynamic quantization makes of a fused Attention) against a
   `DynamicQuantizeMatMul` for q/k/v followed by the fp32 `MultiHeadAttention` kernel;
2. the last layer's attention when only the first token is read: `QAttention` + `Gather` against the query
   projected for the first row alone (`DynamicQuantizeMatMul` on 1 row; keys and values on every row) +
   `MultiHeadAttention` with one query;
3. the one-row matrix products of the first-token tail and the pooler: fp32 `MatMul` + `Add` against
   `DynamicQuantizeMatMul`;
4. the FFN activation: `BiasGelu` (exact, erf) against `FastGelu` (tanh approximation, max |error| ~5e-4);
5. ONNX Runtime's cost per node: a chain of 41 `Add` nodes on 10 x 384 floats against a single one;
6. (session 9) a 10-row FFN product: `DynamicQuantizeMatMul` against ONNX Runtime's weight-only `MatMulNBits` at
   8 bits (blocks of 128 along K, symmetric), with `accuracy_level` 4 (int8 compute) and 0 (fp32 compute);
7. (session 9) the split SkipLayerNorm's residual: `Add(Add(x, skip), bias)` against one `Sum(x, skip, bias)`.

    .venv/bin/python benchmarks/kernel_alternatives.py [--calls 2000] [--rounds 5] [--json kernels.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

HIDDEN, HEADS, TOKENS, FFN = 384, 12, 10, 768
RNG = np.random.default_rng(0)


def _model(nodes: list[Any], initializers: dict[str, np.ndarray], inputs: dict[str, tuple[int, ...]]) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 9
    return model.SerializeToString()


def _int8_weight(rows: int, cols: int) -> dict[str, np.ndarray]:
    weight = RNG.standard_normal((rows, cols)).astype(np.float32)
    scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
    return {
        "w": np.round(weight / scale).astype(np.int8),
        "w_scale": scale,
        "w_zero": np.zeros(cols, np.int8),
        "bias": RNG.standard_normal(cols).astype(np.float32),
        "w_fp32": weight,
    }


def _node(op: str, inputs: list[str], outputs: list[str], **attributes: Any) -> Any:
    from onnx import helper

    domain = (
        "com.microsoft"
        if op in {"QAttention", "DynamicQuantizeMatMul", "MultiHeadAttention", "BiasGelu", "FastGelu"}
        else ""
    )
    return helper.make_node(op, inputs, outputs, domain=domain, **attributes)


def attention_pairs() -> dict[str, dict[str, bytes]]:
    """Experiments 1 and 2: {experiment: {variant: model bytes}}."""
    qkv = _int8_weight(HIDDEN, 3 * HIDDEN)
    x_shape = {"x": (1, TOKENS, HIDDEN)}
    common = {"w": qkv["w"], "w_scale": qkv["w_scale"], "w_zero": qkv["w_zero"], "bias": qkv["bias"]}

    def q_attention(output: str) -> list[Any]:
        return [
            _node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            _node(
                "QAttention",
                ["xq", "w", "bias", "xs", "w_scale", "mask", "xz", "w_zero", ""],
                [output],
                num_heads=HEADS,
            ),
        ]

    mask = {**common, "mask": np.array([TOKENS], dtype=np.int32)}  # every token attended (one unpadded query)
    split = np.array([HIDDEN] * 3, dtype=np.int64)
    unfused = [
        _node("DynamicQuantizeMatMul", ["x", "w", "w_scale", "w_zero", "bias"], ["qkv"]),
        _node("Split", ["qkv", "split"], ["q", "k", "v"], axis=-1),
        _node("MultiHeadAttention", ["q", "k", "v"], ["y"], num_heads=HEADS),
    ]
    first = np.array([0], dtype=np.int64)
    q_cols, kv_cols = slice(0, HIDDEN), slice(HIDDEN, 3 * HIDDEN)
    one_query = {
        "wq": qkv["w"][:, q_cols].copy(), "wq_scale": qkv["w_scale"][q_cols].copy(),
        "wq_zero": qkv["w_zero"][q_cols].copy(), "bq": qkv["bias"][q_cols].copy(),
        "wkv": qkv["w"][:, kv_cols].copy(), "wkv_scale": qkv["w_scale"][kv_cols].copy(),
        "wkv_zero": qkv["w_zero"][kv_cols].copy(), "bkv": qkv["bias"][kv_cols].copy(),
        "first": first, "split": np.array([HIDDEN] * 2, dtype=np.int64),
    }  # fmt: skip
    first_row_query = [
        _node("Gather", ["x", "first"], ["x0"], axis=1),
        _node("DynamicQuantizeMatMul", ["x0", "wq", "wq_scale", "wq_zero", "bq"], ["q"]),
        _node("DynamicQuantizeMatMul", ["x", "wkv", "wkv_scale", "wkv_zero", "bkv"], ["kv"]),
        _node("Split", ["kv", "split"], ["k", "v"], axis=-1),
        _node("MultiHeadAttention", ["q", "k", "v"], ["y"], num_heads=HEADS),
    ]
    return {
        "attention, 10 tokens": {
            "QAttention (kept)": _model(q_attention("y"), mask, x_shape),
            "DynamicQuantizeMatMul + MultiHeadAttention": _model(unfused, {**common, "split": split}, x_shape),
        },
        "last layer, first token read": {
            "QAttention + Gather (kept)": _model(
                [*q_attention("a"), _node("Gather", ["a", "first"], ["y"], axis=1)], {**mask, "first": first}, x_shape
            ),
            "query on the first row only + MultiHeadAttention": _model(first_row_query, one_query, x_shape),
        },
    }


def small_pairs() -> dict[str, dict[str, bytes]]:
    """Experiments 3 to 5."""
    pairs: dict[str, dict[str, bytes]] = {}
    for rows, cols in ((HIDDEN, HIDDEN), (HIDDEN, FFN), (FFN, HIDDEN)):
        weight = _int8_weight(rows, cols)
        shape = {"x": (1, rows)}
        pairs[f"1 row x {rows} x {cols}"] = {
            "DynamicQuantizeMatMul (kept)": _model(
                [_node("DynamicQuantizeMatMul", ["x", "w", "w_scale", "w_zero", "bias"], ["y"])],
                {k: weight[k] for k in ("w", "w_scale", "w_zero", "bias")},
                shape,
            ),
            "fp32 MatMul + Add": _model(
                [_node("MatMul", ["x", "w_fp32"], ["m"]), _node("Add", ["m", "bias"], ["y"])],
                {"w_fp32": weight["w_fp32"], "bias": weight["bias"]},
                shape,
            ),
        }
    bias = RNG.standard_normal(FFN).astype(np.float32)
    pairs[f"GELU, {TOKENS} x {FFN}"] = {
        "BiasGelu (erf, kept)": _model([_node("BiasGelu", ["x", "b"], ["y"])], {"b": bias}, {"x": (1, TOKENS, FFN)}),
        "FastGelu (tanh approximation)": _model(
            [_node("FastGelu", ["x", "b"], ["y"])], {"b": bias}, {"x": (1, TOKENS, FFN)}
        ),
    }
    one = np.ones(HIDDEN, np.float32)
    chain = [_node("Add", ["x" if i == 0 else f"t{i - 1}", "c"], ["y" if i == 40 else f"t{i}"]) for i in range(41)]
    pairs["nodes"] = {
        "1 Add": _model([_node("Add", ["x", "c"], ["y"])], {"c": one}, {"x": (1, TOKENS, HIDDEN)}),
        "41 Adds in a chain": _model(chain, {"c": one}, {"x": (1, TOKENS, HIDDEN)}),
    }
    return pairs


def matmul_nbits(rows: int, cols: int, accuracy_level: int) -> bytes:
    """A one-MatMul graph of `rows` x `cols` random weights turned into MatMulNBits by ONNX Runtime's quantizer."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    weight = {"w_fp32": RNG.standard_normal((rows, cols)).astype(np.float32)}
    fp32 = onnx.load_from_string(_model([_node("MatMul", ["x", "w_fp32"], ["y"])], weight, {"x": (1, TOKENS, rows)}))
    config = DefaultWeightOnlyQuantConfig(
        block_size=128,
        is_symmetric=True,
        accuracy_level=accuracy_level or None,
        bits=8,
        op_types_to_quantize=("MatMul",),
        quant_format=QuantFormat.QOperator,
    )
    quantizer = MatMulNBitsQuantizer(fp32, algo_config=config)
    quantizer.process()
    return quantizer.model.model.SerializeToString()


def session9_pairs() -> dict[str, dict[str, bytes]]:
    """Experiments 6 and 7."""
    weight = _int8_weight(HIDDEN, FFN)
    dqmm = [_node("DynamicQuantizeMatMul", ["x", "w", "w_scale", "w_zero"], ["y"])]
    bias = {"bias": RNG.standard_normal(HIDDEN).astype(np.float32)}
    residual = {"x": (1, TOKENS, HIDDEN), "skip": (1, TOKENS, HIDDEN)}
    return {
        f"{TOKENS} rows x {HIDDEN} x {FFN} (an FFN product)": {
            "DynamicQuantizeMatMul (kept)": _model(
                dqmm, {k: weight[k] for k in ("w", "w_scale", "w_zero")}, {"x": (1, TOKENS, HIDDEN)}
            ),
            "MatMulNBits 8-bit, accuracy_level 4 (int8 compute)": matmul_nbits(HIDDEN, FFN, 4),
            "MatMulNBits 8-bit, accuracy_level 0 (fp32 compute)": matmul_nbits(HIDDEN, FFN, 0),
        },
        f"residual, {TOKENS} x {HIDDEN}": {
            "Add(Add(x, skip), bias) (kept)": _model(
                [_node("Add", ["x", "skip"], ["t"]), _node("Add", ["t", "bias"], ["y"])], bias, residual
            ),
            "Sum(x, skip, bias)": _model([_node("Sum", ["x", "skip", "bias"], ["y"])], bias, residual),
        },
    }


def time_pairs(pairs: dict[str, dict[str, bytes]], threads: int, calls: int, rounds: int) -> dict[str, Any]:
    """{experiment: {variant: median µs}} at `threads`, the variants of an experiment interleaved by rounds. Its
    own loop, not slimformer.timing: session.run of one operator on a fixed random feed, no text or tokenizer."""
    import onnxruntime as ort

    from slimformer.predictor import session_options

    results: dict[str, Any] = {}
    for experiment, variants in pairs.items():
        sessions = {}
        for name, blob in variants.items():
            session = ort.InferenceSession(blob, session_options(threads), providers=["CPUExecutionProvider"])
            feed = {}
            for graph_input in session.get_inputs():
                shape = [1 if not isinstance(d, int) else d for d in graph_input.shape]
                feed[graph_input.name] = RNG.standard_normal(shape).astype(np.float32)
            sessions[name] = (session, feed)
        medians: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, (session, feed) in sessions.items():
                ticks = []
                for _ in range(calls):
                    tick = time.perf_counter()
                    session.run(None, feed)
                    ticks.append(time.perf_counter() - tick)
                medians[name].append(statistics.median(ticks) * 1e6)
        results[experiment] = {name: round(statistics.median(values), 1) for name, values in medians.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()

    import onnxruntime as ort

    from slimformer.cpu import cpu_model

    pairs = {**attention_pairs(), **small_pairs(), **session9_pairs()}
    report = {"cpu": cpu_model(), "onnxruntime": ort.__version__, "µs": {}}
    for threads in (1, 2):
        report["µs"][f"{threads} thread(s)"] = time_pairs(pairs, threads, args.calls, args.rounds)
    print(f"{report['cpu']}, onnxruntime {report['onnxruntime']}; median µs of one session.run")
    for experiment in pairs:
        print(f"  {experiment}")
        for variant in pairs[experiment]:
            cells = [f"{report['µs'][key][experiment][variant]:7.1f}" for key in report["µs"]]
            print(f"    {variant:50s} 1 thread {cells[0]}   2 threads {cells[1]}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
