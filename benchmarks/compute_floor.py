"""How far is a model's batch-1 latency from what this CPU's matrix units could do? (issue #15)

Measures ONNX Runtime's int8 GEMM peak (a 1024x1024x1024 MatMulInteger, uint8 x int8, and the
DynamicQuantizeMatMul that a dynamically quantized graph runs) and its fp32 MatMul peak, in GMAC/s, at
`--threads` intra-op threads and at 1 thread. Counts the model's multiply-accumulates per query from its ONNX
graph at the median token count of real validation queries (the model's own tokenizer, special tokens
included): MatMul / MatMulInteger / DynamicQuantizeMatMul / MatMulIntegerToFloat / Gemm nodes, and
Attention / QAttention / MultiHeadAttention with their projections plus 2·L²·hidden for scores and context.
Elementwise work (LayerNorm, GELU, softmax, embeddings) is not counted: the floor is a lower bound.

Then times the model at batch 1 over real queries (`slimformer.predictor.load(folder).predict_logits([text])`,
tokenization included) in rounds interleaved with the peak measurements, so that latency and peak see the same
machine load, and prints / writes: MACs per query, the int8 floor (all MACs at the int8 peak), the mixed floor
(each node at the peak of its precision: QAttention's scores and context run in fp32), the fp32 floor, the
measured p50, and latency ÷ floor. Run from the repository root:

    .venv/bin/python benchmarks/compute_floor.py MODEL_FOLDER [MODEL_FOLDER ...] [--threads N] \\
        [--data clinc150] [--queries 300] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

GEMM_SIZE = 1024  # M = K = N of the peak GEMMs: large enough to run at the kernels' full rate
INT8_MATMULS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul"}
FP32_MATMULS = {"MatMul", "FusedMatMul", "Gemm"}
ATTENTIONS = {"Attention", "QAttention", "MultiHeadAttention"}


# --- peaks ------------------------------------------------------------------------------------------------------


def _gemm_model(kind: str, m: int, k: int, n: int) -> tuple[bytes, dict[str, np.ndarray]]:
    """A one-node graph (kind: "matmul_integer", "dynamic_quantize_matmul" or "fp32_matmul") with the weight as
    an initializer, as in a model, and the feed for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    opsets = [helper.make_opsetid("", 17)]
    if kind == "matmul_integer":
        weight = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])]
        outputs = [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])]
        initializers = [numpy_helper.from_array(weight, "B")]
        feed = {"A": rng.integers(0, 256, size=(m, k), dtype=np.uint8)}
    elif kind == "dynamic_quantize_matmul":
        weight = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
        node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "B_scale"], ["Y"], domain="com.microsoft")
        inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])]
        outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])]
        initializers = [numpy_helper.from_array(weight, "B"), numpy_helper.from_array(np.float32(0.01), "B_scale")]
        feed = {"A": rng.standard_normal((m, k), dtype=np.float32)}
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    elif kind == "fp32_matmul":
        weight = rng.standard_normal((k, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])]
        outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])]
        initializers = [numpy_helper.from_array(weight, "B")]
        feed = {"A": rng.standard_normal((m, k), dtype=np.float32)}
    else:
        raise ValueError(kind)
    graph = helper.make_graph([node], kind, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), feed


class GemmKernel:
    """One GEMM graph in an ORT session with slimformer's session options; `gmacs()` times it once."""

    def __init__(self, kind: str, threads: int, m: int = GEMM_SIZE, k: int = GEMM_SIZE, n: int = GEMM_SIZE) -> None:
        import onnxruntime as ort

        from slimformer.predictor import session_options

        model, self.feed = _gemm_model(kind, m, k, n)
        self.kind, self.threads, self.shape = kind, threads, (m, k, n)
        self.session = ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])
        self.macs = m * k * n
        self.session.run(None, self.feed)  # first run prepacks the weight

    def gmacs(self, seconds: float = 0.25) -> float:
        """GMAC/s of the median call over about `seconds` of calls."""
        # its own loop, not slimformer.timing: a kernel's peak, session.run on a fixed feed with no text
        timings = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(timings) < 5:
            tick = time.perf_counter()
            self.session.run(None, self.feed)
            timings.append(time.perf_counter() - tick)
        return self.macs / statistics.median(timings) / 1e9


