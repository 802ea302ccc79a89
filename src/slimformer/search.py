"""Hyper-parameter search for distillation with Optuna: alpha, temperature, epochs and learning rate.

One trial is one :func:`slimformer.distill.distill` run, in the study `slimformer auto` uses too: one opener,
one search space and one handler for trials a killed run left (slimformer.studies); `search` is its fixed-shape
case. TPE proposes the parameters (seeded), a median pruner stops a trial whose per-epoch validation accuracy
falls below the median of earlier trials at the same epoch, and the study lives in a storage URL (an SQLite file
in the output folder by default; any URL optuna understands, e.g. postgresql://..., is passed straight through).
The study name is derived from the teacher, the data fingerprint, the student and the objective, so re-running
the same command resumes the study and only runs the trials still missing to reach `trials`. Every trial reads
the teacher's logits from the cache.

Which model ends in `best_model/`: each trial trains into `trials/trial-N/`; after every trial only the
folders of the best trial (single objective) or of the Pareto front (accuracy,latency) are kept, the others
deleted; the best one is copied to `best_model/` (no re-training). When its folder is gone (the study was
resumed from another machine's storage), the best parameters are re-trained into `best_model/`.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from slimformer.artifacts import StageResult
from slimformer.config import QUICK_MAX_EPOCHS, StageConfig, option
from slimformer.envelope import Stage, run_stage
from slimformer.errors import ConfigError
from slimformer.search_results import (
    BEST_MODEL_FOLDER,
    TRIALS_FOLDER,
    KeepBestTrialFolders,
    distill_config_of,
    say,
    write_results,
)
from slimformer.storage import printable_url
from slimformer.studies import BASELINE_ATTR, DistillRanges, fail_stale_trials, requeue_abandoned

if TYPE_CHECKING:
    import optuna

    from slimformer.data import DataSplits

OBJECTIVES = ("accuracy", "accuracy,latency")


@dataclass
class SearchConfig(DistillRanges, StageConfig):
    """Options of `slimformer search`; ranges are (low, high), inclusive."""

    accepts_teacher: ClassVar[bool] = True

    trials: int = option(8, "Total finished (complete or pruned) trials the study should hold.")
    objective: str = option("accuracy", "Or 'accuracy,latency': maximise accuracy, minimise batch-1 p50 latency.")
    storage: str | None = option(None, "Optuna storage URL (default: sqlite:///<output>/study.db)")
    study_name: str | None = option(None, "Default: derived from teacher, data, student and objective.")
    student: str | None = option(None, "Student checkpoint folder or 'default' ...")
    student_layers: int | None = option(None, "... or K evenly spaced teacher layers ...")
    layers_choices: tuple[int, ...] | None = option(None, "... or search K among these (makes latency differ)")
    # the distillation ranges (epochs, alpha, temperature, learning rate) are auto's: DistillRanges
    max_epochs: int | None = option(None, "Cap on epochs (so a search fits a time budget)")
    startup_trials: int = option(4, "Random trials before TPE models the results (optuna's 10 suits long studies)")
    enqueue_defaults: bool = option(True, "Run the default alpha/T once, unpruned (the baseline).")
    pruner_startup_trials: int = option(2, "Trials that finish before the median pruner stops anything.")
    pruner_warmup_epochs: int = option(1, "Epochs a trial always gets before it can be pruned.")
    latency_queries: int = option(50, "Validation queries timed at batch 1 for the latency objective.")
    batch_size: int = 32
    max_length: int | None = option(None, "Truncate texts to this many tokens (default: the source's, else 128).")
    seed: int = 42
    max_train_samples: int | None = option(None, "Subsample the training split (quick searches)")
    max_eval_samples: int | None = option(None, "Subsample validation and test.")
    cache_dir: str | None = option(None, "Teacher-logit cache (default: see slimformer.distill.default_cache_dir)")

    model_subdir: ClassVar[str] = BEST_MODEL_FOLDER
    writes_in_place: ClassVar[bool] = True  # the study resumes from OUTPUT/study.db

    @property
    def needs_teacher(self) -> bool:
        return True

    def quick(self) -> SearchConfig:
        return replace(self, trials=min(self.trials, 2), max_epochs=int(QUICK_MAX_EPOCHS))

    def validate(self) -> None:
        given = [x for x in (self.student, self.student_layers, self.layers_choices) if x is not None]
        if len(given) != 1:
            raise ConfigError("give exactly one of --student PATH|default, --student-layers K and --layers-choices")
        if self.trials < 1:
            raise ConfigError(f"trials must be >= 1, got {self.trials}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        self.validate_ranges()
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError(f"max epochs must be >= 1, got {self.max_epochs}")

    @property
    def epoch_bounds(self) -> tuple[int, int]:
        """The epochs range after the --max-epochs cap."""
        low, high = self.epochs_range
        if self.max_epochs is not None:
            low, high = min(low, self.max_epochs), min(high, self.max_epochs)
        return low, high

    @property
    def multi_objective(self) -> bool:
        return self.objective == "accuracy,latency"


def search(
    source: str | Path,
    output: str | Path,
    config: SearchConfig | None = None,
    data: DataSplits | None = None,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) an Optuna study of distillation settings for students of `source`, distilled from
    `teacher` (default: `source`), and write its results to `output`.

    `output` gets `study.db` (the default storage), `best_params.json`, `trials.csv`,
    `optimization_history.png`, `pareto_front.json` + `.png` (multi-objective), `best_model/` (an HF
    checkpoint with its metrics.json) and `metrics.json` ("stage": "search"). Returns those metrics.
    """
    return run_stage(STAGE, source, output, config, data, teacher)


