"""`prune(source, output, config, data, teacher=None)`: one pruning method applied to a fine-tuned classifier,
written as a plain dense HF checkpoint (zeros where pruned, or smaller for structured pruning) plus compressed
sparse weights and `metrics.json`. Recovery training is :func:`slimformer.training.train_classifier`."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from slimformer.artifacts import Session, StageResult
from slimformer.config import MethodConfig, option, with_methods
from slimformer.envelope import Stage, run_stage
from slimformer.errors import ConfigError
from slimformer.models import save_checkpoint
from slimformer.training import SoftTargets, TrainingOptions

VOCAB_UNSEEN = ("cluster", "sign", "split")
COMPRESSED_DIR = "compressed"  # a subfolder, so a benchmark's "size on disk" of the dense folder stays honest
SPARSE_FILES = {"float32": "model.sparse.safetensors", "int8": "model.sparse-int8.safetensors"}


@dataclass
class PruneOptions(SoftTargets, TrainingOptions):
    """What every pruning method shares: recovery training (distilling from the teacher when one is given)."""

    accepts_teacher: ClassVar[bool] = True

    epochs: float = option(3.0, "Training passes (structured: recovery passes; 0 = slice only)")
    learning_rate: float = option(5e-5, "Weights' learning rate.")

    def validate(self) -> None:
        method = getattr(self, "method", "")
        if self.epochs < 0 or (self.epochs == 0 and method in ("magnitude", "movement")):
            raise ConfigError(f"epochs must be > 0 for {method} pruning, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning rate out of range: {self.learning_rate}")
        if self.batch_size < 1 or (self.max_length or 2) < 2:
            raise ConfigError("batch size must be >= 1, max length >= 2")
        self.validate_soft_targets()

    @property
    def needs_teacher(self) -> bool:
        """Recovery training distils from the teacher; vocabulary pruning does not train."""
        return getattr(self, "method", "") != "vocab" and self.alpha < 1.0


@dataclass
class MagnitudeConfig(MethodConfig):
    """Magnitude pruning: the smallest encoder weights zeroed on a cubic schedule while training."""

    method: ClassVar[str] = "magnitude"
    sparsity: float = option(0.9, "Final fraction of encoder linear weights removed (structured: FFN fraction)")
    initial_sparsity: float = option(0.0, "S_i of the cubic schedule.")
    pruning_frequency: int = option(10, "Dt: optimizer steps between mask updates.")
    pruning_start: float = option(0.1, "T0 as a fraction of the training steps.")
    pruning_end: float = option(0.7, "Last mask update as a fraction of the training steps; then train at s_f.")
    sparse_values: tuple[str, ...] = option(("float32", "int8"), "Compressed files written (float32 is exact)")

    def validate(self) -> None:
        from slimformer.prune.sparse_storage import VALUE_FORMATS

        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not 0 <= self.initial_sparsity <= self.sparsity:
            raise ConfigError(f"initial sparsity must be in [0, sparsity], got {self.initial_sparsity}")
        if self.pruning_frequency < 1:
            raise ConfigError("pruning frequency must be >= 1")
        if not 0 <= self.pruning_start <= self.pruning_end <= 1:
            raise ConfigError(f"need 0 <= pruning start <= end <= 1, got {self.pruning_start}, {self.pruning_end}")
        if unknown := set(self.sparse_values) - set(VALUE_FORMATS):
            raise ConfigError(f"unknown sparse value formats {sorted(unknown)}; use {', '.join(VALUE_FORMATS)}")


@dataclass
class MovementConfig(MagnitudeConfig):
    """Movement pruning (Sanh et al., 2020): importance scores learnt with the weights, lowest masked."""

    method: ClassVar[str] = "movement"
    scores_learning_rate: float = option(1e-2, "Movement scores' learning rate (Sanh et al. use 1e-2)")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.scores_learning_rate < 10:
            raise ConfigError(f"scores learning rate out of range: {self.scores_learning_rate}")


@dataclass
class StructuredConfig(MethodConfig):
    """Structured pruning: whole attention heads and FFN neurons sliced out (a smaller dense model)."""

    method: ClassVar[str] = "structured"
    sparsity: float = option(0.9, "Final fraction of encoder linear weights removed (structured: FFN fraction)")
    heads_fraction: float = option(0.0, "Attention heads removed per layer (saved as a slim model type)")
    ffn_fraction: float | None = option(None, "FFN neurons to remove per layer (default: `sparsity`)")
    importance: str = option("magnitude", "Unit importance: magnitude | gradient | movement.")
    importance_batches: int = option(32, "Training batches used by gradient / movement importance.")

    def validate(self) -> None:
        from slimformer.prune.structured import IMPORTANCE_METHODS

        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.importance not in IMPORTANCE_METHODS:
            raise ConfigError(f"unknown importance {self.importance!r}; use one of {', '.join(IMPORTANCE_METHODS)}")
        if self.ffn_fraction is not None and not 0 <= self.ffn_fraction < 1:
            raise ConfigError(f"FFN fraction must be in [0, 1), got {self.ffn_fraction}")
        if not 0 <= self.heads_fraction < 1:
            raise ConfigError(f"heads fraction must be in [0, 1), got {self.heads_fraction}")


@dataclass
class VocabConfig(MethodConfig):
    """Vocabulary pruning: exact embedding rows only for the tokens the training data uses."""

    method: ClassVar[str] = "vocab"
    vocab_unseen: str = option(
        "cluster", "Unseen tokens share k-means rows (cluster), keep 1-bit rows (sign) or are re-spelt (split)."
    )
    vocab_clusters: int = option(
        1024, "Cluster: centroid rows for the unseen tokens; sign: for those spelt with unfamiliar characters."
    )
    vocab_min_count: int = option(1, "Cluster, sign: tokens the training data uses fewer times count as unseen.")
    vocab_keep_frequent: int = option(0, "Split: also keep the first N vocabulary ids (most frequent pieces)")

    def validate(self) -> None:
        if self.vocab_unseen not in VOCAB_UNSEEN:
            raise ConfigError(f"vocab unseen must be one of {', '.join(VOCAB_UNSEEN)}, got {self.vocab_unseen!r}")
        if self.vocab_clusters < 1:
            raise ConfigError(f"vocab clusters must be >= 1, got {self.vocab_clusters}")
        if self.vocab_min_count < 1:
            raise ConfigError(f"vocab min count must be >= 1, got {self.vocab_min_count}")
        if self.vocab_keep_frequent < 0:
            raise ConfigError(f"vocab keep-frequent must be >= 0, got {self.vocab_keep_frequent}")


# `slimformer prune`'s config: the shared options, `method`, and every method's own fields (written once above)
PruneConfig = with_methods(
    PruneOptions,
    {  # each method's function: (model, tokenizer, splits, config, folder, teacher) -> (model, extra metrics)
        MagnitudeConfig: "slimformer.prune.stage:_magnitude",
        MovementConfig: "slimformer.prune.stage:_movement",
        StructuredConfig: "slimformer.prune.stage:_structured",
        # vocabulary pruning rewrites the tokenizer too: (source, splits, config, folder) -> (model, tokenizer, extra)
        VocabConfig: "slimformer.prune.stage:_prune_vocabulary",
    },
    "magnitude",
    "pruning",
)


def prune(
    model_dir: str | Path,
    output: str | Path,
    config: PruneConfig | None = None,
    data: Any = None,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Prune the classifier in `model_dir` with `config.method` on `data` (a DataSplits); write to `output`.

    Training methods distil from `teacher` (same labels) when one is given, through the teacher's cached
    logits. The output folder is a normal HF checkpoint (loadable by transformers and `slimformer.load`) with
    `session.json` and `metrics.json` ("stage": "prune", per-layer sparsity, dense vs compressed size,
    validation/test metrics) and, for unstructured methods, `compressed/model.sparse*.safetensors`.
    """
    return run_stage(STAGE, model_dir, output, config, data, teacher)


