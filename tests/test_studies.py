"""The Optuna study `search` and `auto` share: one opener, one search space, one handler for abandoned trials."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from slimformer.errors import ConfigError
from slimformer.studies import BASELINE_ATTR, DistillRanges, open_study, requeue_abandoned, suggest_distillation


def test_a_killed_runs_trials_are_failed_and_queued_again_baseline_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(url, "s", seed=0)
    study.enqueue_trial({"alpha": 0.5}, user_attrs={BASELINE_ATTR: True})
    abandoned = study.ask()  # running when the process was killed
    abandoned.suggest_float("alpha", 0.0, 1.0)
    other = study.ask()
    other.suggest_float("alpha", 0.0, 1.0)

    reopened = open_study(url, "s", seed=0)
    assert requeue_abandoned(reopened) == 2
    trials = reopened.get_trials(deepcopy=False)
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    waiting = reopened.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == [0, 1]
    retried_baseline = next(t for t in waiting if t.user_attrs["retry_of"] == 0)
    assert retried_baseline.user_attrs[BASELINE_ATTR] is True
    rerun = reopened.ask()  # the first queued: the baseline again, with its parameters
    assert rerun.user_attrs[BASELINE_ATTR] is True and rerun.suggest_float("alpha", 0.0, 1.0) == 0.5


def test_search_and_auto_sample_the_same_distillation_space() -> None:
    from slimformer.auto.config import AutoConfig
    from slimformer.search import SearchConfig

    auto, search = AutoConfig(min_speedup=10), SearchConfig(student_layers=2)
    names = ("epochs_range", "alpha_range", "temperature_range", "learning_rate_range")
    assert [getattr(auto, n) for n in names] == [getattr(search, n) for n in names]
    trial = optuna.trial.FixedTrial({"epochs": 4, "alpha": 0.7, "temperature": 9.0, "learning_rate": 3e-4})
    assert suggest_distillation(trial, auto) == {"epochs": 4, "alpha": 0.7, "temperature": 9.0, "learning_rate": 3e-4}
    with pytest.raises(ConfigError, match="alpha range"):
        DistillRanges(alpha_range=(0.0, 1.5)).validate_ranges()


def test_a_study_with_other_objectives_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(url, "s", seed=0)
    with pytest.raises(ConfigError, match="other objectives"):
        open_study(url, "s", seed=0, directions=("maximize", "minimize"))


def test_opening_a_study_warns_of_nothing(tmp_path: Path) -> None:
    """Every `search` and `auto` opens its study here: no argument optuna has deprecated (a FutureWarning on
    every run), and its experimental features' warnings kept out of the user's terminal."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "quiet", seed=0)
    assert study.study_name == "quiet"
    assert [str(w.message) for w in caught if "optuna" in w.filename or "optuna" in str(w.message)] == []


def test_a_progress_line_keeps_its_brackets(capfd) -> None:
    """`search` and `auto` print each trial's parameters in brackets; rich would read "[layers=5, ...]" as a
    markup tag and drop it, so the user never saw which shape a trial was."""
    from slimformer.auto.run import say as auto_say
    from slimformer.search_results import say as search_say

    auto_say("trial 1: 94.81 % [layers=5, heads_fraction=0.0] · no trial meets the budget yet")
    search_say("trial 2: [alpha=0.5, temperature=9] done")
    err = capfd.readouterr().err
    assert "auto trial 1: 94.81 % [layers=5, heads_fraction=0.0] · no trial" in " ".join(err.split())
    assert "search trial 2: [alpha=0.5, temperature=9] done" in " ".join(err.split())
