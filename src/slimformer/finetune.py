"""Fine-tune a checkpoint (or the packaged MiniLM body) into a classifier for a dataset's labels."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from slimformer.artifacts import atomic_output_dir, write_metrics
from slimformer.training import TrainingOptions


@dataclass
class FinetuneConfig(TrainingOptions):
    """Options of `slimformer finetune`; the defaults suit CLINC150's 151 short intents on a small BERT."""

    group_by_length: bool = True  # batch queries of similar length: far less padding, about 2x faster on CPU

    def validate(self) -> None:
        self.validate_training_options()


def finetune(
    model: str | Path,
    output: str | Path,
    config: FinetuneConfig | None = None,
    data: Any = None,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Train `model` (folder or ``default``) on `data` (a DataSplits) and write an HF checkpoint to `output`.

    The folder gets model.safetensors, the tokenizer, config.json with id2label and `metrics.json` holding
    validation and test metrics. Returns those metrics.
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from slimformer.models import fit_max_length, load_classifier, load_tokenizer, resolve_model_path
    from slimformer.training import (
        evaluate_classifier,
        metrics_function,
        tokenize_dataset,
        train_on_best_device,
        trainer_arguments,
    )

    config = config or FinetuneConfig()
    config.validate()
    model_path = resolve_model_path(model)
    config = replace(config, max_length=fit_max_length(model_path, config.max_length))  # at most the model's limit
    splits = data.subset(config.max_train_samples, config.max_eval_samples, seed=config.seed)
    set_seed(config.seed)
    tokenizer = load_tokenizer(model_path)
    classifier = load_classifier(model_path, labels=splits.labels)
    train_set = tokenize_dataset(splits.train, tokenizer, config.max_length)
    validation_set = tokenize_dataset(splits.validation, tokenizer, config.max_length)

    with atomic_output_dir(output) as folder:
        arguments = TrainingArguments(**trainer_arguments(folder / "trainer", config))
        trainer = Trainer(
            model=classifier,
            args=arguments,
            train_dataset=train_set,
            eval_dataset=validation_set,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            compute_metrics=metrics_function(splits.oos_label_id),
        )
        started = time.perf_counter()
        train_on_best_device(trainer)
        train_seconds = time.perf_counter() - started
        history = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
        classifier.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _remove_tree(folder / "trainer")
        metrics = {
            "stage": "finetune",
            "base_model": str(model),
            "data": splits.name,
            "data_fingerprint": splits.fingerprint,
            "config": asdict(config),
            "train_seconds": round(train_seconds, 1),
            "validation": evaluate_classifier(classifier, tokenizer, splits.validation, splits.oos_label_id),
            "test": evaluate_classifier(classifier, tokenizer, splits.test, splits.oos_label_id),
            "history": [
                {"epoch": e["epoch"], "validation_accuracy": e["eval_accuracy"], "loss": e.get("eval_loss")}
                for e in history
            ],
        }
        write_metrics(folder, metrics)
    return metrics


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
