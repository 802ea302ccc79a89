"""`slimformer distill`: a small student learns from a fine-tuned teacher's logits (Hinton et al., 2015).

The student is a checkpoint the user names, or is built from K evenly spaced layers of the source model
(:mod:`slimformer.students`). Training is :func:`slimformer.training.train_classifier` over the teacher's cached
logits (:mod:`slimformer.distillation`): the teacher never runs inside the training loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from slimformer.artifacts import Session, StageResult, read_metrics
from slimformer.config import option
from slimformer.envelope import Stage, run_stage
from slimformer.errors import ConfigError
from slimformer.layer_losses import LAYER_MAPS, LayerLosses
from slimformer.models import save_checkpoint
from slimformer.training import SoftTargets, TrainingOptions
from slimformer.transfer import parse_augmentations

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from slimformer.data import DataSplits


@dataclass
class DistillConfig(SoftTargets, TrainingOptions):
    """Options of `slimformer distill`; give exactly one of `student` and `student_layers`."""

    accepts_teacher: ClassVar[bool] = True

    student: str | None = option(None, "Student checkpoint folder, or 'default' (the packaged MiniLM-L6 body).")
    student_layers: int | None = option(None, "Or: build the student from K evenly spaced layers of the source.")
    first_kept_layer: int = option(0, "The K layers are evenly spaced from this source layer to the last (0: first).")
    group_by_length: bool = option(True, "Batch texts of similar length: far less padding, ~2x faster on CPU.")
    cache_dir: str | None = option(None, "Teacher-logit cache folder (default: $SLIMFORMER_CACHE_DIR or ~/.cache).")
    hidden_weight: float = option(
        0.0, "Weight of the hidden-state MSE (student layers vs mapped teacher layers; 0 = off; teacher runs live)."
    )
    attention_weight: float = option(
        0.0, "Weight of MiniLMv2's attention relations (Q-Q, K-K, V-V KL of the last layer; 0 = off; teacher live)."
    )
    embedding_weight: float = option(0.0, "Weight of the embedding-output MSE (0 = off; the teacher runs live).")
    layer_map: str = option("uniform", "Which teacher layer each student layer learns: uniform | last (the last K).")
    attention_layer: int = option(-1, "The teacher layer whose attention relations the student's last layer learns.")
    relation_heads: int = option(12, "Relation heads the attention relations are split into (divides both widths).")
    unlabeled: str | None = option(
        None, "File of unlabelled in-domain texts (one a line, or a 'text' column) distilled on with teacher targets."
    )
    augment: str = option(
        "", "Augmented copies of the training texts, teacher targets only: mask,delete,swap,mix,replace."
    )
    augment_copies: int = option(1, "Augmented texts per training text and method.")
    dropout: float | None = option(
        None,
        "The student's dropout while it distils (0: off, so it matches the teacher's eval-mode targets; "
        "default: the source's own). The saved config keeps the source's.",
    )

    @property
    def needs_teacher(self) -> bool:
        return self.alpha < 1.0

    def validate(self) -> None:
        if (self.student is None) == (self.student_layers is None):
            raise ConfigError("give exactly one of --student PATH|default and --student-layers K")
        if self.student_layers is not None and self.student_layers < 1:
            raise ConfigError(f"student layers must be >= 1, got {self.student_layers}")
        if self.first_kept_layer < 0:
            raise ConfigError(f"the first kept layer must be >= 0, got {self.first_kept_layer}")
        self.validate_soft_targets()
        for name in ("hidden_weight", "attention_weight", "embedding_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if self.layer_map not in LAYER_MAPS:
            raise ConfigError(f"layer map must be one of {', '.join(LAYER_MAPS)}, got {self.layer_map!r}")
        if self.relation_heads < 1:
            raise ConfigError(f"relation heads must be >= 1, got {self.relation_heads}")
        if self.augment_copies < 1:
            raise ConfigError(f"augment copies must be >= 1, got {self.augment_copies}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        parse_augmentations(self.augment)
        learns_more = self.layer_losses().active or self.unlabeled or self.augment
        if learns_more and self.alpha >= 1:
            raise ConfigError("layer losses, --unlabeled and --augment learn from the teacher: they need alpha < 1")
        self.validate_training_options()

    def layer_losses(self) -> LayerLosses:
        """The intermediate-layer losses these options ask for."""
        return LayerLosses(
            hidden=self.hidden_weight,
            attention=self.attention_weight,
            embedding=self.embedding_weight,
            layer_map=self.layer_map,
            attention_layer=self.attention_layer,
            relation_heads=self.relation_heads,
        )


def distill(
    source: str | Path,
    output: str | Path,
    config: DistillConfig | None = None,
    data: DataSplits | None = None,
    teacher: str | Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Distil `teacher` (default: `source`) into a student on `data`; write an HF checkpoint to `output`.

    With `student_layers` the student is built from `source`'s own layers. The folder gets the student, its
    tokenizer, `session.json` (the truncation length) and `metrics.json`: the config, per-epoch validation
    history, validation and test metrics, train seconds and the teacher-logit cache entry. `callbacks` go to
    the Trainer (the search's pruning). Returns the metrics.
    """
    return run_stage(STAGE, source, output, config, data, teacher, callbacks=callbacks)


