"""The one distillation path (Hinton et al., 2015): a Trainer whose loss mixes the hard labels and a teacher's
softened distribution, over teacher logits computed once and cached on disk::

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

For the logit loss the teacher never runs inside the training loop: it runs once over the training texts, its
logits are cached (keyed by the teacher's files, the texts and `max_length`) and every epoch, every later run,
every search trial, every pruning method's recovery training and QAT read them as a `teacher_logits` column of the
batch (:func:`add_teacher_logits`). Teacher and student each tokenize the raw texts with their own tokenizer, so
logits are aligned per example (and per label name), never per token.

The intermediate-layer losses (:class:`LayerLosses`: hidden states, MiniLMv2 attention relations, the embedding
output) are the one exception: they compare the student's internals with the teacher's on the same tokens, so
while one is on the teacher runs live on each training batch (:class:`LayerDistiller`), with the student's
tokenizer, which must then be the teacher's. The logits stay cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from slimformer.artifacts import write_json
from slimformer.layer_losses import IGNORED_LABEL, LayerDistiller

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedTokenizerBase

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
    standardize: bool = False,
) -> torch.Tensor:
    """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T)).

    Logits are (batch, num_labels), labels (batch,) ints; CE is a mean over the labelled rows (transfer rows are
    labelled IGNORED_LABEL: the teacher's targets are all they have), KL a mean over the batch. The T^2 factor
    keeps the soft term's gradients on the same scale as the hard term's whatever the temperature. Without
    teacher logits (evaluation batches) it is the plain cross-entropy. With `standardize`, both rows of logits
    are z-scored first (logit standardization, Sun et al., CVPR 2024): the student matches the shape of the
    teacher's logits, not their range, which a smaller model may not reach.
    """
    import torch.nn.functional as F

    # transfer rows carry no hard label: the mean runs over the labelled rows (a batch of none would give NaN)
    if (labels != IGNORED_LABEL).any():
        cross_entropy = F.cross_entropy(student_logits, labels, ignore_index=IGNORED_LABEL)
    else:
        cross_entropy = student_logits.new_zeros(())
    if teacher_logits is None or alpha >= 1.0:
        return cross_entropy
    teacher_logits = teacher_logits.to(student_logits.dtype)
    soft_student = student_logits
    if standardize:
        soft_student, teacher_logits = z_scores(student_logits), z_scores(teacher_logits)
    kl = F.kl_div(
        F.log_softmax(soft_student / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * cross_entropy + (1.0 - alpha) * temperature**2 * kl


def z_scores(logits: torch.Tensor) -> torch.Tensor:
    """Each row minus its mean, over its standard deviation."""
    return (logits - logits.mean(dim=-1, keepdim=True)) / (logits.std(dim=-1, keepdim=True) + 1e-7)


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """TrainingArguments plus the two knobs of the distillation loss."""

    alpha: float = field(default=0.5, metadata={"help": "Weight of the hard-label cross-entropy (1 = no teacher)."})
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of teacher and student."})
    standardize_logits: bool = field(default=False, metadata={"help": "Z-score both logits before the temperature."})
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
    """A Trainer whose loss is :func:`distillation_loss`, reading teacher logits from the batch, plus the
    intermediate-layer losses of a :class:`LayerDistiller` (training batches only) when one is given.

    Batches without a `teacher_logits` column (evaluation) get the plain cross-entropy. Without an explicit
    `data_collator`, a :class:`DistillationDataCollator` over `processing_class` is used.
    """

    # the loss is a per-batch mean: the Trainer divides it for gradient accumulation itself
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, layer_distiller: LayerDistiller | None = None, **kwargs: Any) -> None:
        if kwargs.get("data_collator") is None and kwargs.get("processing_class") is not None:
            kwargs["data_collator"] = DistillationDataCollator(kwargs["processing_class"])
        super().__init__(*args, **kwargs)
        self.layer_distiller = layer_distiller

    def create_optimizer(self, model: Any = None) -> Any:
        """The Trainer's optimizer, plus the layer distiller's projection (trained, never saved)."""
        optimizer = super().create_optimizer(model)
        extra = self.layer_distiller.parameters() if self.layer_distiller is not None else []
        if extra:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

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
        distiller = self.layer_distiller if model.training else None
        if distiller is not None and distiller.wants_hidden_states:
            inputs["output_hidden_states"] = True
        outputs = model(**inputs)
        alpha = getattr(self.args, "alpha", 1.0)
        temperature = getattr(self.args, "temperature", 1.0)
        standardize = getattr(self.args, "standardize_logits", False)
        loss = distillation_loss(outputs.logits, teacher, labels, alpha, temperature, standardize)
        if distiller is not None:
            inputs.pop("output_hidden_states", None)
            loss = loss + distiller.loss(inputs, outputs)
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


def with_transfer_texts(train: datasets.Dataset, texts: Sequence[str]) -> datasets.Dataset:
    """`train` followed by `texts` as rows labelled IGNORED_LABEL: the teacher's targets are their only label."""
    if not texts:
        return train
    import datasets

    labelled = train.cast_column("label", datasets.Value("int64"))
    transfer = datasets.Dataset.from_dict(
        {"text": list(texts), "label": [IGNORED_LABEL] * len(texts)}, features=labelled.features
    )
    return datasets.concatenate_datasets([labelled, transfer])


def add_teacher_logits(
    train: datasets.Dataset,
    teacher_dir: str | Path,
    student_labels: list[str],
    max_length: int,
    cache_dir: str | Path | None = None,
    transfer_texts: Sequence[str] = (),
) -> tuple[datasets.Dataset, list[TeacherLogits]]:
    """`train` (text, label) followed by `transfer_texts` (label IGNORED_LABEL), with a `teacher_logits` column
    in the student's label order. The teacher's logits of the training split and of the transfer texts are
    cached apart, so every distillation of the same split reads the split's once, whatever its transfer data.
    Returns the dataset and the cache entries (training split first)."""
    parts = [ordered_teacher_logits(teacher_dir, train, student_labels, max_length, cache_dir)]
    if transfer_texts:
        parts.append(ordered_teacher_logits(teacher_dir, list(transfer_texts), student_labels, max_length, cache_dir))
    logits = np.concatenate([part for part, _ in parts])
    rows = with_transfer_texts(train, transfer_texts)
    return rows.add_column(TEACHER_LOGITS_COLUMN, logits.tolist()), [cache for _, cache in parts]


def ordered_teacher_logits(
    teacher_dir: str | Path,
    data_split: datasets.Dataset | Sequence[str],
    labels: Sequence[str],
    max_length: int,
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, TeacherLogits]:
    """The teacher's logits over a split (:func:`cached_teacher_logits`), columns put in `labels`' order, and the
    cache entry."""
    from slimformer.models import classifier_labels

    cache = cached_teacher_logits(teacher_dir, data_split, max_length, cache_dir=cache_dir)
    teacher_labels = classifier_labels(teacher_dir) or []
    return cache.logits[:, [teacher_labels.index(label) for label in labels]], cache


def cache_report(caches: Sequence[TeacherLogits]) -> dict[str, Any] | None:
    """What metrics.json records about the teacher logits a training read: the training split's entry, and the
    transfer texts' under `transfer`."""
    if not caches:
        return None

    def entry(cache: TeacherLogits) -> dict[str, Any]:
        return {"key": cache.key, "hit": cache.hit, "seconds": round(cache.seconds, 2), "path": str(cache.path)}

    return {**entry(caches[0]), **({"transfer": entry(caches[1])} if len(caches) > 1 else {})}