def search_study(
    source: Path, output: Path, config: SearchConfig, data: DataSplits, teacher: Path | None = None
) -> StageResult:
    """The search stage's body: the study resumes in `output` (the envelope opens no atomic folder for it)."""
    import optuna

    from slimformer.distillation import model_files_hash
    from slimformer.models import check_classifier_fits

    teacher_path = teacher or source
    check_classifier_fits(teacher_path, data.labels)
    splits = data.subset(config.max_train_samples, config.max_eval_samples, seed=config.seed)
    output = Path(output)
    trials_dir = output / TRIALS_FOLDER
    trials_dir.mkdir(parents=True, exist_ok=True)
    for leftover in trials_dir.glob(".tmp-*"):  # a killed trial's half-written folder
        shutil.rmtree(leftover, ignore_errors=True)

    storage_url = config.storage or f"sqlite:///{output.resolve() / 'study.db'}"
    study_name = config.study_name or _study_name(model_files_hash(teacher_path), splits.fingerprint, config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed below instead
    study = _open_study(storage_url, study_name, config)
    done = _finished(study)
    remaining = max(0, config.trials - len(done))
    if config.enqueue_defaults and remaining and _baseline_missing(study):
        study.enqueue_trial(_default_params(config), user_attrs={BASELINE_ATTR: True})
    say(f"study {study_name} in {printable_url(storage_url)}: {len(done)} trial(s) finished, {remaining} to run")
    if config.multi_objective and config.layers_choices is None:
        say("note: every trial has the same architecture, so latency differs by noise; add --layers-choices")

    objective = _Objective(source, teacher_path, splits, trials_dir, config)
    if remaining:
        study.optimize(
            objective,
            n_trials=remaining,
            callbacks=[KeepBestTrialFolders(trials_dir, config), _TrialPrinter(config.trials)],
            gc_after_trial=True,
        )
    metrics = write_results(study, storage_url, source, teacher_path, splits, output, config)
    return StageResult(metrics, None)


def _study_name(teacher_hash: str, data_fingerprint: str, config: SearchConfig) -> str:
    if config.student_layers is not None:
        student = f"L{config.student_layers}"
    elif config.layers_choices is not None:
        student = "L" + "-".join(str(k) for k in config.layers_choices)
    else:
        student = "s" + hashlib.sha256(str(config.student).encode()).hexdigest()[:6]
    objective = "acc" if config.objective == "accuracy" else "acc-lat"
    return f"distill-{teacher_hash[:10]}-{data_fingerprint[:10]}-{student}-{objective}"


def _open_study(storage_url: str, study_name: str, config: SearchConfig) -> optuna.Study:
    """The study, opened as `auto` opens its own (slimformer.studies); a killed run's trials are run again."""
    from slimformer.studies import open_study

    study = open_study(
        storage_url,
        study_name,
        seed=config.seed,
        directions=("maximize", "minimize") if config.multi_objective else ("maximize",),
        metric_names=("validation_accuracy", "p50_ms") if config.multi_objective else ("validation_accuracy",),
        startup_trials=config.startup_trials,
        pruner_startup_trials=config.pruner_startup_trials,
        pruner_warmup_epochs=config.pruner_warmup_epochs,
    )
    if config.storage is None:  # the default SQLite file: no other process works on it
        if requeued := requeue_abandoned(study):
            say(f"{requeued} trial(s) left running by a killed run: failed and queued again")
    else:
        fail_stale_trials(study)  # a shared server: only trials whose worker stopped beating
    return study


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _default_params(config: SearchConfig) -> dict[str, Any]:
    """DistillConfig's defaults, clipped into the search ranges: the study's baseline trial."""
    from slimformer.distill import DistillConfig

    defaults = DistillConfig()
    low, high = config.epoch_bounds
    params = {
        "epochs": int(_clip(defaults.epochs, (low, high))),
        "alpha": _clip(defaults.alpha, config.alpha_range),
        "temperature": _clip(defaults.temperature, config.temperature_range),
        "learning_rate": _clip(defaults.learning_rate, config.learning_rate_range),
    }
    if config.layers_choices is not None:
        params["student_layers"] = max(config.layers_choices)
    return params


def _clip(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def suggest_params(trial: optuna.Trial, config: SearchConfig) -> dict[str, Any]:
    """The search space: `auto`'s distillation space (the book's num_train_epochs, alpha and temperature, plus
    the learning rate) for a fixed student shape, or one of `layers_choices`."""
    from slimformer.studies import suggest_distillation

    params = suggest_distillation(trial, config, config.epoch_bounds)
    if config.layers_choices is not None:
        params["student_layers"] = trial.suggest_categorical("student_layers", list(config.layers_choices))
    return params


class _Objective:
    """One trial: distil with the suggested parameters into trials/trial-N and score the result."""

    def __init__(
        self, source: Path, teacher_path: Path, splits: DataSplits, trials_dir: Path, config: SearchConfig
    ) -> None:
        from slimformer.data import column

        self.source = source
        self.teacher_path = teacher_path
        self.splits = splits
        self.trials_dir = trials_dir
        self.config = config
        # the same queries time every trial's model
        self.latency_texts = column(splits.validation, "text")[: config.latency_queries]

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        from slimformer.distill import distill

        params = suggest_params(trial, self.config)
        from slimformer.trial_pruning import OptunaPruningCallback

        callbacks = [] if self.config.multi_objective else [OptunaPruningCallback(trial)]
        folder = self.trials_dir / f"trial-{trial.number}"
        distill_config = distill_config_of(params, self.config)
        metrics = distill(
            self.source, folder, distill_config, self.splits, teacher=self.teacher_path, callbacks=callbacks
        )
        accuracy = metrics["validation"]["accuracy"]
        trial.set_user_attr("test_accuracy", metrics["test"]["accuracy"])
        trial.set_user_attr("train_seconds", metrics["train_seconds"])
        trial.set_user_attr("teacher_logits_hit", (metrics["teacher_logits"] or {}).get("hit"))
        if not self.config.multi_objective:
            return accuracy
        p50_ms = measure_p50_ms(folder, self.latency_texts, self.config.max_length)
        trial.set_user_attr("p50_ms", p50_ms)
        return accuracy, p50_ms


def measure_p50_ms(model_dir: str | Path, texts: list[str], max_length: int | None = None, warmup: int = 5) -> float:
    """Median batch-1 latency (ms) of a model folder over `texts`, after `warmup` untimed calls."""
    from slimformer.predictor import load
    from slimformer.timing import batch1_latencies_ms, median_ms

    predictor = load(model_dir, max_length=max_length)
    return median_ms(batch1_latencies_ms(predictor, texts, warmup))


class _TrialPrinter:
    """One line per finished trial (the Trainer's own bars show progress within a trial)."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        values = "" if trial.values is None else " / ".join(f"{v:.4f}" for v in trial.values)
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        say(
            f"trial {trial.number} ({len(_finished(study))}/{self.total}) {trial.state.name.lower()} "
            f"{values} [{params}] in {seconds:.0f} s"
        )


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _baseline_missing(study: optuna.Study) -> bool:
    """True when no default-parameter trial has finished or waits in the queue (a new study, or one whose
    baseline trial was interrupted), so the 'beats the defaults' comparison needs it enqueued (again)."""
    import optuna

    wanted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.WAITING)
    return not any(t.user_attrs.get(BASELINE_ATTR) for t in study.get_trials(deepcopy=False, states=wanted))


def __getattr__(name: str) -> Any:
    # the callback subclasses transformers' TrainerCallback: imported only when asked for (a cheap CLI start)
    if name == "OptunaPruningCallback":
        from slimformer.trial_pruning import OptunaPruningCallback

        return OptunaPruningCallback
    raise AttributeError(f"module 'slimformer.search' has no attribute {name!r}")


STAGE = Stage(
    "search",
    SearchConfig,
    search_study,
    "Search distillation settings with Optuna (resumable); the best student lands in OUTPUT/best_model.",
)