def distill_student(
    source: Path,
    folder: Path,
    config: DistillConfig,
    data: DataSplits,
    teacher: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> StageResult:
    """The distill stage's body: build or load the student, train it against the teacher, save it in `folder`."""
    from transformers import set_seed

    from slimformer.distillation import model_files_hash
    from slimformer.models import check_classifier_fits, fit_max_length, resolve_model_path
    from slimformer.students import build_student_from_teacher, set_dropout
    from slimformer.training import train_classifier

    teacher_path = teacher or source
    check_classifier_fits(teacher_path, data.labels)
    splits = data.subset(config.max_train_samples, config.max_eval_samples, seed=config.seed)
    set_seed(config.seed)

    kept_layers = None
    if config.student_layers is not None:
        check_classifier_fits(source, data.labels)
        student, tokenizer, kept_layers = build_student_from_teacher(
            source, config.student_layers, config.first_kept_layer
        )
    else:
        student_path = resolve_model_path(config.student)
        student, tokenizer = _student_checkpoint(student_path, splits.labels)
        config = replace(config, max_length=fit_max_length(student_path, config.max_length))
    splits = splits.in_label_order([student.config.id2label[i] for i in range(student.config.num_labels)])
    if config.dropout is not None:
        set_dropout(student, config.dropout)
    distillation = config.distillation(
        teacher_path,
        cache_dir=config.cache_dir,
        layers=config.layer_losses(),
        transfer_texts=transfer_texts(config, splits, tokenizer, student.get_input_embeddings().weight, teacher_path),
    )
    result = train_classifier(
        student, tokenizer, splits, config, folder / "trainer", distillation=distillation, callbacks=callbacks
    )
    save_checkpoint(student, tokenizer, folder)
    metrics = {
        "teacher": str(teacher_path),
        "teacher_hash": model_files_hash(teacher_path)[:16],
        "teacher_test_accuracy": (read_metrics(teacher_path).get("test") or {}).get("accuracy"),
        "student": config.student or f"{config.student_layers} layers of {source}",
        "student_layers_kept": kept_layers,
        "num_parameters": sum(p.numel() for p in student.parameters()),
        "data": splits.name,
        "data_fingerprint": splits.fingerprint,
        "config": asdict(config),
        **result.metrics(),
    }
    return StageResult(metrics, Session(config.max_length))


def transfer_texts(config: DistillConfig, splits: DataSplits, tokenizer: Any, table: Any, teacher: Path) -> list[str]:
    """The unlabelled file's texts, then the augmentations of the training texts the config asks for (`table`:
    the student's input embeddings, whose nearest words `replace` draws from; `teacher`: whose logits over the
    training texts pick `mix-near`'s partners)."""
    from slimformer.data import column
    from slimformer.transfer import augment_for_model, near_partners, read_unlabeled

    texts = read_unlabeled(config.unlabeled) if config.unlabeled else []
    if config.augment:
        train = column(splits.train, "text")
        near = near_partners(config.augment, teacher, splits, config.max_length, config.cache_dir)
        texts += augment_for_model(train, config.augment, config.augment_copies, config.seed, tokenizer, table, near)
    return texts


def _student_checkpoint(path: Path, labels: list[str]) -> tuple[Any, Any]:
    """A student checkpoint and its tokenizer; a base body gets a fresh head for the data's labels."""
    from slimformer.models import check_classifier_fits, classifier_labels, load_classifier, load_tokenizer

    if classifier_labels(path) is None:
        return load_classifier(path, labels=labels), load_tokenizer(path)
    check_classifier_fits(path, labels)
    return load_classifier(path), load_tokenizer(path)


STAGE = Stage(
    "distill",
    DistillConfig,
    distill_student,
    "Distil a student (from the source's own layers, or a checkpoint) from the teacher's cached logits.",
)
