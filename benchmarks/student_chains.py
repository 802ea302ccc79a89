"""Other ways to a 3-layer student that keeps in-scope accuracy, each a short chain of slimformer's own stages
(issue 24): less FFN slicing, distilling before slicing, a teacher assistant, dropout off, a weight soup of
seeds, and re-distilling the clustered student on replaced words (which reach the tokens whose rows are
centroids), with and without dropout. Every chain starts from the packaged recipe's distillation options with
dropout on (as the `--recipe-students` were made: the chains found the recipe's dropout off) and ends in the
recipe's vocabulary stage of that time (2,048 centroid rows), since that is where in-scope accuracy was lost;
each row reports validation and test (accuracy, in scope, OOS recall) before and after it. Folders are kept
under `--work` and reused. Run from the repository root after `make demo`:

    .venv/bin/python benchmarks/student_chains.py --teacher demo/stages/01-finetune-teacher-710ff7845f49 \\
        --sliced demo/stages/03-prune-ae130f7449f1 --recipe-students runs/ablation/L3-mix-from1-seed42 \\
        runs/ablation/L3-mix-from1-seed43 runs/ablation/L3-mix-from1-seed44 --chains all
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from slimformer.cpu import cpu_model
from slimformer.data import load_data
from slimformer.pipeline import build_config, recipe_stage
from slimformer.stages import STAGES

COLUMNS = ("accuracy", "in_scope_accuracy", "oos_recall")


class Chains:
    """The stages of each chain, run into `work` (a finished folder is reused) with the recipe's options."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data = load_data(args.data)
        # the recipe's distillation as the `--recipe-students` were made (student_ablation.py): dropout on, the
        # source's own, so that dropout off is one of the chains and not every chain's starting point
        recipe = build_config(recipe_stage("distill"))
        self.distill = replace(recipe, seed=args.seed, student_layers=args.layers, dropout=None)
        self.tag = "" if args.layers == 3 else f"L{args.layers}-"  # the 3-layer folders' names predate --layers
        self.slice = build_config(recipe_stage("prune", "structured"))
        # the 2,048-row clustering the recipe had when these chains were measured (it keeps sign rows now)
        vocab = build_config(recipe_stage("prune", "vocab"))
        self.vocab = replace(vocab, vocab_unseen="cluster", vocab_clusters=2048, vocab_min_count=1)
        self.seconds: dict[str, float] = {}

    def step(self, kind: str, source: Path, name: str, config: Any) -> Path:
        out = self.args.work / name
        if not (out / "metrics.json").is_file():
            started = time.perf_counter()
            STAGES[kind].run(source, out, config, self.data, self.args.teacher, reuse=True)
            self.seconds[name] = time.perf_counter() - started
        return out

    def student(self, source: Path, name: str, **options: Any) -> Path:
        return self.step("distill", source, name, replace(self.distill, **options))

    def ffn25(self) -> Path:
        """The teacher with a quarter of its FFN neurons sliced (not half), then the recipe's student."""
        sliced = self.step("prune", self.args.teacher, "slice25", replace(self.slice, sparsity=0.25))
        return self.student(sliced, f"ffn25-L{self.args.layers}-s{self.args.seed}")

    def distill_then_slice(self) -> Path:
        """The student of the unsliced teacher, then half its FFN neurons sliced, then distilled again (2 epochs)."""
        name = f"u-L{self.args.layers}-s{self.args.seed}"
        whole = self.student(self.args.teacher, name)
        sliced = self.step("prune", whole, f"{name}-slice50", self.slice)
        return self.student(sliced, f"{name}-slice50-d2", first_kept_layer=0, epochs=2.0)

    def assistant(self) -> Path:
        """An assistant one layer deeper, of the unsliced teacher, sliced, then the student from its layers."""
        depth = self.args.layers + 1
        helper = self.student(self.args.teacher, f"ta-L{depth}-s{self.args.seed}", student_layers=depth)
        sliced = self.step("prune", helper, f"ta-L{depth}-s{self.args.seed}-slice50", self.slice)
        return self.student(sliced, f"ta-L{self.args.layers}-s{self.args.seed}")

    def no_dropout(self) -> Path:
        """The recipe's student distilled with dropout off (`distill --dropout 0`)."""
        return self.student(self.args.sliced, f"nodrop-L{self.args.layers}-s{self.args.seed}", dropout=0.0)

    def soup(self) -> Path:
        """The uniform weight average of the recipe's students of several seeds (same init, same layers)."""
        import torch
        from safetensors.torch import load_file, save_file

        out = self.args.work / f"soup-L{self.args.layers}"
        if not (out / "model.safetensors").is_file():
            first = self.args.recipe_students[0]
            shutil.copytree(first, out, dirs_exist_ok=True)
            states = [load_file(str(folder / "model.safetensors")) for folder in self.args.recipe_students]
            averaged = {
                key: torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
                if value.is_floating_point()
                else value
                for key, value in states[0].items()
            }
            save_file(averaged, str(out / "model.safetensors"), metadata={"format": "pt"})
            (out / "metrics.json").write_text(json.dumps(self.score(out)))
        return out

    def redistill_clustered(
        self, augment: str, dropout: float | None = None, epochs: float = 1.0, learning_rate: float = 1e-4
    ) -> Callable[[], Path]:
        """The recipe's clustered student (with `dropout` 0: the no-dropout student's) distilled `epochs` more
        (1 at 1e-4 unless said) on `augment`ed training texts, whose replaced words reach the tokens the training
        split never uses (centroid rows now)."""

        def chain() -> Path:
            student = self.args.recipe_students[0] if dropout is None else self.no_dropout()
            prefix = self.tag + ("rc" if dropout is None else "nodrop-rc")
            suffix = "" if epochs == 1.0 else f"-{epochs:g}ep"
            suffix += "" if learning_rate == 1e-4 else f"-lr{learning_rate:g}"
            name = f"{prefix}-{augment.replace(',', '+')}{suffix}-s{self.args.seed}"
            options = {"first_kept_layer": 0, "epochs": epochs, "learning_rate": learning_rate, "augment": augment}
            return self.student(self.vocab_stage(student), name, dropout=dropout, **options)

        return chain

    def vocab_stage(self, student: Path) -> Path:
        return self.step("prune", student, f"{student.name}-c2048", self.vocab)

    def score(self, folder: Path) -> dict[str, Any]:
        from slimformer.evaluation import evaluate_model
        from slimformer.models import load_classifier, load_tokenizer

        model, tokenizer = load_classifier(folder), load_tokenizer(folder)
        return {
            split: evaluate_model(model, tokenizer, getattr(self.data, split), self.data, 128)
            for split in ("validation", "test")
        }


