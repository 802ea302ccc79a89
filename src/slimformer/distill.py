"""Knowledge distillation: a small student learns from a fine-tuned teacher's logits (Hinton et al., 2015).

The loss mixes the hard labels and the teacher's softened distribution::

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The teacher never runs inside the training loop: it runs once over the training texts, its logits are cached
on disk (keyed by the teacher's files, the texts and `max_length`) and every epoch, every later run and every
search trial reads them as a `teacher_logits` column of the batch. Teacher and student each tokenize the raw
texts with their own tokenizer, so logits are aligned per example (and per label name), never per token.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from slimformer.artifacts import atomic_output_dir, read_metrics, write_json, write_metrics
from slimformer.errors import ConfigError
from slimformer.students import build_student_from_teacher
from slimformer.training import TrainingOptions

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedTokenizerBase, TrainerCallback

    from slimformer.data import DataSplits

CACHE_DIR_ENV = "SLIMFORMER_CACHE_DIR"
CACHE_FORMAT_VERSION = 1  # bump when the cached array's meaning changes
TEACHER_LOGITS_COLUMN = "teacher_logits"
# files of a model folder that do not change what the model computes (left out of the teacher's hash)
NON_MODEL_FILES = {"metrics.json", "README.md", "session.json"}


# --- the loss ---------------------------------------------------------------------------------------------


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T)).

    Logits are (batch, num_labels), labels (batch,) ints; CE and KL are means over the batch. The T^2 factor
    keeps the soft term's gradients on the same scale as the hard term's whatever the temperature. Without
    teacher logits (evaluation batches) it is the plain cross-entropy.
    """
    import torch.nn.functional as F

    cross_entropy = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha >= 1.0:
        return cross_entropy
    teacher_logits = teacher_logits.to(student_logits.dtype)
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * cross_entropy + (1.0 - alpha) * temperature**2 * kl


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """TrainingArguments plus the two knobs of the distillation loss."""

    alpha: float = field(default=0.5, metadata={"help": "Weight of the hard-label cross-entropy (1 = no teacher)."})
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of teacher and student."})
    # the `teacher_logits` column is not a model input: keep it for the collator instead of dropping it
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns the model's forward does not take."}
    )


@dataclass
class DistillationDataCollator:
    """Pads token ids per batch like DataCollatorWithPadding and stacks the `teacher_logits` column."""

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        teacher = [f[TEACHER_LOGITS_COLUMN] for f in features if TEACHER_LOGITS_COLUMN in f]
        rest = [{k: v for k, v in f.items() if k != TEACHER_LOGITS_COLUMN} for f in features]
        batch = DataCollatorWithPadding(self.tokenizer)(rest)
        if teacher:
            if len(teacher) != len(features):
                raise ValueError("some rows of the batch have teacher logits and some do not")
            batch[TEACHER_LOGITS_COLUMN] = torch.tensor(np.asarray(teacher, dtype=np.float32))
        return batch


