"""Where a batch-1 `predict([text])` spends the time that is not the graph (issue #15), side by side in one run.

Each part below is timed over the same real validation queries, in interleaved rounds (the parts take turns,
the first one rotating), on one ONNX model folder (e.g. `make demo`'s `model/`) at its saved threads and spinning
unless `--threads` is given:

- `session.run` alone, on inputs tokenized beforehand;
- the tokenization alone (`TextEncoder.encode`, the predictor's own);
- the tokenization, then `session.run` on the inputs tokenized beforehand: it shows what tokenizing costs the
  graph that runs after it (each evicts the other's code and data from the CPU caches);
- a busy-wait as long as the median tokenization, then `session.run` on the inputs tokenized beforehand: the same
  gap without touching memory;
- `predict_logits([text])`;
- `predict([text])`: label and probability, the call `slimformer benchmark` times;
- `predict_logits` then a vectorised full softmax over the labels (the label step before session 8);
- session 7's whole `predict`: inputs built as padded arrays (np.full, then each row filled) and the full softmax.

Run from the repository root:

    .venv/bin/python benchmarks/batch1_overhead.py MODEL_FOLDER [--threads N] [--queries 300] [--rounds 10] \\
        [--data clinc150] [--json overhead.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def full_softmax_labels(predictor: Any, logits: np.ndarray) -> tuple[list[str], list[float]]:
    """The label and probability through a full softmax of every label, vectorised over the batch (session 7)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    best = probs.argmax(axis=-1)
    return [predictor.labels[i] for i in best], [float(probs[row, i]) for row, i in enumerate(best)]


def session7_predict(predictor: Any, text: str) -> tuple[list[str], list[float]]:
    """Session 7's `predict([text])`: the arrays padded for any batch size (`padded_arrays`), the logits, a full
    softmax."""
    encoder = predictor.encoder
    encodings = [encoder.tokenizer.encode(text)]
    [encoder._full_count(e) for e in encodings]  # session 7 counted the tokens on every call as well
    return full_softmax_labels(predictor, predictor.logits_from_inputs(encoder.padded_arrays(encodings)))


def parts(predictor: Any, texts: list[str]) -> dict[str, Callable[[str], Any]]:
    """Each part as a function of the query's text."""
    session, encoder = predictor.session, predictor.encoder
    inputs = {text: encoder.encode([text])[0] for text in texts}
    ticks = []
    for text in texts:
        tick = time.perf_counter()
        encoder.encode([text])
        ticks.append(time.perf_counter() - tick)
    tokenizing = statistics.median(ticks)

    def busy_wait_then_run(text: str) -> Any:
        tick = time.perf_counter()
        while time.perf_counter() - tick < tokenizing:
            pass
        return session.run(None, inputs[text])

    return {
        "session.run (inputs ready)": lambda text: session.run(None, inputs[text]),
        "tokenization": lambda text: encoder.encode([text]),
        "tokenization, then session.run": lambda text: (encoder.encode([text]), session.run(None, inputs[text])),
        "busy-wait as long, then session.run": busy_wait_then_run,
        "predict_logits": lambda text: predictor.predict_logits([text]),
        "predict (label + probability)": lambda text: predictor.predict([text]),
        "predict_logits + full softmax": lambda text: full_softmax_labels(predictor, predictor.predict_logits([text])),
        "session 7's predict": lambda text: session7_predict(predictor, text),
    }


def part_timer(part: Callable[[str], Any]) -> Callable[[list[str], int], list[float]]:
    """A slimformer.timing RoundTimer for one part: `warmup` untimed calls, then each query timed, then the wait
    for idle thread pools. Its own loop because most parts are not a `predict([text])` call (session.run alone,
    the tokenizer alone, ...); `predict` goes through it too, so that every part is timed alike."""
    from slimformer.timing import wait_until_idle

    def timer(queries: list[str], warmup: int) -> list[float]:
        for i in range(warmup):
            part(queries[i % len(queries)])
        ticks = []
        for text in queries:
            tick = time.perf_counter()
            part(text)
            ticks.append((time.perf_counter() - tick) * 1000)
        wait_until_idle()
        return ticks

    return timer


def time_parts(timed: dict[str, Callable[[str], Any]], queries: list[str], rounds: int) -> dict[str, list[float]]:
    """Median ms of each part in each round: every round, each part times every query in turn (the first part
    rotating; 5 untimed calls first)."""
    from slimformer.timing import interleaved_latencies_ms

    timers = {name: part_timer(part) for name, part in timed.items()}
    by_round = interleaved_latencies_ms(timers, [queries] * rounds, warmup=5)
    return {name: [statistics.median(times) for times in timings] for name, timings in by_round.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=None, help="default: the folder's session.json")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()

    from slimformer.cpu import cpu_model
    from slimformer.data import column, load_data
    from slimformer.predictor import load
    from slimformer.timing import sample_queries

    queries = sample_queries(column(load_data(args.data).validation, "text"), args.queries)
    predictor = load(args.model, threads=args.threads)
    medians = time_parts(parts(predictor, queries), queries, args.rounds)
    result = {
        "model": args.model,
        "cpu": cpu_model(),
        "threads": predictor.threads,
        "spinning": predictor.spinning,
        "queries": len(queries),
        "rounds": args.rounds,
        "p50_ms": {name: round(statistics.median(values), 4) for name, values in medians.items()},
        "round_p50s_ms": {name: [round(v, 4) for v in values] for name, values in medians.items()},
    }
    print(
        f"{result['cpu']}, {result['threads']} thread(s), spinning {result['spinning']}, {len(queries)} queries x "
        f"{args.rounds} rounds (median of the rounds' medians)"
    )
    for name, value in result["p50_ms"].items():
        print(f"  {name:42s} {value:.4f} ms")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
