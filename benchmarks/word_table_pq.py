"""Can a product-quantized word table replace vocabulary clustering? (issue 24: where the in-scope loss goes)

Loads a distilled student (PyTorch), replaces its word-embedding table by its product-quantized reconstruction
(each row cut into `--parts` sub-vectors, each coded by one of 256 k-means centroids of its part), once for every
row and once with the rows of the tokens the training data uses kept exact, and scores validation and test
accuracy, in-scope accuracy and OOS recall. A probe, not a stage: the table is restored after each variant.

    .venv/bin/python benchmarks/word_table_pq.py demo/stages/04-distill-* --parts 16 32 --json runs/pq.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from slimformer.cpu import cpu_model
from slimformer.data import column, load_data
from slimformer.evaluation import evaluate_model
from slimformer.models import load_classifier, load_tokenizer

CENTROIDS = 256  # one byte per part and row
KINDS = ("accuracy", "in_scope_accuracy", "oos_recall")


def reconstruct(table: np.ndarray, parts: int, seed: int = 0) -> np.ndarray:
    """Each row's product-quantized reconstruction: `parts` sub-vectors, each its part's nearest centroid."""
    width = table.shape[1] // parts
    rebuilt = np.empty_like(table)
    for part in range(parts):
        columns = slice(part * width, (part + 1) * width)
        kmeans = KMeans(CENTROIDS, n_init=1, max_iter=50, random_state=seed).fit(table[:, columns])
        rebuilt[:, columns] = kmeans.cluster_centers_[kmeans.labels_]
    return rebuilt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path)
    parser.add_argument("--parts", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = load_data(args.data)
    model, tokenizer = load_classifier(args.student).eval(), load_tokenizer(args.student)
    splits = data.in_label_order([model.config.id2label[i] for i in range(model.config.num_labels)])
    embeddings = model.get_input_embeddings().weight
    table = embeddings.detach().numpy().copy()
    encoded = tokenizer(column(splits.train, "text"), truncation=True, max_length=128)["input_ids"]
    seen = sorted({token for ids in encoded for token in ids})

    def score(name: str, rows: np.ndarray, extra: dict | None = None) -> dict:
        with torch.no_grad():
            embeddings.copy_(torch.from_numpy(rows))
        scored = {
            split: {
                k: round(100 * v, 2)
                for k, v in evaluate_model(model, tokenizer, getattr(splits, split), splits, 128).items()
                if k in KINDS
            }
            for split in ("validation", "test")
        }
        row = {"variant": name, **(extra or {}), **scored}
        print(json.dumps(row), flush=True)
        return row

    results = {"cpu": cpu_model(), "student": str(args.student), "training_tokens": len(seen), "rows": []}
    results["rows"].append(score("exact table", table))
    for parts in args.parts:
        started = time.perf_counter()
        rebuilt = reconstruct(table, parts)
        error = float(np.linalg.norm(rebuilt - table) / np.linalg.norm(table))
        extra = {"parts": parts, "relative_error": round(error, 3), "fit_seconds": round(time.perf_counter() - started)}
        results["rows"].append(score(f"{parts} parts, every row", rebuilt, extra))
        rebuilt[seen] = table[seen]
        results["rows"].append(score(f"{parts} parts, training tokens exact", rebuilt, extra))
    with torch.no_grad():
        embeddings.copy_(torch.from_numpy(table))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
