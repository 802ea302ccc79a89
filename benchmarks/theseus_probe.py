"""Progressive module replacement (BERT-of-Theseus, Xu et al. 2020) on the recipe's 3-layer student: a probe.

Each student layer stands for a block of the teacher's layers (layers 1, 3, 5 for blocks [0, 1], [2, 3], [4, 5]).
While training, each block runs the student layer with probability `rate` and the teacher's own frozen layers
otherwise; `rate` rises linearly from `--start-rate` to 1 at `--full-at` of the steps, and the rest of training
is the student alone. Everything else is the recipe's distill stage (cached teacher logits, mixed utterances,
dropout off). Validation and test are scored on the student alone. Run after `make demo`:

    .venv/bin/python benchmarks/theseus_probe.py --teacher demo/stages/01-finetune-teacher-* \
        --source demo/stages/03-prune-* --seeds 42
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from student_ablation import RECIPE, RECIPE_STAGE  # the packaged recipe's distill stage
from transformers import TrainerCallback

from slimformer.cpu import cpu_model
from slimformer.data import load_data
from slimformer.distill import DistillConfig, transfer_texts
from slimformer.models import load_classifier
from slimformer.students import build_student_from_teacher, set_dropout
from slimformer.training import train_classifier


class Replaceable(torch.nn.Module):
    """A student layer that, in training, is replaced by its block of frozen teacher layers with 1 - `rate`."""

    def __init__(self, student: torch.nn.Module, block: list[torch.nn.Module]) -> None:
        super().__init__()
        self.student, self.block, self.rate = student, torch.nn.ModuleList(block), 1.0
        for parameter in self.block.parameters():
            parameter.requires_grad_(False)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.training or random.random() < self.rate:
            return self.student(hidden_states, *args, **kwargs)
        for layer in self.block:
            hidden_states = layer(hidden_states, *args, **kwargs)
        return hidden_states


class RateSchedule(TrainerCallback):
    """Raise every Replaceable's rate linearly from `start` to 1 at `full_at` of the training steps."""

    def __init__(self, modules: list[Replaceable], start: float, full_at: float) -> None:
        self.modules, self.start, self.full_at = modules, start, full_at

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        progress = state.global_step / max(1, state.max_steps * self.full_at)
        rate = min(1.0, self.start + (1.0 - self.start) * progress)
        for module in self.modules:
            module.rate = rate


def run(seed: int, args: argparse.Namespace, data: Any) -> dict[str, Any]:
    folder = args.work / f"L3-theseus-s{args.start_rate}-f{args.full_at}-n{args.max_train_samples}-seed{seed}"
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    options = {**RECIPE, **RECIPE_STAGE, "student_layers": 3}
    config = DistillConfig(**options, seed=seed, max_train_samples=args.max_train_samples)
    random.seed(seed)
    torch.manual_seed(seed)
    splits = data.subset(config.max_train_samples, config.max_train_samples, seed=seed)
    student, tokenizer, kept = build_student_from_teacher(args.source, config.student_layers, config.first_kept_layer)
    splits = splits.in_label_order([student.config.id2label[i] for i in range(student.config.num_labels)])
    teacher_layers = load_classifier(args.teacher).bert.encoder.layer
    spans = list(zip([0, *[k + 1 for k in kept[:-1]]], kept, strict=True))  # [1, 3, 5]: [0, 1], [2, 3], [4, 5]
    blocks = [[teacher_layers[j] for j in range(start, end + 1)] for start, end in spans]
    modules = [Replaceable(layer, block) for layer, block in zip(student.bert.encoder.layer, blocks, strict=True)]
    student.bert.encoder.layer = torch.nn.ModuleList(modules)
    set_dropout(student, 0.0)
    distillation = config.distillation(
        args.teacher,
        cache_dir=config.cache_dir,
        layers=config.layer_losses(),
        transfer_texts=transfer_texts(config, splits, tokenizer, student.get_input_embeddings().weight, args.teacher),
    )
    started = time.perf_counter()
    schedule = RateSchedule(modules, args.start_rate, args.full_at)
    result = train_classifier(student, tokenizer, splits, config, folder / "trainer", distillation, [schedule])
    student.bert.encoder.layer = torch.nn.ModuleList([m.student for m in modules])
    student.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    metrics = {
        "blocks": spans,
        "seconds": time.perf_counter() - started,
        "options": {k: str(v) for k, v in vars(args).items()} | {"seed": seed},
    }
    metrics |= result.metrics()
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="the fine-tuned teacher (its layers and logits)")
    parser.add_argument("--source", type=Path, required=True, help="the FFN-sliced teacher the student is built from")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--start-rate", type=float, default=0.5)
    parser.add_argument("--full-at", type=float, default=0.67)
    parser.add_argument("--work", type=Path, default=Path("runs/theseus"))
    parser.add_argument("--max-train-samples", type=int, help="a smoke run on a few rows")
    args = parser.parse_args()
    data = load_data("clinc150")
    print(f"CPU: {cpu_model()}")
    for seed in args.seeds:
        m = run(seed, args, data)
        test = m["test"]
        print(
            f"seed {seed}: validation {100 * m['validation']['accuracy']:.2f}, test {100 * test['accuracy']:.2f}, "
            f"in scope {100 * test['in_scope_accuracy']:.2f}, OOS recall {100 * test['oos_recall']:.1f}, "
            f"{m['seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()
