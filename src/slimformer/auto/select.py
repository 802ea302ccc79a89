"""After the search: the Pareto front, the pick (on validation only), one side-by-side benchmark on test for
the finalists and the teacher, the verdict on the budget, and `OUTPUT/model/`.

The test split is scored here and only here: every trial trained and was chosen on validation (its data has
the test split sealed, see :meth:`slimformer.data.DataSplits.without_test`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.auto.config import AutoConfig
from slimformer.auto.study import CONSTRAINTS, SCREENED
from slimformer.studies import PRUNED_ATTR

if TYPE_CHECKING:
    import optuna


@dataclass
class Selection:
    """The trained trials, their Pareto front, the pick (None when none meets the budget) and the closest."""

    complete: list[Any]
    front: list[Any]
    pick: Any | None
    closest: list[Any] = field(default_factory=list)

    @property
    def finalists(self) -> list[Any]:
        ordered = ([self.pick] if self.pick is not None else []) + [*self.front, *self.closest]
        unique: dict[int, Any] = {}
        for trial in ordered:
            unique.setdefault(trial.number, trial)
        return list(unique.values())


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.user_attrs.get(CONSTRAINTS, [1.0]))


def pareto_front(trials: list[Any]) -> list[Any]:
    """Trials no other trial beats on both validation accuracy (higher) and p50 (lower), by accuracy."""
    front = []
    for t in trials:
        acc, p50 = t.value, t.user_attrs["p50_ms"]
        dominated = any(
            o.value >= acc and o.user_attrs["p50_ms"] <= p50 and (o.value > acc or o.user_attrs["p50_ms"] < p50)
            for o in trials
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: (-t.value, t.user_attrs["p50_ms"]))


def select(study: optuna.Study, config: AutoConfig) -> Selection:
    """The most accurate trial on validation that meets the budget; else the closest ones."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "p50_ms" in t.user_attrs]
    front = pareto_front(complete)
    meets = sorted((t for t in complete if feasible(t)), key=lambda t: (-t.value, t.user_attrs["p50_ms"]))
    closest = sorted(complete, key=lambda t: (max(t.user_attrs[CONSTRAINTS]), -t.value))
    return Selection(complete=complete, front=front, pick=meets[0] if meets else None, closest=closest)


def final_benchmark(teacher: Path, selection: Selection, data: Any, config: AutoConfig) -> dict[str, Any]:
    """Teacher and finalists side by side on the test split, in the benchmark's interleaved rounds."""
    from slimformer.benchmark import BenchmarkConfig, benchmark_models

    finalists = selection.finalists[: config.final_candidates]
    bench = BenchmarkConfig(latency_samples=max(config.latency_queries, 200), split="test", rounds=5)
    report = benchmark_models([teacher, *(Path(t.user_attrs["folder"]) for t in finalists)], data, bench)
    report["results"][0]["model"] = "teacher"
    report["results"][0]["stage"] = "teacher"
    for result, trial in zip(report["results"][1:], finalists, strict=True):
        result["model"] = f"trial-{trial.number}"
        result["stage"] = "auto"
        result["trial"] = trial.number
    return report


def verdict(row: dict[str, Any] | None, teacher_row: dict[str, Any], config: AutoConfig) -> dict[str, Any]:
    """Does the benchmarked `row` (test split) meet the budget and the accuracy tolerance?"""
    from slimformer.auto.study import violations

    if row is None:
        return {"met": False, "checks": {}}
    drop = 100 * (teacher_row["accuracy"] - row["accuracy"])
    over = violations(row["p50_ms"], row["size_mb"], drop, teacher_row["p50_ms"], config)
    checks = {name: value <= 0 for name, value in over.items()}
    return {"met": all(checks.values()), "checks": checks}


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial as a table row: state, parameters, validation figures, screening outcome."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        state = "screened out" if SCREENED in attrs else t.state.name.lower()
        if attrs.get("surplus"):
            state = "surplus (not run)"
        rows.append(
            {
                "trial": t.number,
                "state": state,
                "params": dict(t.params),
                "validation_accuracy": t.value if t.state.name == "COMPLETE" else None,  # pruned: a mid-run value
                "accuracy_drop_points": attrs.get("accuracy_drop_points"),
                "p50_ms": attrs.get("p50_ms", (attrs.get("screen") or {}).get("p50_ms")),
                "size_mb": attrs.get("size_mb", (attrs.get("screen") or {}).get("size_mb")),
                "speedup": attrs.get("speedup", (attrs.get("screen") or {}).get("speedup")),
                "meets_budget": feasible(t) if t.state.name == "COMPLETE" else False,
                "note": attrs.get(SCREENED)
                or attrs.get("error")
                or attrs.get(PRUNED_ATTR)
                or (f"retry of trial {attrs['retry_of']}" if "retry_of" in attrs else ""),
                "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
                "worker": attrs.get("worker"),
            }
        )
    return rows