def prune_model(
    model_path: Path, folder: Path, config: PruneConfig, data: Any, teacher: Path | None = None
) -> StageResult:
    """The prune stage's body: prune the classifier in `model_path` with the config's method into `folder`."""
    from slimformer.artifacts import weights_size_bytes
    from slimformer.evaluation import evaluate_model
    from slimformer.models import check_classifier_fits, classifier_labels, load_classifier, load_tokenizer

    method = config.method_config()
    teacher_path = None if isinstance(method, VocabConfig) else teacher
    check_classifier_fits(model_path, data.labels)
    if teacher_path is not None:
        check_classifier_fits(teacher_path, data.labels)
    splits = data.subset(config.max_train_samples, config.max_eval_samples, seed=config.seed)
    splits = splits.in_label_order(classifier_labels(model_path) or [])
    tokenizer = load_tokenizer(model_path)
    model = load_classifier(model_path)
    started = time.perf_counter()
    input_validation = evaluate_model(model, tokenizer, splits.validation, splits, config.max_length)

    if isinstance(method, VocabConfig):  # rewrites the tokenizer too
        model, tokenizer, extra = config.method_function()(model_path, splits, config, folder)
    else:
        model, extra = config.method_function()(model, tokenizer, splits, config, folder, teacher_path)
        save_checkpoint(model, tokenizer, folder)
    metrics = _metrics(model_path, teacher_path, splits, config, started, input_validation)
    metrics.update(extra)
    metrics.setdefault("size", {}).update(
        input_weights_bytes=weights_size_bytes(model_path), dense_bytes=weights_size_bytes(folder)
    )
    if config.method in ("magnitude", "movement"):
        from slimformer.prune.magnitude import encoder_sparsity, layer_sparsity
        from slimformer.prune.sparse_storage import save_sparse

        metrics["sparsity"] = {"encoder": encoder_sparsity(model), "per_layer": layer_sparsity(model)}
        metrics["size"]["compressed"] = [
            save_sparse(folder, folder / COMPRESSED_DIR / SPARSE_FILES[values], values)
            for values in config.sparse_values
        ]
    if "validation" not in metrics:  # no training: score the pruned model here
        metrics["validation"] = evaluate_model(model, tokenizer, splits.validation, splits, config.max_length)
        metrics["test"] = (
            evaluate_model(model, tokenizer, splits.test, splits, config.max_length) if len(splits.test) else {}
        )
    metrics["accuracy_cost"] = round(input_validation["accuracy"] - metrics["validation"]["accuracy"], 4)
    return StageResult(metrics, Session(config.max_length))


