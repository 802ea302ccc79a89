"""Vocabulary clustering's centroid-row count on trained students: validation and test per count, mean ± sd.

Each student folder goes through the recipe's vocabulary stage (`prune --method vocab`, the recipe's options)
with each `--clusters` count, into `--work`; the stage scores validation and test itself (PyTorch). Prints one
markdown row per count: distinct rows, validation, test accuracy, in-scope accuracy and OOS recall over the
students (mean ± sd). Finished folders are reused.

    .venv/bin/python benchmarks/vocab_clusters.py runs/ablation/L3-mix-from1-seed42 runs/ablation/L3-mix-from1-seed43 \\
        runs/ablation/L3-mix-from1-seed44 --clusters 1024 2048 4096 --work runs/ablation-vocab
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path


def main() -> None:
    from slimformer.data import load_data
    from slimformer.pipeline import build_config, recipe_stage
    from slimformer.stages import STAGES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("students", nargs="+", type=Path, help="trained student checkpoints (before clustering)")
    parser.add_argument("--clusters", nargs="+", type=int, required=True)
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()

    data = load_data(args.data)
    recipe = replace(build_config(recipe_stage("prune", "vocab")), vocab_unseen="cluster", vocab_min_count=1)

    def cell(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"

    print("| centroid rows | distinct rows | validation | test accuracy | in scope | OOS recall |")
    print("|---|---|---|---|---|---|")
    for clusters in args.clusters:
        metrics = []
        for student in args.students:
            out = args.work / f"{student.name}-c{clusters}"
            if not (out / "metrics.json").is_file():
                STAGES["prune"].run(student, out, replace(recipe, vocab_clusters=clusters), data, None, reuse=True)
            metrics.append(json.loads((out / "metrics.json").read_text()))
        rows = metrics[0]["vocabulary"]["distinct_embedding_rows"]
        test = [cell([m["test"][key] for m in metrics]) for key in ("accuracy", "in_scope_accuracy", "oos_recall")]
        print(
            f"| {clusters:,} | {rows:,} | {cell([m['validation']['accuracy'] for m in metrics])} | "
            + " | ".join(test)
            + " |"
        )


if __name__ == "__main__":
    main()
