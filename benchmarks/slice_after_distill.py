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
import statistics
from pathlib import Path
from typing import Any

from student_ablation import COLUMNS, RECIPE_STAGE, mean_sd, table_head
from student_ablation import RECIPE as SOFT_TARGETS

from slimformer.artifacts import read_metrics
from slimformer.data import load_data
from slimformer.distill import DistillConfig, distill
from slimformer.prune import PruneConfig, prune

# the packaged recipe's distill stage (src/slimformer/recipes/default.yaml), but the layers it keeps
RECIPE = {**SOFT_TARGETS, **{k: v for k, v in RECIPE_STAGE.items() if k != "first_kept_layer"}}
SLICE = {"method": "structured", "sparsity": 0.5, "epochs": 0, "importance": "gradient"}  # the recipe's slice


def run_seed(seed: int, args: argparse.Namespace, data: Any) -> dict[str, dict[str, Any]]:
    """Each step's metrics for one seed; a step whose folder finished before is read, not run again."""
    work, teacher = args.work, args.teacher
    wide, sliced = work / f"wide-seed{seed}", work / f"wide-sliced-seed{seed}"
    again = work / f"wide-sliced-again{args.second_epochs:g}-lr{args.second_lr:g}-seed{seed}"
    first = DistillConfig(**RECIPE, student_layers=3, first_kept_layer=1, seed=seed)
    second = DistillConfig(
        **{**RECIPE, "epochs": args.second_epochs, "learning_rate": args.second_lr}, student_layers=3, seed=seed
    )
    rows = {"distil the unsliced teacher": read_metrics(wide) or distill(teacher, wide, first, data, teacher=teacher)}
    rows["then slice the student"] = read_metrics(sliced) or prune(wide, sliced, PruneConfig(**SLICE, seed=seed), data)
    rows[f"then distil again ({args.second_epochs:g} epochs at {args.second_lr:g})"] = read_metrics(again) or distill(
        sliced, again, second, data, teacher=teacher
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
