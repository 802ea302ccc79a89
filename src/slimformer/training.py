"""Pieces shared by every training stage (fine-tuning, distillation, pruning, QAT)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimformer.errors import ConfigError
from slimformer.metrics import classification_metrics

if TYPE_CHECKING:
    import datasets
    from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase


DEFAULT_MAX_LENGTH = 128


@dataclass
class TrainingOptions:
    """Hyper-parameters every training stage shares (finetune, distill, prune); stages override defaults."""

    epochs: float = 5.0  # passes over the training split
    learning_rate: float = 1e-4  # MiniLM-sized encoders want more than BERT-base's 2e-5
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # fraction of steps with a linear learning-rate warm-up
    max_length: int = 64  # CLINC150 queries are at most 33 tokens
    seed: int = 42
    max_train_samples: int | None = None  # subsample the training split (quick runs)
    max_eval_samples: int | None = None  # subsample validation and test

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


def evaluate_classifier(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: datasets.Dataset,
    oos_label_id: int | None,
    batch_size: int = 128,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> dict[str, float]:
    """Metrics of a PyTorch classifier on a split (columns text, label)."""
    import torch

    from slimformer.data import column

    texts, labels = column(dataset, "text"), column(dataset, "label")
    model.eval()
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            predictions.append(model(**batch).logits.argmax(-1).numpy())
    return classification_metrics(labels, np.concatenate(predictions), oos_label_id)


def base_training_arguments(output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """TrainingArguments keywords every stage shares: no hub, no reporting, progress bars on; trains on a CUDA GPU
    when one is visible (models go back to the CPU afterwards: see :func:`train_on_best_device`), else on the CPU.
    `SLIMFORMER_TRAIN_DEVICE=cpu` forces the CPU."""
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


def train_on_best_device(trainer: Any) -> None:
    """`trainer.train()`, then move the model (and a distillation teacher) back to the CPU, where every later
    step (evaluation, saving, export, latency) runs."""
    trainer.train()
    trainer.model.to("cpu")
    if getattr(trainer, "teacher", None) is not None:
        trainer.teacher.to("cpu")


def trainer_arguments(output_dir: Path, config: Any, **overrides: Any) -> dict[str, Any]:
    """TrainingArguments keywords from a stage config's shared hyperparameters (epochs, learning_rate,
    batch_size, weight_decay, warmup_ratio, seed and, where the config has it, group_by_length)."""
    return base_training_arguments(
        output_dir,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # transformers 5 reads a float below 1 as a ratio
        seed=config.seed,
        train_sampling_strategy="group_by_length" if getattr(config, "group_by_length", False) else "random",
        **overrides,
    )
