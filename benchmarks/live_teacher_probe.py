"""Transfer data made inside the model, with the teacher live: embedding mixup and adversarial embeddings (a probe).

Two ways to distil a student on inputs no text has, each added to the recipe's 3-layer distill stage (cached
teacher logits on the training queries and mixed utterances, dropout off) as one more KL term at the recipe's
temperature, with the teacher running on every batch:

- `mixup` (MixKD, Liang et al. 2021): each row's word embeddings interpolated with another row's of the batch,
  lambda ~ Beta(0.4, 0.4); teacher and student each read the mix of their own embeddings.
- `adversarial` (after Zhang et al. 2022's adversarial data augmentation for task-specific distillation): each
  token's embedding moved by `--step` of its norm along the gradient of the student's divergence from the
  teacher, so the extra inputs sit where the two disagree most.

Validation and test are scored on the student as trained. Run after `make demo`:

    .venv/bin/python benchmarks/live_teacher_probe.py --teacher demo/stages/01-finetune-teacher-* \
        --source demo/stages/03-prune-* --mode mixup --seeds 42
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from student_ablation import COLUMNS, RECIPE, RECIPE_STAGE  # the packaged recipe's distill stage
from transformers import set_seed

from slimformer.cpu import cpu_model
from slimformer.data import load_data
from slimformer.distill import DistillConfig, transfer_texts
from slimformer.models import load_classifier, save_checkpoint
from slimformer.students import build_student_from_teacher, set_dropout
from slimformer.training import train_classifier


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher / T || student / T), a batch mean: the recipe's soft-target term."""
    return temperature**2 * F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=-1),
        F.log_softmax(teacher_logits.float() / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


class LiveTeacherInputs:
    """The trainer's `layer_distiller`: on each training batch, one more KL term on inputs made in embedding space."""

    wants_hidden_states = False

    def __init__(self, teacher: Any, student: Any, mode: str, temperature: float, beta: float, step: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.student, self.mode, self.temperature, self.beta, self.step = student, mode, temperature, beta, step

    def parameters(self) -> list[Any]:
        return []

    def loss(self, inputs: dict[str, Any], student_outputs: Any) -> torch.Tensor:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        extra = {k: inputs[k] for k in ("token_type_ids",) if k in inputs}
        student_embeddings = self.student.get_input_embeddings()(ids)
        with torch.no_grad():
            teacher_embeddings = self.teacher.get_input_embeddings()(ids)
        if self.mode == "mixup":
            partner = torch.randperm(ids.shape[0])
            weight = torch.distributions.Beta(self.beta, self.beta).sample((ids.shape[0], 1, 1))
            student_in = weight * student_embeddings + (1 - weight) * student_embeddings[partner]
            teacher_in = weight * teacher_embeddings + (1 - weight) * teacher_embeddings[partner]
            mask = torch.maximum(mask, mask[partner])
        else:
            with torch.no_grad():
                clean = self.teacher(**inputs).logits
            delta = torch.zeros_like(student_embeddings, requires_grad=True)
            moved = self.student(inputs_embeds=student_embeddings.detach() + delta, attention_mask=mask, **extra)
            (gradient,) = torch.autograd.grad(soft_kl(moved.logits, clean, self.temperature), delta)
            gradient = gradient * mask[..., None]
            direction = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            shift = self.step * student_embeddings.detach().norm(dim=-1, keepdim=True) * direction
            student_in, teacher_in = student_embeddings + shift, teacher_embeddings + shift
        with torch.no_grad():
            target = self.teacher(inputs_embeds=teacher_in, attention_mask=mask, **extra).logits
        output = self.student(inputs_embeds=student_in, attention_mask=mask, **extra).logits
        return soft_kl(output, target, self.temperature)


def run(seed: int, args: argparse.Namespace, data: Any) -> dict[str, Any]:
    folder = args.work / f"L3-{args.mode}-b{args.beta}-s{args.step}-n{args.max_train_samples}-seed{seed}"
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    config = DistillConfig(
        **RECIPE, **RECIPE_STAGE, student_layers=3, seed=seed, max_train_samples=args.max_train_samples
    )
    splits = data.subset(config.max_train_samples, config.max_train_samples, seed=seed)
    set_seed(seed)  # as the distill stage does: the student, then the Trainer's own seeding
    student, tokenizer, _ = build_student_from_teacher(args.source, config.student_layers, config.first_kept_layer)
    splits = splits.in_label_order([student.config.id2label[i] for i in range(student.config.num_labels)])
    set_dropout(student, 0.0)
    distillation = config.distillation(
        args.teacher,
        cache_dir=config.cache_dir,
        transfer_texts=transfer_texts(config, splits, tokenizer, student.get_input_embeddings().weight, args.teacher),
    )
    extra = LiveTeacherInputs(
        load_classifier(args.teacher), student, args.mode, config.temperature, args.beta, args.step
    )

    def attach(trainer: Any) -> None:
        trainer.layer_distiller = extra

    result = train_classifier(student, tokenizer, splits, config, folder / "trainer", distillation, configure=attach)
    save_checkpoint(student, tokenizer, folder)
    metrics = {"options": {k: str(v) for k, v in vars(args).items()} | {"seed": seed}} | result.metrics()
    metrics["live_teacher"] = True  # attached after train_classifier chose its own (none)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="the fine-tuned teacher (its logits, live)")
    parser.add_argument("--source", type=Path, required=True, help="the FFN-sliced teacher the student is built from")
    parser.add_argument("--mode", choices=("mixup", "adversarial"), default="mixup")
    parser.add_argument("--beta", type=float, default=0.4, help="mixup: lambda ~ Beta(beta, beta)")
    parser.add_argument("--step", type=float, default=0.1, help="adversarial: the move, a share of each token's norm")
    parser.add_argument("--work", type=Path, default=Path("runs/live-teacher"))
    parser.add_argument("--max-train-samples", type=int, help="a smoke run on a few rows")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    args = parser.parse_args()
    data = load_data("clinc150")
    print(f"CPU: {cpu_model()}; columns: validation, test accuracy, in scope, OOS recall (%), train s")
    runs = {seed: run(seed, args, data) for seed in args.seeds}
    for seed, metrics in runs.items():
        scores = [metrics["validation"]["accuracy"], *(metrics["test"][c] for c in COLUMNS)]
        print(f"{args.mode} seed {seed}: " + ", ".join(f"{100 * v:.2f}" for v in scores), metrics["train_seconds"])


if __name__ == "__main__":
    main()