# --- MACs from the graph ----------------------------------------------------------------------------------------


def _shapes(model: Any, tokens: int, wanted: set[str]) -> dict[str, list[int]]:
    """Shapes of the `wanted` tensors at batch 1 and `tokens` tokens, and of every initializer. The activations'
    shapes are read off one run of the graph (ORT optimizations off, the tensors exposed as outputs): exact for
    every op, where onnx's shape inference does not know the com.microsoft fused ops and ORT's symbolic inference
    gives up on quantized ones (QEmbedLayerNormalization)."""
    import onnxruntime as ort
    from onnx import helper

    from slimformer.predictor import session_options

    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    probe = type(model)()
    probe.CopyFrom(model)
    present = {output.name for output in probe.graph.output}
    for name in sorted(wanted - set(shapes) - present):
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = session_options(1, graph_optimization_level="disable")  # the graph as it is, every tensor kept
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
    feed = {i.name: np.ones((1, tokens), dtype=types.get(i.type, np.int64)) for i in session.get_inputs()}
    for output, value in zip(session.get_outputs(), session.run(None, feed), strict=True):
        shapes[output.name] = list(np.shape(value))
    return shapes


def _known(shape: list[int | None] | None) -> bool:
    return shape is not None and all(d is not None for d in shape)


def count_macs(onnx_path: str | Path, tokens: int) -> dict[str, Any]:
    """Multiply-accumulates of one batch-1 query of `tokens` tokens, split into int8 and fp32 work, by op type.

    A MatMul-like node costs prod(output shape) x K (K: the last dim of its first input; Gemm: as transA says).
    Attention / QAttention cost their packed QKV projection (input x weight, int8 for QAttention) plus
    2·B·L²·hidden for the scores and the context, which run in fp32 in both. `unresolved` lists nodes whose shapes
    the probe run did not give (their rows are taken as `tokens`)."""
    import onnx

    model = onnx.load(str(onnx_path))
    wanted = {
        name
        for node in model.graph.node
        if node.op_type in INT8_MATMULS | FP32_MATMULS | ATTENTIONS
        for name in (*node.input[:1], *node.output[:1])
    }
    shapes = _shapes(model, tokens, wanted)
    totals = {"int8": 0, "fp32": 0}
    by_op: dict[str, int] = {}
    unresolved: list[str] = []

    def add(op: str, precision: str, macs: int) -> None:
        totals[precision] += macs
        by_op[op] = by_op.get(op, 0) + macs

    for node in model.graph.node:
        op = node.op_type
        if op in INT8_MATMULS or op in FP32_MATMULS:
            first, second, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if op == "QLinearMatMul":  # inputs: a, a_scale, a_zero_point, b, ...
                first, second = shapes.get(node.input[0]), shapes.get(node.input[3])
            if op == "Gemm":
                k = first[0 if attrs.get("transA") else -1] if _known(first) else None
            else:
                k = first[-1] if _known(first) else (second[-2] if _known(second) else None)
            if _known(out) and k:
                macs = int(np.prod(out)) * int(k)
            elif _known(second) and len(second) == 2:  # weight [K, N]; the activation's rows are the tokens
                macs = tokens * int(np.prod(second))
                unresolved.append(node.name or op)
            else:
                unresolved.append(node.name or op)
                continue
            add(op, "int8" if op in INT8_MATMULS else "fp32", macs)
        elif op in ATTENTIONS:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            source = shapes.get(node.input[0])
            batch, length = (source[0], source[1]) if _known(source) else (1, tokens)
            if not _known(source):
                unresolved.append(node.name or op)
            if op == "MultiHeadAttention":  # projections are separate MatMuls; inputs: query [B, L, hidden]
                hidden_qk = hidden_v = source[-1] if _known(source) else None
            else:
                weight = shapes.get(node.input[1])  # [hidden_in, q + k + v]
                sizes = attrs.get("qkv_hidden_sizes")
                hidden_qk, hidden_v = (sizes[0], sizes[2]) if sizes else (weight[1] // 3, weight[1] // 3)
                precision = "int8" if op == "QAttention" else "fp32"
                add(op + " (QKV projection)", precision, batch * length * int(np.prod(weight)))
            if hidden_qk is None:
                unresolved.append(node.name or op)
                continue
            add(op + " (scores, context)", "fp32", batch * length * length * (hidden_qk + hidden_v))
    return {
        "tokens": tokens,
        "macs": totals["int8"] + totals["fp32"],
        "int8_macs": totals["int8"],
        "fp32_macs": totals["fp32"],
        "by_op": dict(sorted(by_op.items(), key=lambda item: -item[1])),
        "unresolved": unresolved,
    }


# --- the run ----------------------------------------------------------------------------------------------------


def median_tokens(predictor: Any, texts: list[str]) -> int:
    """Median token count (special tokens included, before truncation) of `texts` with the model's tokenizer."""
    counts = predictor.token_counts(texts)
    return round(statistics.median(min(count, predictor.max_length) for count in counts))


def time_round(predictor: Any, queries: list[str]) -> tuple[list[float], list[float]]:
    """Milliseconds of `predict_logits([text])` for each query (after 10 untimed calls to re-warm the caches), and
    of its tokenization alone (`tokenize([text])`), which is part of the latency but not of the floor. Its own
    loop, not slimformer.timing's `predict`: the logits alone (no label step) against the floor, and the
    tokenization timed apart; the rounds interleave with the GEMM peaks (see `run`)."""
    for text in queries[:10]:
        predictor.predict_logits([text])
    timings, tokenizing = [], []
    for text in queries:
        tick = time.perf_counter()
        predictor.predict_logits([text])
        timings.append((time.perf_counter() - tick) * 1000)
    for text in queries:
        tick = time.perf_counter()
        predictor.tokenize([text], "np")
        tokenizing.append((time.perf_counter() - tick) * 1000)
    return timings, tokenizing


def run(folders: list[str], threads: int, data_name: str, queries: int, rounds: int, seed: int = 0) -> dict[str, Any]:
    import onnxruntime as ort

    from slimformer import predictor as predictors
    from slimformer.benchmark import environment_info
    from slimformer.data import column, load_data
    from slimformer.timing import sample_queries, wait_until_idle

    data = load_data(data_name)
    validation = column(data.validation, "text")
    sample = sample_queries(validation, queries, seed)

    thread_counts = sorted({threads, 1}, reverse=True)
    kinds = ("matmul_integer", "dynamic_quantize_matmul", "fp32_matmul")
    kernels = {(kind, t): GemmKernel(kind, t) for kind in kinds for t in thread_counts}
    models = []
    for folder in folders:
        model = predictors.load(folder, threads=threads)
        if model.backend != "onnxruntime":
            raise SystemExit(f"{folder}: not an ONNX folder (model.onnx); export it first")
        tokens = median_tokens(model, validation)
        counted = count_macs(model.onnx_path, tokens)
        # the same GEMMs at the model's own small shapes: what the kernels reach on L-row activations
        hidden, wide = _widest_weight(model.onnx_path)
        small = {
            "int8": GemmKernel("dynamic_quantize_matmul", threads, tokens, hidden, wide),
            "fp32": GemmKernel("fp32_matmul", threads, tokens, hidden, wide),
        }
        models.append(
            {
                "folder": folder,
                "predictor": model,
                "count": counted,
                "small": small,
                "gemm": (hidden, wide),
                "timings": [],
                "tokenizing": [],
            }
        )

    peaks: dict[tuple[str, int], list[float]] = {key: [] for key in kernels}
    small_rates: dict[tuple[int, str], list[float]] = {(i, p): [] for i in range(len(models)) for p in ("int8", "fp32")}
    for round_index in range(rounds):
        for key, kernel in kernels.items():
            peaks[key].append(kernel.gmacs())
        for index in _rotated(range(len(models)), round_index):
            entry = models[index]
            for precision, kernel in entry["small"].items():
                small_rates[(index, precision)].append(kernel.gmacs(0.1))
            wait_until_idle()  # the kernels' idle workers spin for ~40 ms: not while the model is timed
            timings, tokenizing = time_round(entry["predictor"], sample)
            entry["timings"].append(timings)
            entry["tokenizing"] += tokenizing
        print(f"round {round_index + 1}/{rounds} done", flush=True)

    # the peak of a round is the median call's rate; the run's peak is the best round (load only slows a kernel)
    peak = {f"{kind}@{t}": round(max(peaks[(kind, t)]), 1) for kind, t in kernels}
    peak_median = {f"{kind}@{t}": round(statistics.median(peaks[(kind, t)]), 1) for kind, t in kernels}
    int8_peak = max(peak[f"matmul_integer@{threads}"], peak[f"dynamic_quantize_matmul@{threads}"])
    fp32_peak = peak[f"fp32_matmul@{threads}"]
    results = []
    for index, entry in enumerate(models):
        counted = entry["count"]
        timings = [t for round_timings in entry["timings"] for t in round_timings]
        p50 = float(np.percentile(timings, 50))
        int8_floor = counted["macs"] / int8_peak / 1e6
        fp32_floor = counted["macs"] / fp32_peak / 1e6
        mixed_floor = (counted["int8_macs"] / int8_peak + counted["fp32_macs"] / fp32_peak) / 1e6
        small_int8 = max(small_rates[(index, "int8")])
        small_fp32 = max(small_rates[(index, "fp32")])
        small_floor = (counted["int8_macs"] / small_int8 + counted["fp32_macs"] / small_fp32) / 1e6
        results.append(
            {
                "model": entry["folder"],
                **counted,
                "int8_floor_ms": round(int8_floor, 4),
                "mixed_floor_ms": round(mixed_floor, 4),
                "fp32_floor_ms": round(fp32_floor, 4),
                "small_shape": {
                    "gemm": "x".join(str(d) for d in (counted["tokens"], *entry["gemm"])),
                    "int8_gmacs": round(small_int8, 1),
                    "fp32_gmacs": round(small_fp32, 1),
                    "floor_ms": round(small_floor, 4),
                },
                "p50_ms": round(p50, 4),
                "p90_ms": round(float(np.percentile(timings, 90)), 4),
                "tokenize_p50_ms": round(float(np.percentile(entry["tokenizing"], 50)), 4),
                "round_p50_ms": [round(float(np.percentile(r, 50)), 4) for r in entry["timings"]],
                "latency_over_int8_floor": round(p50 / int8_floor, 1),
                "latency_over_mixed_floor": round(p50 / mixed_floor, 1),
                "latency_over_fp32_floor": round(p50 / fp32_floor, 1),
                "latency_over_small_shape_floor": round(p50 / small_floor, 1),
            }
        )
    return {
        "environment": {**environment_info(threads), "onnxruntime": ort.__version__},
        "queries": len(sample),
        "rounds": rounds,
        "data": data_name,
        "gemm": f"{GEMM_SIZE}x{GEMM_SIZE}x{GEMM_SIZE}",
        "peak_gmacs": peak,
        "peak_gmacs_median_round": peak_median,
        "int8_peak_gmacs": int8_peak,
        "fp32_peak_gmacs": fp32_peak,
        "results": results,
    }


def _widest_weight(onnx_path: str | Path) -> tuple[int, int]:
    """(K, N) of the largest 2-D weight a MatMul-like node multiplies by (the FFN's), for the small-shape GEMM."""
    import onnx

    model = onnx.load(str(onnx_path))
    dims = {init.name: tuple(init.dims) for init in model.graph.initializer if len(init.dims) == 2}
    matmul_weights = [
        dims[node.input[1]]
        for node in model.graph.node
        if node.op_type in INT8_MATMULS | FP32_MATMULS and len(node.input) > 1 and node.input[1] in dims
    ]
    return max(matmul_weights, key=lambda kn: kn[0] * kn[1], default=(GEMM_SIZE, GEMM_SIZE))


def _rotated(items: range, shift: int) -> list[int]:
    items = list(items)
    shift %= max(len(items), 1)
    return items[shift:] + items[:shift]


# the model table: header and cell of each column
MODEL_COLUMNS: list[tuple[str, Any]] = [
    ("model", lambda r: r["model"]),
    ("tokens", lambda r: r["tokens"]),
    ("MACs/query (int8 + fp32)", lambda r: f"{r['macs'] / 1e6:.1f}M ({r['int8_macs'] / 1e6:.1f}M + {r['fp32_macs'] / 1e6:.1f}M)"),  # noqa: E501
    ("int8 floor ms", lambda r: f"{r['int8_floor_ms']:.4f}"),
    ("mixed floor ms", lambda r: f"{r['mixed_floor_ms']:.4f}"),
    ("fp32 floor ms", lambda r: f"{r['fp32_floor_ms']:.4f}"),
    ("small-shape floor ms", lambda r: f"{r['small_shape']['floor_ms']:.4f}"),
    ("p50 ms", lambda r: f"{r['p50_ms']:.3f}"),
    ("of it tokenizing", lambda r: f"{r['tokenize_p50_ms']:.3f}"),
    ("p50 / int8 floor", lambda r: f"{r['latency_over_int8_floor']}x"),
    ("p50 / mixed floor", lambda r: f"{r['latency_over_mixed_floor']}x"),
    ("p50 / small-shape floor", lambda r: f"{r['latency_over_small_shape_floor']}x"),
]  # fmt: skip


def print_report(report: dict[str, Any]) -> None:
    """The peaks and the models' floors as markdown tables."""
    env = report["environment"]
    isa = ", ".join(name for name, present in env["isa"].items() if present)
    print(f"\n{env['cpu']} ({isa}), onnxruntime {env['onnxruntime']}, {env['timestamp']}")
    print(f"\nPeaks ({report['gemm']}, GMAC/s, best of {report['rounds']} rounds; median round in brackets):\n")
    columns = sorted({key.split("@")[1] for key in report["peak_gmacs"]}, key=int, reverse=True)
    print("| kernel | " + " | ".join(f"{c} thread" + ("s" if c != "1" else "") for c in columns) + " |")
    print("|---|" + "---|" * len(columns))
    by_kind: dict[str, dict[str, str]] = {}
    for key, value in report["peak_gmacs"].items():
        kind, threads = key.split("@")
        by_kind.setdefault(kind, {})[threads] = f"{value} ({report['peak_gmacs_median_round'][key]})"
    for kind, values in by_kind.items():
        print(f"| {kind} | " + " | ".join(values[c] for c in columns) + " |")
    sample = f"{report['queries']} validation queries x {report['rounds']} rounds"
    print(f"\nModels (batch 1, {env['threads']} intra-op threads, {sample}):\n")
    print("| " + " | ".join(header for header, _ in MODEL_COLUMNS) + " |")
    print("|" + "---|" * len(MODEL_COLUMNS))
    for r in report["results"]:
        print("| " + " | ".join(str(cell(r)) for _, cell in MODEL_COLUMNS) + " |")
        if r["unresolved"]:
            print(f"  (shapes not found for {len(r['unresolved'])} nodes: their rows taken as {r['tokens']} tokens)")


def main() -> None:
    from slimformer.cpu import default_threads

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="MODEL_FOLDER", help="ONNX model folders (model.onnx)")
    parser.add_argument("--threads", type=int, default=default_threads(), help="intra-op threads (default: all cores)")
    parser.add_argument("--data", default="clinc150", help="dataset whose validation queries are timed")
    parser.add_argument("--queries", type=int, default=300, help="validation queries timed per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of peaks and latency")
    parser.add_argument("--json", help="write the report as JSON")
    args = parser.parse_args()
    report = run(args.models, args.threads, args.data, args.queries, args.rounds)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