def cells(metrics: dict[str, Any]) -> list[str]:
    test = metrics["test"]
    return [f"{100 * metrics['validation']['accuracy']:.2f}", *(f"{100 * test[c]:.2f}" for c in COLUMNS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--sliced", type=Path, required=True, help="the recipe's FFN-sliced teacher (demo's 03-prune)")
    parser.add_argument("--recipe-students", nargs="+", type=Path, required=True, help="the recipe's students, seeds")
    parser.add_argument("--chains", nargs="+", default=["all"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--layers", type=int, default=3, help="the students' depth (the recipe's: 3)")
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--work", type=Path, default=Path("runs/students"))
    args = parser.parse_args()
    chains = Chains(args)
    known: dict[str, Callable[[], Path]] = {
        "recipe": lambda: args.recipe_students[0],
        "ffn25": chains.ffn25,
        "distill-then-slice": chains.distill_then_slice,
        "assistant": chains.assistant,
        "no-dropout": chains.no_dropout,
        "soup": chains.soup,
        "redistill-replace": chains.redistill_clustered("replace"),
        "redistill-mix+replace": chains.redistill_clustered("mix,replace"),
        "no-dropout+redistill-replace": chains.redistill_clustered("replace", dropout=0.0),
        "no-dropout+redistill-mix+replace": chains.redistill_clustered("mix,replace", dropout=0.0),
        "no-dropout+redistill-mix+replace-2ep": chains.redistill_clustered("mix,replace", dropout=0.0, epochs=2.0),
        "no-dropout+redistill-mix+replace-lr2e-4": chains.redistill_clustered("mix,replace", 0.0, learning_rate=2e-4),
    }
    names = list(known) if args.chains == ["all"] else ["recipe", *args.chains]
    lines = [
        f"CPU: {cpu_model()}; seed {args.seed}; before / after the recipe's vocabulary clustering (2,048 rows)",
        "",
        "| chain | validation | test | in scope | OOS recall | clustered: validation | test | in scope | OOS recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(names):
        student = known[name]()
        before = json.loads((student / "metrics.json").read_text())
        after = json.loads((chains.vocab_stage(student) / "metrics.json").read_text())
        lines.append(f"| {name} | " + " | ".join(cells(before) + cells(after)) + " |")
        print(lines[-1], flush=True)
    if chains.seconds:
        print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in chains.seconds.items()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
