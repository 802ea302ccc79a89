"""The Optuna study that `slimformer search` and `slimformer auto` share: written once, used by both.

- :class:`DistillRanges`: the distillation search space (epochs, alpha, temperature, learning rate), one set of
  config fields both commands inherit, and :func:`suggest_distillation` that samples it.
- :func:`open_study`: create or join a study in RDB storage (SQLite file or PostgreSQL) with a seeded TPE sampler,
  a median pruner and worker heartbeats (a worker that dies has its trial failed and run again).
- :func:`requeue_abandoned`: trials a killed process left RUNNING are failed and their parameters queued again.
- :data:`BASELINE_ATTR`: the user attribute of the enqueued baseline trial, which the pruner never stops.

`search` is the fixed-shape case (the student's depth is given, or one of a few choices); `auto` adds the shape.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slimformer.config import option
from slimformer.errors import ConfigError

if TYPE_CHECKING:
    import optuna

PRUNED_ATTR = "pruned_because"  # user attribute: why the pruner stopped a trial
BASELINE_ATTR = "baseline"  # user attribute of the enqueued baseline trial (the pruner leaves it alone)
HEARTBEAT_SECONDS = 30  # a worker beats this often; a trial silent for 3 beats is failed and run again


@dataclass
class DistillRanges:
    """The distillation search space, inclusive (low, high) ranges: config fields of `search` and `auto`."""

    epochs_range: tuple[int, int] = option((2, 6), "Distillation epochs (inclusive range).")
    alpha_range: tuple[float, float] = option((0.2, 0.9), "Weight of the hard-label loss.")
    temperature_range: tuple[float, float] = option((2.0, 12.0), "Distillation temperature.")
    learning_rate_range: tuple[float, float] = option((5e-5, 5e-4), "Peak learning rate (log scale).")

    def validate_ranges(self) -> None:
        """One-line ConfigErrors for an empty or out-of-domain range."""
        for name in ("epochs_range", "alpha_range", "temperature_range", "learning_rate_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ConfigError(f"{name.replace('_', ' ')} is empty: {low} > {high}")
        if self.epochs_range[0] < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs_range[0]}")
        if self.alpha_range[0] < 0 or self.alpha_range[1] > 1:
            raise ConfigError(f"alpha range must lie in [0, 1], got {self.alpha_range}")
        if self.temperature_range[0] <= 0 or self.learning_rate_range[0] <= 0:
            raise ConfigError("temperature and learning rate ranges must be > 0")


def suggest_distillation(trial: Any, ranges: DistillRanges, epochs: tuple[int, int] | None = None) -> dict[str, Any]:
    """Sample epochs (`epochs` overrides the range, e.g. capped), alpha, temperature and learning rate (log)."""
    return {
        "epochs": trial.suggest_int("epochs", *(epochs or ranges.epochs_range)),
        "alpha": trial.suggest_float("alpha", *ranges.alpha_range),
        "temperature": trial.suggest_float("temperature", *ranges.temperature_range),
        "learning_rate": trial.suggest_float("learning_rate", *ranges.learning_rate_range, log=True),
    }


def open_study(
    url: str,
    name: str,
    *,
    seed: int,
    directions: tuple[str, ...] = ("maximize",),
    metric_names: tuple[str, ...] | None = None,
    startup_trials: int = 4,
    pruner_startup_trials: int = 2,
    pruner_warmup_epochs: int = 1,
    heartbeat_seconds: int = HEARTBEAT_SECONDS,
    pruner: Any = None,
) -> optuna.Study:
    """Create or join the study `name` in the RDB storage `url`.

    The TPE sampler is multivariate and grouped (it models a joint space, also when some trials stop before
    sampling all of it), with a constant liar so that parallel workers do not propose the same point; its seed
    is `seed` plus the trials the study already holds, so a resumed or joining sampler does not repeat them.
    The pruner is `pruner`, else a median pruner over 1-based epochs that leaves the first `pruner_warmup_epochs`
    alone. Heartbeats:
    a trial whose worker stopped beating is failed and retried with the same parameters (up to 3 times)."""
    import optuna

    from slimformer.storage import rdb_storage, trial_count

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # callers print one line per trial instead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, multivariate TPE
        storage = rdb_storage(
            url,
            heartbeat_interval=heartbeat_seconds,
            grace_period=3 * heartbeat_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
        sampler = optuna.samplers.TPESampler(
            seed=seed + trial_count(storage, name),
            n_startup_trials=startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )
        pruner = pruner or optuna.pruners.MedianPruner(
            n_startup_trials=pruner_startup_trials, n_warmup_steps=pruner_warmup_epochs + 1
        )
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=sampler,
            pruner=pruner,
            directions=list(directions),
            load_if_exists=True,
        )
        if metric_names:
            study.set_metric_names(list(metric_names))
    if [d.name.lower() for d in study.directions] != list(directions):
        raise ConfigError(f"study {name} exists with other objectives; give another --study-name")
    return study


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and, through the heartbeat callback, re-queue) trials whose worker stopped beating."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def requeue_abandoned(study: optuna.Study) -> int:
    """Fail trials left RUNNING by a killed process and queue their parameters again (a baseline stays the
    baseline). Only safe when no other process can be working on the study (the default SQLite file, before
    this run's workers start). Returns how many were re-queued."""
    from optuna.trial import TrialState

    abandoned = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in abandoned:
        study.tell(trial.number, state=TrialState.FAIL)
        attrs: dict[str, Any] = {"retry_of": trial.number}
        if BASELINE_ATTR in trial.user_attrs:
            attrs[BASELINE_ATTR] = trial.user_attrs[BASELINE_ATTR]
        study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
    return len(abandoned)
