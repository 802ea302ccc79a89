"""The static student beside its peers on CLINC150 test, in one harness: the fine-tuned teacher, slimformer's
static student (ONNX folders from `slimformer static` → export → quantize), TF-IDF + logistic regression
(scikit-learn) and, with --peers-python, model2vec distilled from the same teacher (benchmarks/peers).

Accuracy overall, in scope and out-of-scope recall; batch-1 p50 (tokenization included) of the in-process models
timed in interleaved rounds, so background load hits them alike; size on disk (weights). Run from the repository
root after `make demo`:

    .venv/bin/python benchmarks/static_peers.py --teacher demo/stages/01-finetune-teacher-* \
        --static runs/static/int8 --peers-python .venv-peers/bin/python --json runs/static/peers.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from slimformer.artifacts import weights_size_bytes
from slimformer.cpu import cpu_model, default_threads
from slimformer.data import column, load_data
from slimformer.evaluation import score_logits
from slimformer.predictor import load
from slimformer.timing import flat, interleaved_latencies_ms, predictor_timer, sample_queries, split_rounds


class TfidfLogistic:
    """TF-IDF (word 1-2 grams) + logistic regression, with the Predictor's `predict` / `labels` surface."""

    def __init__(self, data: Any) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.labels = list(data.labels)
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        features = self.vectorizer.fit_transform(column(data.train, "text"))
        self.model = LogisticRegression(max_iter=3000, C=20.0).fit(features, column(data.train, "label"))

    def logits(self, texts: list[str]) -> np.ndarray:
        scores = self.model.decision_function(self.vectorizer.transform(texts))
        full = np.full((len(texts), len(self.labels)), -1e9, dtype=np.float32)
        full[:, self.model.classes_] = scores
        return full

    def predict(self, texts: list[str]) -> list[int]:
        return self.logits(texts).argmax(axis=1).tolist()

    def size_mb(self) -> float:
        vocabulary = sum(len(word) + 8 for word in self.vectorizer.vocabulary_)
        return round((self.model.coef_.nbytes + self.vectorizer.idf_.nbytes + vocabulary) / 1e6, 2)


def predictor_logits(predictor: Any, texts: list[str]) -> np.ndarray:
    return np.concatenate([predictor.predict_logits(texts[i : i + 256]) for i in range(0, len(texts), 256)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--static", type=Path, nargs="+", required=True, help="static student ONNX folders")
    parser.add_argument("--peers-python", help="the peers' venv python (model2vec); else that row is left out")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path("runs/static/peers.json"))
    args = parser.parse_args()
    data = load_data("clinc150")
    test_labels = column(data.test, "label")
    test_texts = column(data.test, "text")
    queries = sample_queries(test_texts, args.queries)
    models: dict[str, Any] = {"teacher (PyTorch fp32)": load(args.teacher, threads=args.threads)}
    for folder in args.static:
        models[f"static: {folder.name}"] = load(folder, threads=args.threads)
    tfidf = TfidfLogistic(data)
    models["TF-IDF + logistic regression"] = tfidf
    rows: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        logits = tfidf.logits(test_texts) if model is tfidf else predictor_logits(model, test_texts)
        labels = tfidf.labels if model is tfidf else model.labels
        rows[name] = {"test": score_logits(logits, labels, test_labels, data), "timings": []}
        rows[name]["size_mb"] = (
            tfidf.size_mb()
            if model is tfidf
            else round(weights_size_bytes(args.teacher if name.startswith("teacher") else model.path) / 1e6, 2)
        )
    timers = {name: predictor_timer(model) for name, model in models.items()}
    for name, timings in interleaved_latencies_ms(timers, split_rounds(queries, args.rounds), warmup=20).items():
        rows[name]["timings"] = flat(timings)
    if args.peers_python:
        rows["model2vec (same teacher) + logistic regression"] = model2vec_row(args, data, queries, test_labels)
    teacher_p50 = statistics.median(rows["teacher (PyTorch fp32)"]["timings"])
    lines = [
        f"CPU: {cpu_model()}, {args.threads or default_threads()} threads; CLINC150 test ({len(test_texts)} rows)",
        "",
        "| model | accuracy | in scope | OOS recall | p50 ms | speed-up | size MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        p50 = row.get("p50_ms") or statistics.median(row["timings"])
        row["p50_ms"] = round(p50, 4)
        row.pop("timings", None)
        test = row["test"]
        lines.append(
            f"| {name} | {100 * test['accuracy']:.2f} | {100 * test.get('in_scope_accuracy', 0):.2f} | "
            f"{100 * test.get('oos_recall', 0):.2f} | {p50:.3f} | {teacher_p50 / p50:.1f}x | {row['size_mb']} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=2))
    args.json.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def model2vec_row(args: argparse.Namespace, data: Any, queries: list[str], test_labels: list[int]) -> dict:
    """model2vec in the peers' venv (its own process: the p50 there is timed the same way, not interleaved)."""
    from slimformer.metrics import classification_metrics

    with tempfile.TemporaryDirectory() as work:
        splits = Path(work) / "splits.json"
        splits.write_text(
            json.dumps(
                {
                    "train": {"text": column(data.train, "text"), "label": column(data.train, "label")},
                    "test": {"text": column(data.test, "text"), "label": test_labels},
                    "queries": queries,
                }
            )
        )
        output = Path(work) / "out.json"
        script = Path(__file__).with_name("peers") / "model2vec_peer.py"
        command = [args.peers_python, str(script), "--teacher", str(args.teacher), "--splits", str(splits)]
        subprocess.run([*command, "--output", str(output)], check=True)
        result = json.loads(output.read_text())
    test = classification_metrics(test_labels, result["predictions"], data.oos_label_id)
    return {"test": test, "p50_ms": result["p50_ms"], "size_mb": result["size_mb"], "note": "own process"}


if __name__ == "__main__":
    main()
