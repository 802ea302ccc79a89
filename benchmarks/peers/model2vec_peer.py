"""model2vec distilled from the same teacher, with a logistic-regression head: the static student's peer.

Runs in .venv-peers (model2vec is not a slimformer dependency). Reads the splits from a JSON file written by
benchmarks/static_peers.py, distils the teacher folder with model2vec (PCA to --dims, its default weighting),
trains scikit-learn's LogisticRegression on the training embeddings, and writes the test predictions and the
batch-1 latencies (encode + predict, one query at a time) as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from model2vec.distill import distill_from_model
from sklearn.linear_model import LogisticRegression


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--splits", required=True, help="JSON: {train: {text, label}, test: {text, label}, queries}")
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    splits = json.loads(Path(args.splits).read_text())
    started = time.perf_counter()
    from transformers import AutoModel, AutoTokenizer

    # loaded here from the local folder (model2vec's own distill() would look the name up on the hub)
    encoder, tokenizer = AutoModel.from_pretrained(args.teacher), AutoTokenizer.from_pretrained(args.teacher)
    model = distill_from_model(model=encoder, tokenizer=tokenizer, pca_dims=args.dims)
    distill_seconds = time.perf_counter() - started
    head = LogisticRegression(max_iter=2000, C=10.0)
    head.fit(model.encode(splits["train"]["text"]), splits["train"]["label"])
    predictions = head.predict(model.encode(splits["test"]["text"])).tolist()
    # its own batch-1 loop, not slimformer.timing's: this runs in .venv-peers, which has no slimformer
    for text in splits["queries"][:50]:
        head.predict(model.encode([text]))
    timings = []
    for text in splits["queries"]:
        tick = time.perf_counter()
        head.predict(model.encode([text]))
        timings.append((time.perf_counter() - tick) * 1000)
    size = model.embedding.nbytes + head.coef_.nbytes + head.intercept_.nbytes
    result = {
        "predictions": predictions,
        "p50_ms": round(statistics.median(timings), 4),
        "size_mb": round(size / 1e6, 2),
        "distill_seconds": round(distill_seconds, 1),
        "vocabulary": int(np.asarray(model.embedding).shape[0]),
    }
    Path(args.output).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
