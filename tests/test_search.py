"""Optuna search over distillation settings: resuming, the teacher running once, pruning, Pareto front, errors."""

from __future__ import annotations

import csv
import functools
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from slimformer.errors import ConfigError
from tests.test_distill import _all_texts, build_tiny_bert

TRAIN_ROWS = 40


pytestmark = pytest.mark.usefixtures("private_cache_one_thread")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, clinc_slice) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("teacher"), _all_texts(clinc_slice), clinc_slice.labels, layers=4)


@pytest.fixture()
def teacher_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows the 4-layer teacher's forward sees (students here have fewer layers)."""
    from transformers import BertForSequenceClassification

    rows: list[int] = []
    original = BertForSequenceClassification.forward

    @functools.wraps(original)  # the Trainer reads `labels` from the forward's signature
    def counting_forward(self, input_ids=None, *args, **kwargs):
        if self.config.num_hidden_layers == 4:
            rows.append(int(input_ids.shape[0]))
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", counting_forward)
    return rows


def _config(**overrides):
    from slimformer.search import SearchConfig

    base = dict(
        student_layers=2,
        trials=2,
        epochs_range=(1, 1),
        learning_rate_range=(1e-4, 1e-3),
        max_train_samples=TRAIN_ROWS,
        latency_queries=5,
    )
    return SearchConfig(**{**base, **overrides})


def test_teacher_runs_once_and_the_search_resumes(
    teacher_dir: Path, clinc_slice, tmp_path: Path, teacher_rows: list[int]
) -> None:
    from slimformer.distill import DistillConfig, distill
    from slimformer.models import load_classifier
    from slimformer.search import search

    two_epochs = distill(
        teacher_dir,
        tmp_path / "distilled",
        DistillConfig(student_layers=2, epochs=2, max_train_samples=TRAIN_ROWS),
        clinc_slice,
    )
    assert len(two_epochs["history"]) == 2
    assert sum(teacher_rows) == TRAIN_ROWS

    output = tmp_path / "search"
    first = search(teacher_dir, output, _config(trials=2), clinc_slice)
    assert first["trials"] == {"complete": 2}
    assert sum(teacher_rows) == TRAIN_ROWS  # two trials later, still once per example
    study_name = first["study_name"]
    storage = f"sqlite:///{output.resolve() / 'study.db'}"
    assert first["storage"] == storage

    optuna.load_study(study_name=study_name, storage=storage).ask()  # as if a run was killed mid-trial
    second = search(teacher_dir, output, _config(trials=3), clinc_slice)
    assert second["trials"] == {"complete": 3, "fail": 1}  # the stale trial is failed, one new one runs
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(states=[TrialState.COMPLETE])
    assert [t.number for t in trials] == [0, 1, 3]
    assert all(t.user_attrs["teacher_logits_hit"] is True for t in trials)
    assert sum(teacher_rows) == TRAIN_ROWS

    # the first trial of a new study is the default alpha/T: the baseline the search must beat
    assert trials[0].params["alpha"] == 0.5 and trials[0].params["temperature"] == 2
    assert second["baseline_trial"]["params"] == trials[0].params
    best_params = json.loads((output / "best_params.json").read_text())
    assert best_params["trial"] == second["best_trial"]
    assert best_params["values"]["validation_accuracy"] == max(t.value for t in trials)
    with (output / "trials.csv").open() as handle:
        assert [row["state"] for row in csv.DictReader(handle)] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert (output / "optimization_history.png").stat().st_size > 1000
    assert [p.name for p in (output / "trials").iterdir()] == [f"trial-{second['best_trial']}"]
    best_model = json.loads((output / "best_model" / "metrics.json").read_text())
    assert best_model["stage"] == "distill" and best_model["search"]["trial"] == second["best_trial"]
    assert best_model["validation"]["accuracy"] == best_params["values"]["validation_accuracy"]
    assert load_classifier(output / "best_model").config.num_hidden_layers == 2

    # nothing left to run; the best trial's folder is gone, so its parameters are re-trained
    shutil.rmtree(output / "trials")
    third = search(teacher_dir, output, _config(trials=3), clinc_slice)
    assert len(optuna.load_study(study_name=study_name, storage=storage).trials) == 4
    assert third["best_params"] == second["best_params"]
    assert (output / "best_model" / "model.safetensors").is_file()
    assert sum(teacher_rows) == TRAIN_ROWS


def test_accuracy_latency_gives_a_pareto_front(teacher_dir: Path, clinc_slice, tmp_path: Path) -> None:
    from slimformer.search import search

    metrics = search(
        teacher_dir,
        tmp_path / "s",
        _config(student_layers=None, layers_choices=(1, 2), objective="accuracy,latency"),
        clinc_slice,
    )
    assert len(metrics["best_values"]) == 2 and metrics["best_values"][1] > 0
    front = json.loads((tmp_path / "s" / "pareto_front.json").read_text())
    assert front and all({"validation_accuracy", "p50_ms", "params"} <= set(row) for row in front)
    assert front[0]["trial"] == metrics["best_trial"]
    assert (tmp_path / "s" / "pareto_front.png").is_file()
    kept = {p.name for p in (tmp_path / "s" / "trials").iterdir()}
    assert kept == {f"trial-{row['trial']}" for row in front}


