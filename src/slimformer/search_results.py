"""What a finished search writes: best_params.json, trials.csv, the Pareto front, plots and best_model/.

Split from :mod:`slimformer.search` (which runs the study); the search calls :func:`write_results` at the end.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.artifacts import atomic_output_dir, read_metrics, write_json, write_metrics
from slimformer.errors import SlimformerError
from slimformer.storage import printable_url
from slimformer.studies import BASELINE_ATTR

if TYPE_CHECKING:
    import optuna

    from slimformer.data import DataSplits
    from slimformer.search import SearchConfig

TRIALS_FOLDER = "trials"
BEST_MODEL_FOLDER = "best_model"


def best_trials(study: optuna.Study, config: SearchConfig) -> list[optuna.trial.FrozenTrial]:
    """The best trial first; for accuracy,latency the Pareto front sorted by accuracy then latency."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if not config.multi_objective:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: (-t.values[0], t.values[1]))


class KeepBestTrialFolders:
    """After each trial, delete the model folders of trials that are not (or no longer) the best."""

    def __init__(self, trials_dir: Path, config: SearchConfig) -> None:
        self.trials_dir = trials_dir
        self.config = config

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        keep = {f"trial-{t.number}" for t in best_trials(study, self.config)}
        for folder in self.trials_dir.glob("trial-*"):
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)


def write_results(
    study: optuna.Study,
    storage_url: str,
    source: Path,
    teacher_path: Path,
    splits: DataSplits,
    output: Path,
    config: SearchConfig,
) -> dict[str, Any]:
    """The study's results in `output` (best parameters, trials, plots, best_model/); returns the metrics."""
    front = best_trials(study, config)
    if not front:
        raise SlimformerError(f"no trial of study {study.study_name} completed (all pruned or failed)")
    best = front[0]
    write_json(
        output / "best_params.json",
        {
            "study_name": study.study_name,
            "trial": best.number,
            "params": best.params,
            "values": dict(zip(study.metric_names or ["value"], best.values, strict=False)),
        },
    )
    study.trials_dataframe().to_csv(output / "trials.csv", index=False)
    if config.multi_objective:
        write_json(
            output / "pareto_front.json",
            [
                {"trial": t.number, "validation_accuracy": t.values[0], "p50_ms": t.values[1], "params": t.params}
                for t in front
            ],
        )
    _write_plots(study, output, config)
    best_model_metrics = _save_best_model(best, study.study_name, source, teacher_path, splits, output, config)

    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    metrics = {
        "stage": "search",
        "teacher": str(teacher_path),
        "data": splits.name,
        "data_fingerprint": splits.fingerprint,
        "study_name": study.study_name,
        "storage": printable_url(storage_url),
        "objective": config.objective,
        "config": asdict(config),
        "trials": {state.name.lower(): states.count(state) for state in TrialState if states.count(state)},
        "best_trial": best.number,
        "best_params": best.params,
        "best_values": list(best.values),
        "baseline_trial": baseline(study),
        "validation": best_model_metrics["validation"],
        "test": best_model_metrics["test"],
    }
    return metrics


def baseline(study: optuna.Study) -> dict[str, Any] | None:
    """The finished default-parameter trial, for the 'beats the defaults' check."""
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(BASELINE_ATTR) and trial.values is not None:
            return {
                "trial": trial.number,
                "params": trial.params,
                "values": list(trial.values),
                "test_accuracy": trial.user_attrs.get("test_accuracy"),
            }
    return None


def _save_best_model(
    best: optuna.trial.FrozenTrial,
    study_name: str,
    source: Path,
    teacher_path: Path,
    splits: DataSplits,
    output: Path,
    config: SearchConfig,
) -> dict[str, Any]:
    from slimformer.distill import distill

    trial_folder = output / TRIALS_FOLDER / f"trial-{best.number}"
    target = output / BEST_MODEL_FOLDER
    if trial_folder.is_dir():
        with atomic_output_dir(target) as folder:
            shutil.copytree(trial_folder, folder, dirs_exist_ok=True, copy_function=_link_or_copy)
            metrics = read_metrics(folder)
    else:  # the trial ran elsewhere (shared storage) or its folder was removed: re-train its parameters
        say(f"trial {best.number}'s model folder is gone; re-training its parameters into {target}")
        metrics = distill(source, target, distill_config_of(best.params, config), splits, teacher=teacher_path)
    metrics["search"] = {
        "study_name": study_name,
        "trial": best.number,
        "params": best.params,
        "values": list(best.values),
    }
    write_metrics(target, metrics)
    return metrics


def _link_or_copy(source: str, target: str) -> None:
    # a hard link costs no space; the trial folder is only deleted, never modified
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_plots(study: optuna.Study, output: Path, config: SearchConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = optuna_plots.plot_optimization_history(
            study, target=lambda t: t.values[0], target_name="validation accuracy"
        )
        history.figure.savefig(output / "optimization_history.png", dpi=120, bbox_inches="tight")
        plt.close(history.figure)
        if config.multi_objective:
            front = optuna_plots.plot_pareto_front(study, target_names=["validation accuracy", "p50 ms"])
            front.figure.savefig(output / "pareto_front.png", dpi=120, bbox_inches="tight")
            plt.close(front.figure)


def distill_config_of(params: dict[str, Any], config: SearchConfig) -> Any:
    """The DistillConfig one trial's parameters stand for (a trial runs it; a lost best model is re-trained)."""
    from slimformer.distill import DistillConfig

    layers = params.get("student_layers", config.student_layers)
    return DistillConfig(
        student=config.student if layers is None else None,
        student_layers=layers,
        alpha=params["alpha"],
        temperature=float(params["temperature"]),
        epochs=float(params["epochs"]),
        learning_rate=params["learning_rate"],
        batch_size=config.batch_size,
        max_length=config.max_length,
        seed=config.seed,
        cache_dir=config.cache_dir,
    )


def say(message: str) -> None:
    """One line of the search's progress on stderr."""
    from slimformer.console import say as say_line

    say_line("search", message)
