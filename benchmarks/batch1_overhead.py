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


def parts(predictor: Any, texts: list[str]) -> dict[str, Callable[[int], Any]]:
    """Each part as a function of the query's index."""
    session, encoder = predictor.session, predictor.encoder
    inputs = [encoder.encode([text])[0] for text in texts]
    ticks = []
    for text in texts:
        tick = time.perf_counter()
        encoder.encode([text])
        ticks.append(time.perf_counter() - tick)
    tokenizing = statistics.median(ticks)

    def busy_wait_then_run(i: int) -> Any:
        tick = time.perf_counter()
        while time.perf_counter() - tick < tokenizing:
            pass
        return session.run(None, inputs[i])

    return {
        "session.run (inputs ready)": lambda i: session.run(None, inputs[i]),
        "tokenization": lambda i: encoder.encode([texts[i]]),
        "tokenization, then session.run": lambda i: (encoder.encode([texts[i]]), session.run(None, inputs[i])),
        "busy-wait as long, then session.run": busy_wait_then_run,
        "predict_logits": lambda i: predictor.predict_logits([texts[i]]),
        "predict (label + probability)": lambda i: predictor.predict([texts[i]]),
        "predict_logits + full softmax": lambda i: full_softmax_labels(predictor, predictor.predict_logits([texts[i]])),
        "session 7's predict": lambda i: session7_predict(predictor, texts[i]),
    }


def time_parts(timed: dict[str, Callable[[int], Any]], count: int, rounds: int) -> dict[str, list[float]]:
    """Median ms of each part in each round (5 untimed calls first in every round)."""
    names = list(timed)
    medians: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run = timed[name]
            for i in range(5):
                run(i)
            ticks = []
            for i in range(count):
                tick = time.perf_counter()
                run(i)
                ticks.append((time.perf_counter() - tick) * 1000)
            medians[name].append(statistics.median(ticks))
    return medians


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

    texts = column(load_data(args.data).validation, "text")
    order = np.random.default_rng(0).permutation(len(texts))[: args.queries]
    queries = [texts[i] for i in order]
    predictor = load(args.model, threads=args.threads)
    medians = time_parts(parts(predictor, queries), len(queries), args.rounds)
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