def test_pruning_callback_reports_each_epoch_and_stops_the_trial() -> None:
    from slimformer.search import OptunaPruningCallback

    class FakeTrial:
        def __init__(self, prune: bool, baseline: bool = False) -> None:
            self.prune, self.reports = prune, []
            self.user_attrs = {"baseline": True} if baseline else {}
            self.study = SimpleNamespace(pruner=optuna.pruners.MedianPruner())

        def report(self, value: float, step: int) -> None:
            self.reports.append((value, step))

        def should_prune(self) -> bool:
            return self.prune

        def set_user_attr(self, key: str, value: object) -> None:
            self.user_attrs[key] = value

    control = SimpleNamespace(should_training_stop=False)
    keep = FakeTrial(prune=False)
    OptunaPruningCallback(keep).on_evaluate(None, SimpleNamespace(epoch=2.0), control, {"eval_accuracy": 0.7})
    assert keep.reports == [(0.7, 2)] and control.should_training_stop is False
    OptunaPruningCallback(keep).on_evaluate(None, SimpleNamespace(epoch=3.0), control, {"eval_loss": 1.0})
    assert keep.reports == [(0.7, 2)]  # no accuracy, nothing to report

    stop = FakeTrial(prune=True)
    with pytest.raises(optuna.TrialPruned):
        OptunaPruningCallback(stop).on_evaluate(None, SimpleNamespace(epoch=1.0), control, {"eval_accuracy": 0.1})
    assert stop.reports == [(0.1, 1)] and control.should_training_stop is True
    assert stop.user_attrs["pruned_because"] == (  # it says why
        "validation accuracy 0.1000 at epoch 1: below the median of earlier trials at this epoch"
    )

    # the default-parameter trial is what the search is compared with: it is never cut short
    baseline, control = FakeTrial(prune=True, baseline=True), SimpleNamespace(should_training_stop=False)
    OptunaPruningCallback(baseline).on_evaluate(None, SimpleNamespace(epoch=1.0), control, {"eval_accuracy": 0.1})
    assert baseline.reports == [(0.1, 1)] and control.should_training_stop is False


def test_an_interrupted_baseline_trial_is_enqueued_again() -> None:
    from slimformer.search import _baseline_missing
    from slimformer.search_results import baseline as _baseline

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    assert _baseline_missing(study)
    study.enqueue_trial({"alpha": 0.5}, user_attrs={"baseline": True})
    assert not _baseline_missing(study)  # waiting in the queue
    interrupted = study.ask()
    assert interrupted.user_attrs == {"baseline": True}
    study.tell(interrupted, state=TrialState.FAIL)  # as after Ctrl-C
    assert _baseline_missing(study) and _baseline(study) is None
    study.enqueue_trial({"alpha": 0.5}, user_attrs={"baseline": True})
    rerun = study.ask()
    study.tell(rerun, 0.9)
    assert not _baseline_missing(study)
    assert _baseline(study) == {"trial": 1, "params": {}, "values": [0.9], "test_accuracy": None}


def test_epochs_cap_and_default_trial() -> None:
    from slimformer.search import SearchConfig, _default_params

    config = SearchConfig(student_layers=3, max_epochs=3)
    assert config.epoch_bounds == (2, 3)
    assert _default_params(config) == {"epochs": 3, "alpha": 0.5, "temperature": 2.0, "learning_rate": 1e-4}
    assert SearchConfig(student_layers=3, epochs_range=(2, 6), max_epochs=4).epoch_bounds == (2, 4)


def test_search_errors(teacher_dir: Path, clinc_slice, tmp_path: Path) -> None:
    from slimformer.search import search

    with pytest.raises(ConfigError, match="exactly one"):
        _config(student="default").validate()
    with pytest.raises(ConfigError, match="objective"):
        _config(objective="latency").validate()
    with pytest.raises(ConfigError, match="alpha range"):
        _config(alpha_range=(0.0, 2.0)).validate()
    with pytest.raises(ConfigError, match="empty"):
        _config(temperature_range=(5, 2)).validate()
    with pytest.raises(ConfigError, match="storage"):
        search(teacher_dir, tmp_path / "s", _config(storage="postgresql://user@127.0.0.1:9/none"), clinc_slice)


def test_cli_search_flags(
    teacher_dir: Path, clinc_slice_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from slimformer.cli import main

    base = ["search", str(teacher_dir), "--data", str(clinc_slice_dir), "--output", str(tmp_path / "o")]
    for extra, message in (
        (["--student-layers", "2", "--alpha-range", "0"], "error: Option '--alpha-range' requires 2 arguments"),
        (["--student-layers", "2", "--epochs-range", "a", "b"], "error: Invalid value for '--epochs-range'"),
        (["--student-layers", "2", "--alpha-range", "0.8", "0.2"], "error: alpha range is empty"),
        (["--student-layers", "2", "--objective", "speed"], "error: objective must be one of"),
        ([], "error: give exactly one of"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*base, *extra])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "o").exists()


def test_search_distils_from_the_given_teacher(teacher_dir: Path, clinc_slice, tmp_path: Path) -> None:
    """`search SRC --teacher T`: the students come from SRC's layers, their soft targets from T."""
    from slimformer.distillation import model_files_hash
    from slimformer.search import search

    other_teacher = build_tiny_bert(tmp_path / "other", _all_texts(clinc_slice), clinc_slice.labels, layers=3, seed=7)
    metrics = search(teacher_dir, tmp_path / "s", _config(trials=1), clinc_slice, teacher=other_teacher)
    best = json.loads((tmp_path / "s" / "best_model" / "metrics.json").read_text())
    assert metrics["teacher"] == str(other_teacher)
    assert best["teacher_hash"] == model_files_hash(other_teacher)[:16] != model_files_hash(teacher_dir)[:16]
    assert best["student_layers_kept"] == [0, 3]  # two of the source's four layers, not of the 3-layer teacher
