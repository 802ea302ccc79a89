"""Static vs dynamic INT8 on this CPU: every variant of one or more optimized fp32 ONNX folders, side by side.

For each folder: the fp32 graph, ORT dynamic INT8 (the stage's default settings) and the static variants
(QDQ / QOperator, per-channel / per-tensor weights, QDQ with float or requantized MatMul outputs), all built by
the quantize stage's own code (:class:`slimformer.onnx.ort_quantize.Int8Job`) from one calibration. Each is
scored on the validation split against fp32, then all of a folder's graphs are timed at batch 1 on real test
queries (tokenization included) in interleaved rounds, the first graph rotating each round, so background load
hits every variant alike. Prints a markdown table per folder and writes everything to --output.

    .venv/bin/python benchmarks/static_vs_dynamic.py /tmp/q-teacher-opt /tmp/q-s3-opt --data clinc150 \\
        --threads 1 2 --queries 1000 --rounds 10 --output static_vs_dynamic.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# name -> (method, overrides of the config's static settings); "fp32" is the unquantized graph. "+ dynamic
# Attention": the stage's default static (the fused Attention and embeddings, which ORT cannot quantize
# statically, quantized dynamically after the static pass)
PURE = {"dynamic_attention": False}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("fp32", {}),
    "dynamic": ("dynamic", {}),
    "static QDQ per-channel": ("static", {"quant_format": "qdq", "per_channel": True, **PURE}),
    "static QDQ per-channel, requantized outputs": (
        "static",
        {"quant_format": "qdq", "per_channel": True, "float_outputs": False, **PURE},
    ),
    "static QDQ per-tensor": ("static", {"quant_format": "qdq", "per_channel": False, **PURE}),
    "static QOperator per-channel": ("static", {"quant_format": "qoperator", "per_channel": True, **PURE}),
    "static QOperator per-tensor": ("static", {"quant_format": "qoperator", "per_channel": False, **PURE}),
    "static QDQ per-channel + dynamic Attention": ("static", {"quant_format": "qdq", "per_channel": True}),
    "static QDQ per-tensor + dynamic Attention": ("static", {"quant_format": "qdq", "per_channel": False}),
    "static QOperator per-channel + dynamic Attention": ("static", {"quant_format": "qoperator", "per_channel": True}),
}


def build_variants(job: Any, work: Path, names: list[str]) -> dict[str, Path]:
    """Every variant's graph (the fp32 one as it is)."""
    graphs = {}
    for index, name in enumerate(names):
        method, options = VARIANTS[name]
        if method == "fp32":
            graphs[name] = job.fp32_model
        else:
            graphs[name] = job.quantize_graph(method, [], work / f"variant-{index}.onnx", **options)
    return graphs


