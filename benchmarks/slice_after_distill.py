"""Slice the FFN before distilling (the recipe) or after it: which keeps more in-scope accuracy at 3 layers?

The recipe slices half of the teacher's FFN neurons, then distils a 3-layer student from the sliced layers. The
other order distils a 3-layer student from the unsliced teacher, slices half of the *student's* FFN neurons by
gradient importance, and distils that sliced student again for `--second-epochs` (same teacher, same transfer
data). Both end at the same shape. One row per stage and seed; each folder is kept under `--work`, so a re-run only
trains what is missing. Run from the repository root after `make demo`:

    .venv/bin/python benchmarks/slice_after_distill.py --teacher demo/stages/*-finetune-teacher-* --seeds 42 43 44
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from student_ablation import COLUMNS, RECIPE_STAGE, mean_sd, table_head
from student_ablation import RECIPE as SOFT_TARGETS

from slimformer.data import load_data
from slimformer.distill import DistillConfig, distill
from slimformer.prune import PruneConfig, prune

# the packaged recipe's distill stage (src/slimformer/recipes/default.yaml), but the layers it keeps
RECIPE = {**SOFT_TARGETS, **{k: v for k, v in RECIPE_STAGE.items() if k != "first_kept_layer"}}
SLICE = {"method": "structured", "sparsity": 0.5, "epochs": 0, "importance": "gradient"}  # the recipe's slice


def cached(folder: Path, make: Any) -> dict[str, Any]:
    """The stage's metrics: read from `folder` when it finished before, else run `make()`."""
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    return make()


def run_seed(seed: int, args: argparse.Namespace, data: Any) -> dict[str, dict[str, Any]]:
    work, teacher = args.work, args.teacher
    wide = work / f"wide-seed{seed}"
    rows = {
        "distil the unsliced teacher": cached(
            wide,
            lambda: distill(
                teacher,
                wide,
                DistillConfig(**RECIPE, student_layers=3, first_kept_layer=1, seed=seed),
                data,
                teacher=teacher,
            ),
        )
    }
    sliced = work / f"wide-sliced-seed{seed}"
    rows["then slice the student"] = cached(sliced, lambda: prune(wide, sliced, PruneConfig(**SLICE, seed=seed), data))
    again = work / f"wide-sliced-again{args.second_epochs:g}-lr{args.second_lr:g}-seed{seed}"
    second = {**RECIPE, "epochs": args.second_epochs, "learning_rate": args.second_lr}
    rows[f"then distil again ({args.second_epochs:g} epochs at {args.second_lr:g})"] = cached(
        again,
        lambda: distill(sliced, again, DistillConfig(**second, student_layers=3, seed=seed), data, teacher=teacher),
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--second-epochs", type=float, default=1.0)
    parser.add_argument("--second-lr", type=float, default=2.9e-4)
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--work", type=Path, default=Path("runs/slice-after"))
    args = parser.parse_args()
    data = load_data(args.data)
    per_seed = [run_seed(seed, args, data) for seed in args.seeds]
    lines = table_head(args.teacher, "3-layer students, FFN sliced after distilling", "stage")
    for stage in per_seed[0]:
        runs = [rows[stage] for rows in per_seed]
        seconds = statistics.mean(r.get("train_seconds", 0.0) for r in runs)
        lines.append(
            f"| {stage} | {mean_sd([r['validation']['accuracy'] for r in runs])} | "
            + " | ".join(mean_sd([r["test"][c] for r in runs]) for c in COLUMNS)
            + f" | {seconds:.0f} | {len(runs)} |"
        )
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "slice-after.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
