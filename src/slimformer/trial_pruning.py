"""Optuna's pruner inside a Trainer run: a trial whose validation accuracy falls behind stops early."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from slimformer.studies import BASELINE_ATTR, PRUNED_ATTR

if TYPE_CHECKING:
    import optuna


class OptunaPruningCallback(TrainerCallback):
    """Reports each epoch's validation accuracy to the trial and stops training (TrialPruned) when the
    pruner says so (never for the baseline trial)."""

    def __init__(self, trial: optuna.Trial, metric: str = "eval_accuracy") -> None:
        self.trial = trial
        self.metric = metric

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        import optuna

        if not metrics or self.metric not in metrics:
            return
        epoch = round(state.epoch or 0)
        self.trial.report(metrics[self.metric], step=epoch)
        if self.trial.user_attrs.get(BASELINE_ATTR):
            return  # the default-parameter trial always runs to the end: it is what the search is compared with
        if self.trial.should_prune():
            control.should_training_stop = True
            why = getattr(self.trial.study.pruner, "reason", "below the median of earlier trials at this epoch")
            reason = f"validation accuracy {metrics[self.metric]:.4f} at epoch {epoch}: {why}"
            self.trial.set_user_attr(PRUNED_ATTR, reason)  # the progress line and the report say why
            # raising ends the trial before the model is saved and tested: a pruned trial leaves no folder
            raise optuna.TrialPruned(reason)