def score_variants(job: Any, graphs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Validation accuracy, drop vs fp32 in points, argmax agreement and size of each graph."""
    from slimformer.onnx.ort_quantize import QUANTIZED_OPS, op_histogram
    from slimformer.onnx.runtime import parity

    scores = {}
    for name, path in graphs.items():
        logits = job.evaluation.logits(path)
        accuracy = job.evaluation.accuracy(logits)
        scores[name] = {
            "accuracy": accuracy,
            "drop_points": round(100 * (job.reference_accuracy - accuracy), 3),
            "argmax_agreement": parity(job.reference_logits, logits)["argmax_agreement"],
            "size_mb": round(path.stat().st_size / 1e6, 2),
            "quantized_nodes": op_histogram(path, QUANTIZED_OPS),
        }
    return scores


def time_variants(
    job: Any, graphs: dict[str, Path], queries: list[str], threads: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """Batch-1 latency of each graph over the same queries, in interleaved rounds (first graph rotating)."""
    from slimformer.predictor import OnnxPredictor
    from slimformer.timing import (
        batch1_latencies_ms,
        flat,
        interleaved_latencies_ms,
        latency_summary,
        predictor_timer,
        split_rounds,
    )

    predictors = {
        name: OnnxPredictor.from_file(path, job.fp32_dir, threads=threads, max_length=job.config.max_length)
        for name, path in graphs.items()
    }
    for predictor in predictors.values():  # an untimed first pass: every session's first calls are slow
        batch1_latencies_ms(predictor, queries[:30], warmup=0)
    timers = {name: predictor_timer(predictor) for name, predictor in predictors.items()}
    timings = interleaved_latencies_ms(timers, split_rounds(queries, rounds))
    return {
        name: {
            **latency_summary(flat(by_round)),
            "median_round_p50": round(float(np.median([np.median(times) for times in by_round])), 3),
        }
        for name, by_round in timings.items()
    }


def benchmark_folder(folder: Path, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    from slimformer.data import column
    from slimformer.models import resolve_max_length
    from slimformer.onnx.ort_quantize import Int8Job
    from slimformer.onnx.quantize import QuantizeConfig
    from slimformer.timing import sample_queries

    max_length = resolve_max_length(folder, None)
    config = QuantizeConfig(method="static", threads=1, max_length=max_length)  # threads of the scoring pass
    queries = sample_queries(column(data.test, "text"), args.queries)
    with tempfile.TemporaryDirectory(prefix="static-vs-dynamic-") as work:
        job = Int8Job(folder, Path(work), config, data)
        graphs = build_variants(job, Path(work), args.variants)
        scores = score_variants(job, graphs)
        timed = []
        for threads in args.threads:
            load_before = os.getloadavg()[0]
            latency = time_variants(job, graphs, queries, threads, args.rounds)
            load = {"load_average_before": load_before, "load_average_after": os.getloadavg()[0]}
            timed.append({"threads": threads, **load, "latency_ms": latency})
    return {"folder": str(folder), "reference_accuracy": job.reference_accuracy, "variants": scores, "timed": timed}


def print_table(result: dict[str, Any]) -> None:
    variants = result["variants"]
    for timed in result["timed"]:
        latency = timed["latency_ms"]
        base = latency["dynamic"]["p50"] if "dynamic" in latency else None
        print(
            f"\n{result['folder']}: {timed['threads']} threads (load average {timed['load_average_before']:.1f} "
            f"-> {timed['load_average_after']:.1f}); fp32 validation accuracy {result['reference_accuracy']:.4f}\n"
        )
        print("| variant | p50 ms | median of round p50s | p95 ms | p50 / dynamic | accuracy | drop pts | size MB |")
        print("|---|---|---|---|---|---|---|---|")
        for name, row in variants.items():
            times = latency[name]
            ratio = f"{times['p50'] / base:.2f}x" if base else "-"
            print(
                f"| {name} | {times['p50']:.3f} | {times['median_round_p50']:.3f} | {times['p95']:.3f} | "
                f"{ratio} | {row['accuracy']:.4f} | {row['drop_points']:+.2f} | {row['size_mb']:.1f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="optimized fp32 ONNX folders (slimformer optimize)")
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="intra-op threads (each timed apart)")
    parser.add_argument("--queries", type=int, default=1000, help="batch-1 test queries timed per variant")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output", type=Path, default=Path("static_vs_dynamic.json"))
    args = parser.parse_args()

    import onnxruntime

    from slimformer.cpu import cpu_model, isa_summary
    from slimformer.data import load_data

    data = load_data(args.data)
    results = [benchmark_folder(folder, data, args) for folder in args.folders]
    environment = {
        "cpu": cpu_model(),
        "isa": isa_summary(),
        "threads": args.threads,
        "onnxruntime": onnxruntime.__version__,
        "queries": args.queries,
        "rounds": args.rounds,
    }
    isa = ", ".join(name for name, present in environment["isa"].items() if present)
    print(f"CPU: {environment['cpu']} ({isa}), onnxruntime {environment['onnxruntime']}")
    for result in results:
        print_table(result)
    args.output.write_text(json.dumps({"environment": environment, "results": results}, indent=2))


if __name__ == "__main__":
    main()