def _prune_vocabulary(model_path: Path, splits: Any, config: PruneConfig, folder: Path) -> tuple[Any, Any, dict]:
    """Vocabulary pruning into `folder`; returns the pruned model, its tokenizer and the report entries."""
    from slimformer.data import column
    from slimformer.models import load_classifier, load_tokenizer
    from slimformer.prune.vocab import cluster_unseen_rows, sign_unseen_rows, write_pruned_vocabulary

    texts = column(splits.train, "text")
    if config.vocab_unseen in ("cluster", "sign"):
        rewrite = cluster_unseen_rows if config.vocab_unseen == "cluster" else sign_unseen_rows
        summary = rewrite(model_path, texts, folder, config.vocab_clusters, config.seed, config.vocab_min_count)
    else:
        summary = write_pruned_vocabulary(model_path, texts, folder, config.vocab_keep_frequent)
    return load_classifier(folder), load_tokenizer(folder), {"vocabulary": summary}


def prune_sweep(
    model_dir: str | Path,
    data: Any,
    output: str | Path,
    config: PruneConfig,
    sparsities: list[float],
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Run `prune` once per sparsity into `output/sparsity-<s>/`; write `sweep.json` and
    `accuracy_vs_sparsity.png` into `output`. Returns {"runs": [...]} with one summary per level."""
    from slimformer.artifacts import write_json

    if not sparsities:
        raise ConfigError("give at least one sparsity")
    output = Path(output)
    runs = []
    for sparsity in sparsities:
        run_dir = output / f"sparsity-{sparsity:g}"
        metrics = prune(model_dir, run_dir, replace(config, sparsity=sparsity), data, teacher)
        runs.append(
            {
                "sparsity": sparsity,
                "encoder_sparsity": encoder_reduction(metrics),
                "path": str(run_dir),
                "validation_accuracy": metrics["validation"]["accuracy"],
                "test_accuracy": metrics["test"]["accuracy"],
                "dense_bytes": metrics.get("size", {}).get("dense_bytes"),
            }
        )
    summary = {"method": config.method, "runs": runs}
    write_json(output / "sweep.json", summary)
    summary["plot"] = str(write_sparsity_plot(runs, output / "accuracy_vs_sparsity.png", config.method))
    return summary


def encoder_reduction(metrics: dict[str, Any]) -> float | None:
    """Fraction of encoder linear weights gone: zeroed (unstructured) or sliced away (structured)."""
    sparsity = metrics.get("sparsity") or {}
    return sparsity.get("encoder", sparsity.get("encoder_parameters_removed"))


def write_sparsity_plot(runs: list[dict[str, Any]], path: Path, method: str) -> Path:
    """Validation and test accuracy against the target sparsity (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda r: r["sparsity"])
    figure, axes = plt.subplots(figsize=(6, 4))
    for key, label in (("validation_accuracy", "validation"), ("test_accuracy", "test")):
        axes.plot([r["sparsity"] for r in runs], [r[key] for r in runs], marker="o", label=label)
    axes.set_xlabel("sparsity" if method != "structured" else "fraction of FFN neurons removed")
    axes.set_ylabel("accuracy")
    axes.set_title(f"{method} pruning: accuracy vs sparsity")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _structured(
    model: Any, tokenizer: Any, splits: Any, config: PruneConfig, folder: Path, teacher: Path | None
) -> tuple[Any, dict]:
    """Slice attention heads and FFN neurons by importance, then (epochs > 0) recover by distillation. A
    head-pruned model comes back as its slim class (no family's config can describe fewer heads)."""
    from slimformer.prune.structured import as_slim_model, parameter_count, prune_units, unit_importance
    from slimformer.training import tokenize_dataset

    before, encoder_before = parameter_count(model), _encoder_linear_parameters(model)
    fractions = {"ffn": config.ffn_fraction if config.ffn_fraction is not None else config.sparsity}
    if config.heads_fraction:
        fractions["heads"] = config.heads_fraction
    batches = None
    if config.importance != "magnitude":
        batches = _importance_batches(tokenize_dataset(splits.train, tokenizer, config.max_length), tokenizer, config)
    importance = unit_importance(model, config.importance, batches, kinds=tuple(fractions))
    summary: dict[str, Any] = {}
    for kind, fraction in fractions.items():
        summary.update(prune_units(model, kind, fraction, importance[kind]))
    if "heads" in fractions:
        model = as_slim_model(model)
    results = _train(model, tokenizer, splits, config, folder, teacher) if config.epochs > 0 else {}
    removed = 1 - _encoder_linear_parameters(model) / encoder_before
    summary.update(parameters_before=before, parameters_after=parameter_count(model))
    return model, {**results, "structured": summary, "sparsity": {"encoder_parameters_removed": round(removed, 4)}}


def _schedule(splits: Any, tokenizer: Any, config: PruneConfig) -> Any:
    """The cubic sparsity schedule over this run's optimizer steps (Zhu & Gupta, 2017)."""
    from slimformer.prune.schedule import CubicSchedule

    steps = math.ceil(math.ceil(len(splits.train) / config.batch_size) * config.epochs)
    return CubicSchedule.over_training(
        steps,
        config.initial_sparsity,
        config.sparsity,
        config.pruning_frequency,
        config.pruning_start,
        config.pruning_end,
    )


def _magnitude(
    model: Any, tokenizer: Any, splits: Any, config: PruneConfig, folder: Path, teacher: Path | None
) -> tuple[Any, dict]:
    """Zero the smallest encoder weights on the cubic schedule while training."""
    from slimformer.prune.magnitude import MagnitudePruningCallback

    schedule = _schedule(splits, tokenizer, config)
    callback = MagnitudePruningCallback(model, schedule)
    results = _train(model, tokenizer, splits, config, folder, teacher, [callback])
    return model, {**results, "schedule": {**asdict(schedule), "mask_updates": len(callback.updates)}}


def _movement(
    model: Any, tokenizer: Any, splits: Any, config: PruneConfig, folder: Path, teacher: Path | None
) -> tuple[Any, dict]:
    """Learn importance scores with the weights (Sanh et al., 2020); mask the lowest on the cubic schedule."""
    import torch

    from slimformer.prune.movement import MovementPruningCallback, add_movement_masks, bake_masks, score_parameters

    masks = add_movement_masks(model)
    scores = score_parameters(model)

    def score_optimizer(trainer: Any) -> None:
        # the Trainer's own weight-decay grouping for the weights, plus the movement scores at their own rate
        score_ids = {id(p) for p in scores}
        decay = set(trainer.get_decay_parameter_names(model))
        weights = [(n, p) for n, p in model.named_parameters() if id(p) not in score_ids and p.requires_grad]
        trainer.optimizer = torch.optim.AdamW(
            [
                {"params": [p for n, p in weights if n in decay], "weight_decay": config.weight_decay},
                {"params": [p for n, p in weights if n not in decay], "weight_decay": 0.0},
                {"params": scores, "lr": config.scores_learning_rate, "weight_decay": 0.0},
            ],
            lr=config.learning_rate,
        )

    schedule = _schedule(splits, tokenizer, config)
    callback = MovementPruningCallback(masks, schedule)
    results = _train(model, tokenizer, splits, config, folder, teacher, [callback], score_optimizer)
    bake_masks(model)
    return model, {**results, "schedule": asdict(schedule)}


# a pruning method is one config class (its options; listed in PruneConfig above), one function
# (model, tokenizer, splits, config, folder, teacher) -> (model, report entries) and one line here, keyed by the
# config's type (vocabulary pruning rewrites the tokenizer too, so it has its own path: _prune_vocabulary)


def _train(
    model: Any,
    tokenizer: Any,
    splits: Any,
    config: PruneConfig,
    folder: Path,
    teacher: Path | None,
    callbacks: Sequence[Any] = (),
    configure: Any = None,
) -> dict[str, Any]:
    """Recovery training through the one training loop (distilling from `teacher` when given); returns the
    validation / test / history entries of metrics.json."""
    from slimformer.training import train_classifier

    distillation = config.distillation(teacher) if teacher is not None else None
    result = train_classifier(
        model, tokenizer, splits, config, folder / "trainer", distillation, callbacks=callbacks, configure=configure
    )
    return result.metrics()


def _encoder_linear_parameters(model: Any) -> int:
    from slimformer.prune.magnitude import encoder_linears

    return sum(layer.weight.numel() for layer in encoder_linears(model).values())


def _importance_batches(train_set: Any, tokenizer: Any, config: PruneConfig) -> list[dict]:
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    shuffled = train_set.shuffle(seed=config.seed)
    count = min(len(shuffled), config.importance_batches * config.batch_size)
    rows = [shuffled[i] for i in range(count)]
    return [collate(rows[i : i + config.batch_size]) for i in range(0, count, config.batch_size)]


def _metrics(
    model_path: Path, teacher: Path | None, splits: Any, config: PruneConfig, started: float, input_validation: dict
) -> dict:
    return {
        "stage": "prune",
        "method": config.method,
        "base_model": str(model_path),
        "teacher": str(teacher) if teacher else None,
        "data": splits.name,
        "data_fingerprint": splits.fingerprint,
        "config": asdict(config),
        "seconds": round(time.perf_counter() - started, 1),
        "input_validation": input_validation,
    }


STAGE = Stage(
    "prune",
    PruneConfig,
    prune_model,
    "Prune a classifier: magnitude or movement (cubic schedule), structured (heads, FFN neurons), vocabulary.",
)