class DistillationTrainer(Trainer):
    """A Trainer whose loss is :func:`distillation_loss`, reading teacher logits from the batch.

    Batches without a `teacher_logits` column (evaluation) get the plain cross-entropy. Without an explicit
    `data_collator`, a :class:`DistillationDataCollator` over `processing_class` is used.
    """

    # the loss is a per-batch mean: the Trainer divides it for gradient accumulation itself
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("data_collator") is None and kwargs.get("processing_class") is not None:
            kwargs["data_collator"] = DistillationDataCollator(kwargs["processing_class"])
        super().__init__(*args, **kwargs)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)  # the caller reads `labels` from its dict afterwards
        teacher = inputs.pop(TEACHER_LOGITS_COLUMN, None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        alpha = getattr(self.args, "alpha", 1.0)
        temperature = getattr(self.args, "temperature", 1.0)
        loss = distillation_loss(outputs.logits, teacher, labels, alpha, temperature)
        return (loss, outputs) if return_outputs else loss


# --- the teacher-logit cache ------------------------------------------------------------------------------


@dataclass
class TeacherLogits:
    """Teacher logits of one list of texts (rows in text order, columns in the teacher's label order)."""

    logits: np.ndarray
    key: str  # cache key: hash of the teacher's files, the texts and max_length
    hit: bool  # True when read from the cache, False when the teacher ran
    path: Path  # the .npy file
    seconds: float  # time spent computing or reading


def default_cache_dir() -> Path:
    """`$SLIMFORMER_CACHE_DIR/teacher_logits`, `${XDG_CACHE_HOME:-~/.cache}/slimformer/teacher_logits`."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]) / "teacher_logits"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "slimformer" / "teacher_logits"


def model_files_hash(model_dir: str | Path) -> str:
    """SHA-256 over the names and bytes of a model folder's top-level files (weights, config, tokenizer).

    `metrics.json`, README and dot-files are left out: rewriting them does not change what the model computes.
    """
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in Path(model_dir).iterdir()
        if p.is_file() and p.name not in NON_MODEL_FILES and not p.name.startswith(".")
    )
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def texts_hash(texts: Sequence[str]) -> str:
    """SHA-256 of a list of texts in order (the data fingerprint of one split)."""
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()


def teacher_logits_key(teacher_dir: str | Path, texts: Sequence[str], max_length: int) -> str:
    """The cache key of the teacher's logits over `texts`."""
    parts = [
        f"v{CACHE_FORMAT_VERSION}",
        model_files_hash(teacher_dir),
        texts_hash(texts),
        f"max_length={max_length}",
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def cached_teacher_logits(
    teacher_dir: str | Path,
    data_split: datasets.Dataset | Sequence[str],
    max_length: int = 64,
    batch_size: int = 128,
    cache_dir: str | Path | None = None,
) -> TeacherLogits:
    """The teacher's logits over a split (a Dataset with a `text` column, or a list of texts), from the cache
    when it holds them, else computed once and stored atomically as `<cache_dir>/<key>.npy` (+ a .json note).
    """
    from slimformer.data import column

    texts = list(data_split) if isinstance(data_split, list | tuple) else column(data_split, "text")
    started = time.perf_counter()
    key = teacher_logits_key(teacher_dir, texts, max_length)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    path = folder / f"{key}.npy"
    if path.is_file():
        try:
            logits = np.load(path)
        except (OSError, ValueError):
            logits = None  # a damaged file is recomputed and replaced
        if logits is not None and logits.shape[0] == len(texts):
            return TeacherLogits(logits, key, True, path, time.perf_counter() - started)
    logits = _run_teacher(teacher_dir, texts, max_length, batch_size)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp.npy"
    np.save(tmp, logits)
    os.replace(tmp, path)  # readers see the whole array or nothing
    write_json(
        folder / f"{key}.json",
        {
            "teacher": str(Path(teacher_dir).resolve()),
            "rows": len(texts),
            "max_length": max_length,
            "num_labels": int(logits.shape[1]),
        },
    )
    return TeacherLogits(logits, key, False, path, time.perf_counter() - started)


def teacher_logits(
    teacher_dir: str | Path,
    data_split: datasets.Dataset | Sequence[str],
    max_length: int = 64,
    batch_size: int = 128,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """(rows, num_labels) float32 logits of the teacher classifier over a split, in the teacher's label order.

    Cached: see :func:`cached_teacher_logits`.
    """
    return cached_teacher_logits(teacher_dir, data_split, max_length, batch_size, cache_dir).logits


def _run_teacher(teacher_dir: str | Path, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    import torch

    from slimformer.models import load_classifier, load_tokenizer

    tokenizer = load_tokenizer(teacher_dir)
    model = load_classifier(teacher_dir).eval()
    # batches of similar length pad less; the rows are put back in text order afterwards
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    logits = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            logits[rows] = model(**batch).logits.float().numpy()
    return logits


# --- the stage --------------------------------------------------------------------------------------------


@dataclass
class DistillConfig(TrainingOptions):
    """Options of `slimformer distill`; give exactly one of `student` and `student_layers`."""

    student: str | None = None  # student checkpoint folder, or "default" (packaged MiniLM-L6 body)
    student_layers: int | None = None  # or: build the student from K evenly spaced teacher layers
    alpha: float = 0.5  # weight of the hard-label loss; 1.0 = plain fine-tuning, the teacher is unused
    temperature: float = 2.0  # softens both distributions so the teacher's "dark knowledge" shows
    group_by_length: bool = True  # batch queries of similar length: far less padding, about 2x faster on CPU
    cache_dir: str | None = None  # teacher-logit cache (default: see default_cache_dir)

    def validate(self) -> None:
        if (self.student is None) == (self.student_layers is None):
            raise ConfigError("give exactly one of --student PATH|default and --student-layers K")
        if self.student_layers is not None and self.student_layers < 1:
            raise ConfigError(f"student layers must be >= 1, got {self.student_layers}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        self.validate_training_options()


def distill(
    teacher_dir: str | Path,
    output: str | Path,
    config: DistillConfig | None = None,
    data: DataSplits | None = None,
    teacher: str | Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Distil the classifier in `teacher_dir` into a student on `data` and write an HF checkpoint to `output`.

    The folder gets the student (model.safetensors, tokenizer, config.json with id2label) and `metrics.json`:
    "stage": "distill", the config, per-epoch validation history, validation and test metrics, train seconds
    and the teacher-logit cache key and whether it was a hit. `callbacks` go to the Trainer (the search's
    pruning). Returns the metrics.
    """
    from transformers import set_seed

    from slimformer.models import (
        check_classifier_fits,
        classifier_labels,
        fit_max_length,
        load_classifier,
        load_tokenizer,
        resolve_model_path,
    )
    from slimformer.training import (
        evaluate_classifier,
        metrics_function,
        tokenize_dataset,
        train_on_best_device,
        trainer_arguments,
    )

    config = config or DistillConfig()
    config.validate()
    teacher_path = resolve_model_path(teacher_dir)
    config = replace(config, max_length=fit_max_length(teacher_path, config.max_length))  # at most the model's limit
    teacher_labels = check_classifier_fits(teacher_path, data.labels)
    splits = data.subset(config.max_train_samples, config.max_eval_samples, seed=config.seed)
    set_seed(config.seed)

    kept_layers = None
    if config.student_layers is not None:
        student, tokenizer, kept_layers = build_student_from_teacher(teacher_path, config.student_layers)
    else:
        student_path = resolve_model_path(config.student)
        config = replace(config, max_length=fit_max_length(student_path, config.max_length))
        if classifier_labels(student_path) is None:  # a base body gets a fresh head for the data's labels
            student = load_classifier(student_path, labels=splits.labels)
        else:
            check_classifier_fits(student_path, splits.labels)
            student = load_classifier(student_path)
        tokenizer = load_tokenizer(student_path)
    # every label id below is in the student's label order
    student_labels = [student.config.id2label[i] for i in range(student.config.num_labels)]
    splits = _relabel(splits, student_labels)

    train = splits.train
    cache = None
    if config.alpha < 1.0:  # alpha = 1 is plain fine-tuning: the teacher is not needed
        cache = cached_teacher_logits(teacher_path, splits.train, config.max_length, cache_dir=config.cache_dir)
        columns = [teacher_labels.index(label) for label in student_labels]
        train = train.add_column(TEACHER_LOGITS_COLUMN, cache.logits[:, columns].tolist())
    train_set = tokenize_dataset(train, tokenizer, config.max_length)
    validation_set = tokenize_dataset(splits.validation, tokenizer, config.max_length)

    with atomic_output_dir(output) as folder:
        arguments = DistillationTrainingArguments(
            alpha=config.alpha,
            temperature=config.temperature,
            **trainer_arguments(folder / "trainer", config),
        )
        trainer = DistillationTrainer(
            model=student,
            args=arguments,
            train_dataset=train_set,
            eval_dataset=validation_set,
            data_collator=DistillationDataCollator(tokenizer),
            processing_class=tokenizer,
            compute_metrics=metrics_function(splits.oos_label_id),
            callbacks=list(callbacks),
        )
        started = time.perf_counter()
        train_on_best_device(trainer)
        train_seconds = time.perf_counter() - started
        student.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _remove_tree(folder / "trainer")
        teacher_metrics = read_metrics(teacher_path)
        metrics = {
            "stage": "distill",
            "teacher": str(teacher_dir),
            "teacher_test_accuracy": (teacher_metrics.get("test") or {}).get("accuracy"),
            "student": config.student or f"{config.student_layers} layers of the teacher",
            "student_layers_kept": kept_layers,
            "num_parameters": sum(p.numel() for p in student.parameters()),
            "data": splits.name,
            "data_fingerprint": splits.fingerprint,
            "config": asdict(config),
            "teacher_logits": None
            if cache is None
            else {
                "key": cache.key,
                "hit": cache.hit,
                "seconds": round(cache.seconds, 2),
                "path": str(cache.path),
            },
            "train_seconds": round(train_seconds, 1),
            "validation": evaluate_classifier(
                student, tokenizer, splits.validation, splits.oos_label_id, max_length=config.max_length
            ),
            "test": evaluate_classifier(
                student, tokenizer, splits.test, splits.oos_label_id, max_length=config.max_length
            ),
            "history": _epoch_history(trainer.state.log_history),
        }
        write_metrics(folder, metrics)
    return metrics


def _epoch_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def _relabel(splits: DataSplits, labels: list[str]) -> DataSplits:
    """The same splits with label ids in `labels`' order (a student checkpoint's own head order)."""
    from slimformer.data import DataSplits, column

    if labels == splits.labels:
        return splits
    new_id = {old: labels.index(name) for old, name in enumerate(splits.labels)}

    def remap(ds: datasets.Dataset) -> datasets.Dataset:
        return ds.remove_columns("label").add_column("label", [new_id[v] for v in column(ds, "label")])

    return DataSplits(
        name=splits.name,
        labels=labels,
        train=remap(splits.train),
        validation=remap(splits.validation),
        test=remap(splits.test),
        fingerprint=splits.fingerprint,
    )


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
