"""Does `slimformer benchmark` add overhead? Compare its p50 with a plain `model(**tokenizer(text))` loop.

Both time batch-1 predictions over the same real test queries with the same threads, in the same run:

    .venv/bin/python benchmarks/harness_overhead.py MODEL_DIR --threads 2 --samples 500
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def plain_loop_p50(model_dir: str, texts: list[str], threads: int, warmup: int) -> float:
    """p50 (ms) of the simplest honest loop: tokenizer + model forward, nothing else. Its own loop on purpose: it
    is the baseline that slimformer.timing (through `slimformer benchmark`) is compared against."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    timings = []
    with torch.inference_mode():
        for i, text in enumerate(texts[:warmup] + texts):
            tick = time.perf_counter()
            model(**tokenizer(text, return_tensors="pt"))
            if i >= warmup:
                timings.append((time.perf_counter() - tick) * 1000)
    return float(np.percentile(timings, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--output", help="write the comparison as JSON")
    args = parser.parse_args()

    from slimformer.benchmark import BenchmarkConfig, benchmark_models
    from slimformer.data import column, load_data
    from slimformer.timing import sample_queries

    data = load_data(args.data)
    queries = sample_queries(column(data.test, "text"), args.samples)  # the queries `benchmark` draws (seed 0)

    plain = plain_loop_p50(args.model, queries, args.threads, args.warmup)
    config = BenchmarkConfig(threads=args.threads, latency_samples=args.samples, warmup=args.warmup)
    report = benchmark_models([args.model], data, config)
    harness = report["results"][0]["latency_ms"]["p50"]
    result = {
        "model": args.model,
        "threads": args.threads,
        "cpu": report["environment"]["cpu"],
        "samples": args.samples,
        "plain_loop_p50_ms": round(plain, 3),
        "benchmark_p50_ms": harness,
        "ratio": round(harness / plain, 3),
    }
    print("| plain loop p50 (ms) | slimformer benchmark p50 (ms) | ratio |")
    print("|---|---|---|")
    print(f"| {result['plain_loop_p50_ms']:.2f} | {harness:.2f} | {result['ratio']:.2f}x |")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
