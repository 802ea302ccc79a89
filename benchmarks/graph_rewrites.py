"""What each of `slimformer optimize`'s exact graph rewrites buys at batch 1 (issue #15), side by side in one run.

1. The operator alone: ONNX Runtime's fused SkipLayerNormalization against the Add + Add (bias) +
   LayerNormalization it is rewritten into, one-node graphs at hidden 384 and a few (batch, tokens) shapes, at
   1 and 2 intra-op threads (median of 2,000 runs each).
2. A real model: an exported ONNX folder (e.g. `make demo`'s `stages/*-export-*`) optimized at level 99 four
   ways (no rewrite, first-token tail only, SkipLayerNormalization split only, both) and each quantized to
   dynamic INT8 as the recipe does; every variant is timed at batch 1 over real validation queries
   (tokenization included) in interleaved rounds, at `--threads`, and scored on the validation split.

Run from the repository root:

    .venv/bin/python benchmarks/graph_rewrites.py EXPORT_FOLDER [--threads 2] [--queries 300] [--rounds 5] \\
        [--data clinc150] [--work runs/rewrites] [--json rewrites.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN = 384
SHAPES = ((1, 10), (1, 64), (32, 16))
VARIANTS = {  # name: (first_token_tail, split_skip_layernorm)
    "fused (no rewrite)": (False, False),
    "first-token tail": (True, False),
    "split SkipLayerNorm": (False, True),
    "both (the default)": (True, True),
}


def _layer_norm_graph(fused: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    shape = ["batch", "tokens", HIDDEN]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in ("x", "skip")]
    weights = [
        numpy_helper.from_array(np.full(HIDDEN, value, np.float32), name)
        for name, value in (("gamma", 1.0), ("beta", 0.0), ("bias", 0.1))
    ]
    if fused:
        nodes = [
            helper.make_node(
                "SkipLayerNormalization",
                ["x", "skip", "gamma", "beta", "bias"],
                ["y"],
                domain="com.microsoft",
                epsilon=1e-12,
            )
        ]
    else:
        nodes = [
            helper.make_node("Add", ["x", "skip"], ["residual"]),
            helper.make_node("Add", ["residual", "bias"], ["biased"]),
            helper.make_node("LayerNormalization", ["biased", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
        ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "layer_norm", inputs, [output], weights)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def operator_table(runs: int = 2000) -> list[dict[str, Any]]:
    """Median microseconds of one session.run of each form, per shape and thread count."""
    import onnxruntime as ort

    from slimformer.predictor import session_options

    rows = []
    rng = np.random.default_rng(0)
    for threads in (1, 2):
        for batch, tokens in SHAPES:
            x = rng.standard_normal((batch, tokens, HIDDEN)).astype(np.float32)
            row: dict[str, Any] = {"threads": threads, "shape": f"{batch} x {tokens} x {HIDDEN}"}
            for name, fused in (("SkipLayerNormalization", True), ("Add + Add + LayerNormalization", False)):
                options = session_options(threads)
                options.log_severity_level = 3
                session = ort.InferenceSession(_layer_norm_graph(fused), options, providers=["CPUExecutionProvider"])
                feed = {"x": x, "skip": x}
                for _ in range(100):
                    session.run(None, feed)
                # its own loop, not slimformer.timing: one operator's session.run on a fixed feed, no text
                timings = []
                for _ in range(runs):
                    tick = time.perf_counter()
                    session.run(None, feed)
                    timings.append(time.perf_counter() - tick)
                row[name] = round(float(np.median(timings)) * 1e6, 1)
            rows.append(row)
    return rows


def build_variants(export_dir: Path, work: Path, threads: int, data: Any) -> dict[str, Path]:
    """The export optimized four ways (VARIANTS), each quantized to dynamic INT8: {variant: INT8 folder}."""
    from slimformer.onnx import OptimizeConfig, QuantizeConfig, optimize_onnx, quantize

    folders = {}
    for index, (name, (tail, split)) in enumerate(VARIANTS.items()):
        optimized, int8 = work / f"{index}-opt", work / f"{index}-int8"
        if not (int8 / "model.onnx").is_file():
            config = OptimizeConfig(level=99, threads=threads, first_token_tail=tail, split_skip_layernorm=split)
            optimize_onnx(export_dir, optimized, config)
            quantize(optimized, int8, QuantizeConfig(method="dynamic", threads=threads), data)
        folders[name] = int8
    return folders


def time_variants(folders: dict[str, Path], texts: list[str], threads: int, rounds: int) -> dict[str, list[float]]:
    """Batch-1 milliseconds of every variant, the variants taking turns over `rounds` slices of `texts` (the
    first one rotating)."""
    from slimformer.predictor import load
    from slimformer.timing import flat, interleaved_latencies_ms, predictor_timer, split_rounds

    timers = {name: predictor_timer(load(folder, threads=threads)) for name, folder in folders.items()}
    by_round = interleaved_latencies_ms(timers, split_rounds(texts, rounds))
    return {name: flat(timings) for name, timings in by_round.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="an exported ONNX folder (slimformer export)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--work", type=Path, default=Path("runs/rewrites"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from slimformer.cpu import cpu_model, isa_summary
    from slimformer.data import column, load_data
    from slimformer.evaluation import score_logits
    from slimformer.predictor import load
    from slimformer.timing import sample_queries

    data = load_data(args.data)
    texts = column(data.validation, "text")
    queries = sample_queries(texts, args.queries)
    operators = operator_table()
    folders = build_variants(args.export, args.work, args.threads, data)
    timings = time_variants(folders, queries, args.threads, args.rounds)
    labels = column(data.validation, "label")
    base = float(np.median(timings["fused (no rewrite)"]))
    rows = []
    for name, folder in folders.items():
        predictor = load(folder, threads=args.threads)
        scores = score_logits(predictor.predict_logits(texts, 64), predictor.labels, labels, data)
        p50 = float(np.median(timings[name]))
        rows.append(
            {
                "variant": name,
                "p50_ms": round(p50, 4),
                "speedup": round(base / p50, 3),
                "validation_accuracy": round(scores["accuracy"], 4),
            }
        )
    isa = ", ".join(flag for flag, present in isa_summary().items() if present)
    print(f"{cpu_model()} ({isa}); {args.threads} intra-op threads for the models")
    print("\n| threads | shape | SkipLayerNormalization us | Add + Add + LayerNormalization us |\n|---|---|---|---|")
    for row in operators:
        print(
            f"| {row['threads']} | {row['shape']} | {row['SkipLayerNormalization']} | "
            f"{row['Add + Add + LayerNormalization']} |"
        )
    print(
        "\n| dynamic INT8 of the export, optimized with | p50 ms | speed-up | validation accuracy |\n|---|---|---|---|"
    )
    for row in rows:
        print(f"| {row['variant']} | {row['p50_ms']:.3f} | {row['speedup']:.2f}x | {row['validation_accuracy']:.4f} |")
    if args.json:
        payload = {
            "cpu": cpu_model(),
            "isa": isa_summary(),
            "threads": args.threads,
            "queries": len(queries),
            "rounds": args.rounds,
            "operators": operators,
            "models": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
