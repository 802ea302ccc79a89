"""Which distillation losses and transfer data keep a small student's accuracy (issue 24's ablation).

Distils students of `--layers` layers from `--source` (the recipe's FFN-sliced teacher) against `--teacher`, one
row per variant and seed, with the packaged recipe's distillation settings unless a variant overrides them, and
reports validation accuracy and test accuracy, in-scope accuracy and out-of-scope recall as mean ± sd over seeds.
Each run's folder is kept under `--work`, so a re-run only trains what is missing. Run from the repository root
after `make demo` (which leaves the teacher and the sliced model in demo/stages/):

    .venv/bin/python benchmarks/student_ablation.py --teacher demo/stages/*-finetune-teacher-* \
        --source demo/stages/*-slice-* --layers 2 --variants logits hidden attention --seeds 42 43 44
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from slimformer.artifacts import read_metrics
from slimformer.cpu import cpu_model
from slimformer.data import load_data
from slimformer.distill import DistillConfig, distill

# the packaged recipe's distill stage (src/slimformer/recipes/default.yaml)
RECIPE = {"alpha": 0.73, "temperature": 9.0, "epochs": 3.0, "learning_rate": 2.9e-4, "precision": "auto"}
RECIPE_STAGE = {"augment": "mix", "first_kept_layer": 1, "dropout": 0.0}  # its options beyond RECIPE's
VARIANTS: dict[str, dict[str, Any]] = {
    "logits": {},
    # which teacher layers the student keeps: evenly spaced from layer 1 instead of layer 0 ([1, 5], [1, 3, 5])
    "logits-from1": {"first_kept_layer": 1},
    "mix-from1": {"augment": "mix", "first_kept_layer": 1},
    "mask+mix-from1": {"augment": "mask,mix", "first_kept_layer": 1},
    # the recipe's distill stage as it is now (layers from 1, mixed utterances, dropout off), then one change
    "recipe": RECIPE_STAGE,
    # the recipe's soft-target settings were searched before dropout off, mixed utterances and layers from 1
    "recipe-5ep": {**RECIPE_STAGE, "epochs": 5.0},
    "recipe-a0.5": {**RECIPE_STAGE, "alpha": 0.5},
    "recipe-a0.9": {**RECIPE_STAGE, "alpha": 0.9},
    "recipe-T4": {**RECIPE_STAGE, "temperature": 4.0},
    "recipe-lr4e-4": {**RECIPE_STAGE, "learning_rate": 4e-4},
    "recipe-bs16": {**RECIPE_STAGE, "batch_size": 16},
    "recipe-wd0.1": {**RECIPE_STAGE, "weight_decay": 0.1},
    "recipe-mix+replace": {**RECIPE_STAGE, "augment": "mix,replace"},
    "recipe-mask+mix": {**RECIPE_STAGE, "augment": "mask,mix"},
    "recipe-frozen-words": {**RECIPE_STAGE, "freeze_word_embeddings": True},  # the word table fixed
    # every layer from layer 0 (--layers 6 from the unsliced teacher: the teacher distilled into itself)
    "recipe-from0": {**RECIPE_STAGE, "first_kept_layer": 0},
    "recipe-from2": {**RECIPE_STAGE, "first_kept_layer": 2},  # 3 layers: [2, 4, 5]
    "recipe-from3": {**RECIPE_STAGE, "first_kept_layer": 3},  # 3 layers: [3, 4, 5]
    # mixed utterances between intents the teacher finds close (the second half from its runner-up intent)
    "recipe-near": {**RECIPE_STAGE, "augment": "mix-near"},
    "recipe-mix+near": {**RECIPE_STAGE, "augment": "mix,mix-near"},
    # logit standardization (Sun et al., CVPR 2024: both logits z-scored before the temperature)
    "recipe-ls-T1": {**RECIPE_STAGE, "standardize_logits": True, "temperature": 1.0},
    "recipe-ls-T2": {**RECIPE_STAGE, "standardize_logits": True, "temperature": 2.0},
    "recipe-ls-T4": {**RECIPE_STAGE, "standardize_logits": True, "temperature": 4.0},
    "recipe-ls-T2-a0.3": {**RECIPE_STAGE, "standardize_logits": True, "temperature": 2.0, "alpha": 0.3},
    "logits-6ep": {"epochs": 6.0},
    "logits-6ep-lr5e-4": {"epochs": 6.0, "learning_rate": 5e-4},
    # issue 24's epochs x learning-rate grid for 1-2 layers (the recipe's 3 epochs at 2.9e-4 were tuned for 3)
    "logits-10ep": {"epochs": 10.0},
    "logits-lr6e-4": {"learning_rate": 6e-4},
    "logits-6ep-lr6e-4": {"epochs": 6.0, "learning_rate": 6e-4},
    "logits-10ep-lr6e-4": {"epochs": 10.0, "learning_rate": 6e-4},
    "logits-6ep-lr1e-3": {"epochs": 6.0, "learning_rate": 1e-3},
    "hidden": {"hidden_weight": 1.0},
    "hidden-last": {"hidden_weight": 1.0, "layer_map": "last"},
    "attention": {"attention_weight": 1.0},
    "embedding": {"embedding_weight": 1.0},
    "mask": {"augment": "mask"},
    "delete": {"augment": "delete"},
    "swap": {"augment": "swap"},
    "mix": {"augment": "mix"},
    "replace": {"augment": "replace"},
    "mix+replace": {"augment": "mix,replace"},
    "mask+mix+replace": {"augment": "mask,mix,replace"},
    "replace-x2": {"augment": "replace", "augment_copies": 2},
    "hidden+attention": {"hidden_weight": 1.0, "attention_weight": 1.0},
    "attention+mix": {"attention_weight": 1.0, "augment": "mix"},
    "attention+mask+mix": {"attention_weight": 1.0, "augment": "mask,mix"},
    "mix-6ep": {"augment": "mix", "epochs": 6.0},
    "mask+mix": {"augment": "mask,mix"},
    # how much transfer data: more augmented copies of every training text, and more weight on the teacher
    "mask+mix-x2": {"augment": "mask,mix", "augment_copies": 2},
    "mask+mix-x4": {"augment": "mask,mix", "augment_copies": 4},
    "all-x2": {"augment": "mask,delete,swap,mix", "augment_copies": 2},
    "mask+mix-alpha0.3": {"augment": "mask,mix", "alpha": 0.3},
}
COLUMNS = ("accuracy", "in_scope_accuracy", "oos_recall")


def run_variant(name: str, seed: int, args: argparse.Namespace, data: Any) -> dict[str, Any]:
    folder = args.work / f"L{args.layers}{args.label}-{name}-seed{seed}"
    options = {**RECIPE, **VARIANTS[name], "student_layers": args.layers, "seed": seed}
    return read_metrics(folder) or distill(args.source, folder, DistillConfig(**options), data, teacher=args.teacher)


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def table_head(teacher: Path, students: str, first_column: str) -> list[str]:
    """The markdown table's first lines: the CPU, the students, the teacher's test scores, the column names."""
    teacher_test = json.loads((teacher / "metrics.json").read_text()).get("test", {})
    return [
        f"CPU: {cpu_model()}; {students}; teacher {teacher.name}: "
        + ", ".join(f"{c} {100 * teacher_test[c]:.2f}" for c in COLUMNS if c in teacher_test),
        "",
        f"| {first_column} | validation | test accuracy | in scope | OOS recall | train s | seeds |",
        "|---|---|---|---|---|---|---|",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True, help="the model the student's layers come from")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["logits"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--label", default="", help="added to the folder names: another --source (e.g. -unsliced)")
    args = parser.parse_args()
    data = load_data(args.data)
    lines = table_head(args.teacher, f"{args.layers}-layer students of {args.source.name}", "variant")
    rows = []
    for name in args.variants:
        runs = [run_variant(name, seed, args, data) for seed in args.seeds]
        row = {
            "variant": name,
            "layers": args.layers,
            "options": VARIANTS[name],
            "seeds": args.seeds,
            "validation": [r["validation"]["accuracy"] for r in runs],
            **{c: [r["test"][c] for r in runs] for c in COLUMNS},
            "train_seconds": [r["train_seconds"] for r in runs],
        }
        rows.append(row)
        seconds = statistics.mean(row["train_seconds"])
        lines.append(
            f"| {name} | {mean_sd(row['validation'])} | "
            + " | ".join(mean_sd(row[c]) for c in COLUMNS)
            + f" | {seconds:.0f} | {len(runs)} |"
        )
        print(lines[-1], flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / f"ablation-L{args.layers}{args.label}.json").write_text(json.dumps(rows, indent=2))
    (args.work / f"ablation-L{args.layers}{args.label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
