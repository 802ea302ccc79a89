"""The one training loop every training stage shares (fine-tuning, distillation, pruning recovery, QAT).

:func:`train_classifier` tokenizes the splits at the config's `max_length`, adds the cached teacher logits when
the run distils, trains with the :class:`~slimformer.distillation.DistillationTrainer` (alpha = 1 or no teacher:
plain cross-entropy), then scores validation and test with ``Trainer.evaluate`` at the same length. Stages
differ only in the model they hand in and the callbacks they add.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from slimformer.config import QUICK_MAX_EPOCHS, StageConfig, option
from slimformer.errors import ConfigError
from slimformer.metrics import classification_metrics
from slimformer.models import DEFAULT_MAX_LENGTH

if TYPE_CHECKING:
    import datasets
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

    from slimformer.data import DataSplits
    from slimformer.layer_losses import LayerDistiller, LayerLosses

PRECISIONS = ("fp32", "bf16", "auto")


@dataclass
class SoftTargets:
    """The teacher's share of a training loss, declared and checked once for every stage that distils (distill,
    static, prune's recovery, QAT): alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher / T || student / T)."""

    alpha: float = option(0.5, "Weight of the hard-label loss; 1 - alpha goes to the teacher's soft targets (1: none).")
    temperature: float = option(2.0, "Softens both distributions so the teacher's 'dark knowledge' shows.")
    standardize_logits: bool = option(
        False, "Z-score teacher and student logits before the temperature (logit standardization, Sun et al. 2024)."
    )

    def validate_soft_targets(self) -> None:
        """One-line ConfigErrors for an alpha outside [0, 1], a temperature <= 0, or standardized logits without
        soft targets (alpha 1)."""
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.standardize_logits and self.alpha >= 1:
            raise ConfigError("standardize logits shapes the teacher's soft targets: it needs alpha < 1")

    def distillation(self, teacher: Path, **extra: Any) -> Distillation:
        """The teacher side of a training run with these soft-target options (`extra`: the cache folder, layer
        losses, transfer texts)."""
        return Distillation(teacher, self.alpha, self.temperature, standardize=self.standardize_logits, **extra)


@dataclass
class TrainingOptions(StageConfig):
    """Hyper-parameters every training stage shares (finetune, distill, prune, QAT); stages override defaults."""

    epochs: float = option(5.0, "Passes over the training split.")
    learning_rate: float = option(1e-4, "Peak learning rate (MiniLM-sized encoders want more than BERT's 2e-5).")
    batch_size: int = option(32, "Training batch size.")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm weights).")
    warmup_ratio: float = option(0.1, "Fraction of the steps with a linear learning-rate warm-up.")
    max_length: int | None = option(None, "Truncate texts to this many tokens (default: the source's, else 128).")
    seed: int = option(42, "Random seed.")
    max_train_samples: int | None = option(None, "Subsample the training split (quick runs).")
    max_eval_samples: int | None = option(None, "Subsample validation and test.")
    freeze_word_embeddings: bool = option(
        False,
        "Keep the word-embedding table as it is while training (AdamW skips it): 13-25 % less time a step for "
        "MiniLM-sized models on the CPU (BENCHMARKS.md, 'Students that keep accuracy').",
    )
    precision: str = option(
        "fp32",
        "Training arithmetic: fp32; bf16 (autocast, fp32 master weights); auto: bf16 where the hardware computes "
        "it natively (AVX512-BF16 / AMX-BF16 CPUs, bf16 GPUs), else fp32",
    )

    def quick(self) -> Self:
        return replace(self, epochs=min(self.epochs, QUICK_MAX_EPOCHS)) if self.epochs > 0 else self

    def validate_training_options(self) -> None:
        """One-line errors for out-of-range shared hyper-parameters."""
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning rate must be in (0, 1), got {self.learning_rate}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max length must be >= 2, got {self.max_length}")
        check_precision(self.precision)

    def validate(self) -> None:
        self.validate_training_options()


