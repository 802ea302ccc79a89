"""How steady is a thread choice over minutes on a shared host? (issue #15)

`slimformer export / optimize / quantize` time their output at 1..N threads for about a second and record the
fastest. On a shared VM the second core is not always there to use: this script loads the same ONNX model twice,
at 1 thread and at N threads (spinning on, as the stages measure it), each in a process of its own, and for
`--seconds` times a block of batch-1 `predict([text])` calls on each in turn (as `slimformer benchmark` times a
turn: warm-up first, and the next block starts once the previous one's thread pool has stopped spinning), then
pauses a second. Every block's
p50 goes to the JSON lines file, and a summary is printed: the median and mean of the blocks' p50s, and in how
many blocks N threads were slower than 1.

    .venv/bin/python benchmarks/thread_drift.py MODEL_FOLDER [--threads 2] [--seconds 300] [--block 200] \\
        [--data clinc150] [--jsonl drift.jsonl]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import statistics
import time
from typing import Any

_LOADED: dict[str, Any] = {}


def load_model(folder: str, threads: int, queries: list[str]) -> None:
    """In the worker: the predictor at `threads`, warmed up."""
    from slimformer.predictor import load
    from slimformer.timing import batch1_latencies_ms

    _LOADED["predictor"] = load(folder, threads=threads, spinning=True)
    _LOADED["queries"] = queries
    batch1_latencies_ms(_LOADED["predictor"], queries[:20], warmup=0)  # an untimed first pass


def block_p50_ms() -> float:
    """In the worker: p50 (ms) of one block of batch-1 calls, timed as `slimformer benchmark` times a turn (a
    warm-up of ROUND_WARMUP calls and WARMUP_MIN_S first; the block ends once the thread pool has stopped
    spinning)."""
    from slimformer.timing import ROUND_WARMUP, batch1_latencies_ms

    return statistics.median(batch1_latencies_ms(_LOADED["predictor"], _LOADED["queries"], ROUND_WARMUP))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2, help="compared with 1 thread")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--block", type=int, default=200, help="queries a block")
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--jsonl", help="one line a round: time and each setting's block p50")
    args = parser.parse_args()

    import numpy as np

    from slimformer.cpu import cpu_model
    from slimformer.data import column, load_data
    from slimformer.timing import sample_queries

    queries = sample_queries(column(load_data(args.data).validation, "text"), args.block)
    context = multiprocessing.get_context("spawn")
    settings = (1, args.threads)
    workers = {n: concurrent.futures.ProcessPoolExecutor(1, mp_context=context) for n in settings}
    for threads, worker in workers.items():
        worker.submit(load_model, args.model, threads, queries).result()
    blocks: dict[int, list[float]] = {n: [] for n in settings}
    end = time.time() + args.seconds
    with open(args.jsonl, "w") if args.jsonl else contextlib.nullcontext() as out:
        # its own rounds, not interleaved_latencies_ms: they go on until --seconds have passed (drift over time),
        # each setting's block timed in a process of its own
        while time.time() < end:
            row: dict[str, Any] = {"time": round(time.time(), 1)}
            for threads, worker in workers.items():
                blocks[threads].append(worker.submit(block_p50_ms).result())
                row[f"{threads}_threads_p50_ms"] = round(blocks[threads][-1], 4)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
            time.sleep(1.0)
    for worker in workers.values():
        worker.shutdown()
    one, many = blocks[1], blocks[args.threads]
    print(f"{cpu_model()}, {len(one)} rounds of {args.block} queries over {args.seconds:.0f} s")
    for threads in settings:
        values = blocks[threads]
        p90 = float(np.percentile(values, 90))
        print(
            f"  {threads} thread(s): median of block p50s {statistics.median(values):.3f} ms, "
            f"mean {statistics.mean(values):.3f} ms, p90 {p90:.3f} ms"
        )
    slower = sum(b > a for a, b in zip(one, many, strict=True))
    print(f"  {args.threads} threads slower than 1 in {slower} of {len(one)} blocks")


if __name__ == "__main__":
    main()
