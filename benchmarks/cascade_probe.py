"""A confidence cascade of two deployed models: a probe, not a stage.

Each query goes to the fast model (`make demo`'s 3-layer INT8 model); when its top probability is below a
threshold, the slow model (a deeper student, or the teacher) answers instead. This is the early-exit idea
(DeeBERT, FastBERT) with two separate artefacts: the p50 stays near the fast model's while few queries are
passed on, and accuracy moves towards the slow model's. The threshold is chosen on validation (the smallest
that brings validation accuracy within `--within` points of the slow model's); test is scored for every
threshold, then the cascade at the chosen one is timed side by side with both models. Run after `make demo`:

    .venv/bin/python benchmarks/cascade_probe.py --fast demo/model --slow runs/l5/model \
        --teacher demo/stages/01-finetune-teacher-* --output runs/cascade.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from slimformer.artifacts import weights_size_bytes
from slimformer.cpu import cpu_model
from slimformer.data import DataSplits, column, label_positions, load_data
from slimformer.evaluation import split_logits
from slimformer.metrics import classification_metrics
from slimformer.predictor import Predictor, load, softmax
from slimformer.timing import (
    flat,
    interleaved_latencies_ms,
    latency_summary,
    predictor_timer,
    sample_queries,
    split_rounds,
)

THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


class Cascade:
    """`fast` answers when its top probability reaches `threshold`; `slow` answers the rest."""

    def __init__(self, fast: Predictor, slow: Predictor, threshold: float) -> None:
        self.fast, self.slow, self.threshold = fast, slow, threshold

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        labels, scores = self.fast.predict(texts)
        unsure = [i for i, score in enumerate(scores) if score < self.threshold]
        if unsure:
            slow_labels, slow_scores = self.slow.predict([texts[i] for i in unsure])
            for i, label, score in zip(unsure, slow_labels, slow_scores, strict=True):
                labels[i], scores[i] = label, score
        return labels, scores


def scored(predictor: Predictor, split: str, data: DataSplits) -> tuple[np.ndarray, np.ndarray]:
    """Dataset label ids of the predictions on `split` and their probabilities."""
    probabilities = softmax(split_logits(predictor, data.split(split)))
    return label_positions(predictor.labels, data.labels)[probabilities.argmax(-1)], probabilities.max(-1)


def cascade_rows(fast: tuple, slow: tuple, truth: np.ndarray, oos: int | None) -> list[dict[str, Any]]:
    """Accuracy per kind and the share passed on, for every threshold."""
    rows = []
    for threshold in THRESHOLDS:
        unsure = fast[1] < threshold
        predicted = np.where(unsure, slow[0], fast[0])
        metrics = classification_metrics(truth, predicted, oos)
        rows.append({"threshold": threshold, "passed_on": round(float(unsure.mean()), 4), **metrics})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", type=Path, required=True)
    parser.add_argument("--slow", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True, help="timed beside them, the speed-ups' yardstick")
    parser.add_argument("--data", default="clinc150")
    parser.add_argument(
        "--slow-threads",
        type=int,
        default=1,
        help="the slow model's intra-op threads: at 1 it runs on the calling thread, so no second pool of workers "
        "spins beside the fast model's (ONNX Runtime's Python API has no thread pool shared between sessions)",
    )
    parser.add_argument("--within", type=float, default=0.1, help="points below the slow model on validation")
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    data = load_data(args.data)
    oos = data.oos_label_id
    fast, slow, teacher = load(args.fast), load(args.slow, threads=args.slow_threads), load(args.teacher)
    result: dict[str, Any] = {"cpu": cpu_model(), "fast": str(args.fast), "slow": str(args.slow), "splits": {}}
    result["threads"] = {"fast": fast.threads, "slow": slow.threads, "teacher": teacher.threads}
    for split in ("validation", "test"):
        truth = np.array(column(data.split(split), "label"))
        outputs = {
            name: scored(model, split, data) for name, model in (("fast", fast), ("slow", slow), ("teacher", teacher))
        }
        result["splits"][split] = {
            "teacher": classification_metrics(truth, outputs["teacher"][0], oos),
            "slow": classification_metrics(truth, outputs["slow"][0], oos),
            "cascade": cascade_rows(outputs["fast"], outputs["slow"], truth, oos),
        }
    validation = result["splits"]["validation"]
    target = validation["slow"]["accuracy"] - args.within / 100
    chosen = next((row["threshold"] for row in validation["cascade"] if row["accuracy"] >= target), THRESHOLDS[-1])
    result["threshold"] = chosen

    queries = sample_queries(column(data.test, "text"), args.latency_samples)
    models = {"teacher": teacher, "fast": fast, "slow": slow, "cascade": Cascade(fast, slow, chosen)}
    timings = interleaved_latencies_ms(
        {name: predictor_timer(model) for name, model in models.items()}, split_rounds(queries, args.rounds)
    )
    summaries = {name: latency_summary(flat(times)) for name, times in timings.items()}
    teacher_p50 = summaries["teacher"]["p50"]
    result["latency_ms"] = {
        name: {**summary, "speedup_p50": round(teacher_p50 / summary["p50"], 2)} for name, summary in summaries.items()
    }
    sizes = {name: weights_size_bytes(folder) / 1e6 for name, folder in (("fast", args.fast), ("slow", args.slow))}
    result["size_mb"] = {**{k: round(v, 2) for k, v in sizes.items()}, "cascade": round(sum(sizes.values()), 2)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    for split, found in result["splits"].items():
        print(split, "teacher", found["teacher"], "slow", found["slow"])
        for row in found["cascade"]:
            print(f"  {row}")
    print("threshold", chosen, json.dumps(result["latency_ms"]), result["size_mb"])


if __name__ == "__main__":
    main()