@dataclass
class Distillation:
    """The teacher side of a training run: whose logits, how much weight, which temperature."""

    teacher: Path
    alpha: float = 0.5  # weight of the hard-label loss; 1 - alpha goes to the teacher's soft targets
    temperature: float = 2.0
    cache_dir: str | None = None
    standardize: bool = False  # z-score both logits first (`SoftTargets.standardize_logits`)
    layers: LayerLosses | None = None  # intermediate-layer losses (the teacher then runs live)
    transfer_texts: Sequence[str] = ()  # more texts to distil on: teacher targets only, no hard label


@dataclass
class TrainResult:
    """What a training run measured: validation and test metrics, history, seconds, teacher-logit cache."""

    validation: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    teacher_logits: dict[str, Any] | None = None
    processes: int = 1  # data-parallel processes that trained (torchrun --nproc_per_node N: N, via DDP)
    precision: str = "fp32"  # the arithmetic it trained in (`precision: auto` resolved)
    transfer_rows: int = 0  # rows distilled on with teacher targets only (unlabelled texts, augmentations)
    live_teacher: bool = False  # did the teacher run on every batch (intermediate-layer losses)?

    def metrics(self) -> dict[str, Any]:
        """The entries every training stage writes to metrics.json."""
        return {
            "teacher_logits": self.teacher_logits,
            "train_seconds": self.train_seconds,
            "training_processes": self.processes,
            "training_precision": self.precision,
            "transfer_rows": self.transfer_rows,
            "live_teacher": self.live_teacher,
            "validation": self.validation,
            "test": self.test,
            "history": self.history,
        }


def tokenize_dataset(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int = DEFAULT_MAX_LENGTH
) -> datasets.Dataset:
    """Token ids without padding (the collator pads each batch to its longest row), `labels` kept."""

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    encoded = dataset.map(encode, batched=True, desc="tokenizing")
    return encoded.rename_column("label", "labels").remove_columns(["text"])


def metrics_function(oos_label_id: int | None) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` for `transformers.Trainer`."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return classification_metrics(prediction.label_ids, np.argmax(logits, axis=-1), oos_label_id)

    return compute


def train_classifier(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: DataSplits,
    config: TrainingOptions,
    work_dir: Path,
    distillation: Distillation | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    configure: Callable[[Any], None] | None = None,
) -> TrainResult:
    """Train `model` on `splits` (labels in the model's order) and score it on validation and test.

    With `distillation` (and alpha < 1) the loss distils from the teacher's cached logits; `configure(trainer)`
    may adjust the trainer before training (movement pruning sets its optimizer there). The model is on the CPU
    afterwards. `work_dir` holds the Trainer's scratch files and is removed.
    """
    from slimformer.distillation import (
        DistillationDataCollator,
        DistillationTrainer,
        DistillationTrainingArguments,
        add_teacher_logits,
        cache_report,
    )

    max_length = config.max_length or DEFAULT_MAX_LENGTH
    train, caches, layer_distiller = splits.train, [], None
    alpha, temperature, standardize = 1.0, 1.0, False
    if distillation is not None and distillation.alpha < 1.0:
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        train, caches = add_teacher_logits(
            train, distillation.teacher, labels, max_length, distillation.cache_dir, distillation.transfer_texts
        )
        alpha, temperature, standardize = distillation.alpha, distillation.temperature, distillation.standardize
        if distillation.layers is not None and distillation.layers.active:
            layer_distiller = live_teacher(model, tokenizer, distillation)
    elif distillation is not None and (
        distillation.transfer_texts or (distillation.layers and distillation.layers.active)
    ):
        raise ConfigError("transfer texts and layer losses learn from the teacher: they need alpha < 1")
    arguments = DistillationTrainingArguments(
        alpha=alpha, temperature=temperature, standardize_logits=standardize, **trainer_arguments(work_dir, config)
    )
    trainer = DistillationTrainer(
        model=model,
        args=arguments,
        train_dataset=tokenize_dataset(train, tokenizer, max_length),
        eval_dataset=tokenize_dataset(splits.validation, tokenizer, max_length),
        data_collator=DistillationDataCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=metrics_function(splits.oos_label_id),
        callbacks=list(callbacks),
        layer_distiller=layer_distiller,
    )
    if configure is not None:
        configure(trainer)
    word_table = model.get_input_embeddings().weight
    trainable = word_table.requires_grad
    word_table.requires_grad_(not config.freeze_word_embeddings)  # the Trainer's optimizer skips frozen weights
    started = time.perf_counter()
    try:
        trainer.train()
    finally:
        word_table.requires_grad_(trainable)
    train_seconds = time.perf_counter() - started
    result = TrainResult(
        validation=_evaluate(trainer, None, "validation"),
        test=_evaluate(trainer, tokenize_dataset(splits.test, tokenizer, max_length), "test"),
        history=epoch_history(trainer.state.log_history),
        train_seconds=round(train_seconds, 1),
        teacher_logits=cache_report(caches),
        processes=trainer.args.world_size,
        precision="bf16" if trainer.args.bf16 else "fp32",
        transfer_rows=len(distillation.transfer_texts) if caches else 0,
        live_teacher=layer_distiller is not None,
    )
    model.to("cpu")  # every later step (saving, export, latency) runs on the CPU
    shutil.rmtree(work_dir, ignore_errors=True)
    return result


def live_teacher(
    student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, distillation: Distillation
) -> LayerDistiller:
    """The teacher loaded for the intermediate-layer losses; ConfigError when its vocabulary is not the student's
    (the losses compare the two models token by token)."""
    from slimformer.layer_losses import LayerDistiller
    from slimformer.models import load_classifier, load_tokenizer

    if load_tokenizer(distillation.teacher).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            "layer losses compare the student and the teacher token by token: they need the teacher's tokenizer "
            "(a student from the teacher's own layers has it); use logit-only distillation for this student"
        )
    return LayerDistiller(load_classifier(distillation.teacher), student, distillation.layers)


def _evaluate(trainer: Any, dataset: Any, prefix: str) -> dict[str, float]:
    if dataset is not None and len(dataset) == 0:  # a sealed split (see DataSplits.without_test)
        return {}
    scores = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
    names = ("accuracy", "macro_f1", "in_scope_accuracy", "oos_recall")
    return {name: scores[f"{prefix}_{name}"] for name in names if f"{prefix}_{name}" in scores}


def epoch_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per epoch: validation accuracy and loss, and the mean training loss of that epoch."""
    train_loss = {round(e["epoch"], 3): e["loss"] for e in log_history if "loss" in e and "epoch" in e}
    return [
        {
            "epoch": e["epoch"],
            "validation_accuracy": e["eval_accuracy"],
            "validation_loss": e.get("eval_loss"),
            "train_loss": train_loss.get(round(e["epoch"], 3)),
        }
        for e in log_history
        if "eval_accuracy" in e
    ]


def base_training_arguments(output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """TrainingArguments keywords every stage shares: no hub, no reporting, progress bars on; trains on a CUDA GPU
    when one is visible, else on the CPU. `SLIMFORMER_TRAIN_DEVICE=cpu` forces the CPU."""
    arguments = {
        "output_dir": str(output_dir),
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "logging_strategy": "epoch",
        "report_to": "none",
        "use_cpu": not _cuda_training(),
        "dataloader_num_workers": 0,
        "per_device_eval_batch_size": 128,
        "disable_tqdm": os.environ.get("SLIMFORMER_NO_PROGRESS") == "1",
    }
    arguments.update(overrides)
    return arguments


def _cuda_training() -> bool:
    if os.environ.get("SLIMFORMER_TRAIN_DEVICE", "").lower() == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def check_precision(precision: str) -> None:
    """A one-line ConfigError unless `precision` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_precision(precision: str) -> str:
    """`precision` with `auto` decided for the device training runs on: bf16 where it is native, else fp32."""
    if precision != "auto":
        return precision
    if _cuda_training():
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    from slimformer.cpu import has_bf16

    return "bf16" if has_bf16() else "fp32"


def trainer_arguments(output_dir: Path, config: Any, **overrides: Any) -> dict[str, Any]:
    """TrainingArguments keywords from a stage config's shared hyperparameters (epochs, learning_rate,
    batch_size, weight_decay, warmup_ratio, seed, precision and, where the config has it, group_by_length)."""
    return base_training_arguments(
        output_dir,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # transformers 5 reads a float below 1 as a ratio
        seed=config.seed,
        bf16=resolve_precision(getattr(config, "precision", "fp32")) == "bf16",
        train_sampling_strategy="group_by_length" if getattr(config, "group_by_length", False) else "random",
        **overrides,
    )
