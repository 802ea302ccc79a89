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
from slimformer.auto.study import CONSTRAINTS, DEEPER_ATTR, DROP_INTERVAL, SCREENED, WARM_START_ATTR
from slimformer.studies import BASELINE_ATTR, PRUNED_ATTR

if TYPE_CHECKING:
    import optuna


@dataclass
class Selection:
    """The trained trials, their Pareto front, the pick (None when none meets the budget) and the closest."""

    complete: list[Any]
    front: list[Any]
    pick: Any | None
    closest: list[Any] = field(default_factory=list)
    why: str = ""  # how the pick was chosen among candidates validation cannot tell apart

    @property
    def finalists(self) -> list[Any]:
        """The pick, the front and the closest, each model once: two trials that built the same folder (the same
        choices, drawn twice) are one finalist, the first of them."""
        ordered = ([self.pick] if self.pick is not None else []) + [*self.front, *self.closest]
        unique: dict[str, Any] = {}
        for trial in ordered:
            unique.setdefault(trial.user_attrs.get("folder") or f"trial-{trial.number}", trial)
        return list(unique.values())


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.user_attrs.get(CONSTRAINTS, [1.0]))


def pareto_front(trials: list[Any]) -> list[Any]:
    """Trials no other trial beats on both validation accuracy and speed-up (higher is better on both), most
    accurate first. Speed-ups, each timed turn about with the teacher, not raw p50s: those, timed minutes apart,
    move with the machine (the same key as the pick's tie-break)."""
    front = []
    for t in trials:
        acc, speedup = t.value, t.user_attrs["speedup"]
        dominated = any(
            o.value >= acc
            and o.user_attrs["speedup"] >= speedup
            and (o.value > acc or o.user_attrs["speedup"] > speedup)
            for o in trials
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: (-t.value, -t.user_attrs["speedup"]))


def select(study: optuna.Study, config: AutoConfig) -> Selection:
    """The most accurate trial on validation that meets the budget; else the closest ones."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "speedup" in t.user_attrs]
    front = pareto_front(complete)
    meets = sorted((t for t in complete if feasible(t)), key=lambda t: (-t.value, -t.user_attrs["speedup"]))
    closest = sorted(complete, key=lambda t: (max(t.user_attrs[CONSTRAINTS]), -t.value))
    pick, why = prefer_faster_among_ties(meets)
    return Selection(complete=complete, front=front, pick=pick, closest=closest, why=why)


def prefer_faster_among_ties(meets: list[Any]) -> tuple[Any | None, str]:
    """The pick among the trials that meet the budget (sorted most accurate first): the most accurate one,
    unless validation cannot tell it from others: then the fastest (and smallest) of those whose paired drop
    interval overlaps the most accurate one's. Fastest by speed-up, each timed turn about with the teacher: raw
    p50s timed minutes apart move with the machine. Returns the pick and, when that rule moved it, why."""
    if not meets:
        return None, ""
    best = meets[0]
    best_interval = best.user_attrs.get(DROP_INTERVAL)
    if best_interval is None:
        return best, ""
    tied = [t for t in meets if _overlaps(t.user_attrs.get(DROP_INTERVAL), best_interval)]
    pick = min(tied, key=lambda t: (-t.user_attrs["speedup"], t.user_attrs.get("size_mb", 0.0)))
    if pick is best:
        return best, ""
    ours, theirs = pick.user_attrs[DROP_INTERVAL], best_interval
    return pick, (
        f"trial {pick.number} was picked over the most accurate, trial {best.number}: on the "
        f"{theirs['rows']} validation rows their drops cannot be told apart (90 % intervals "
        f"{ours['low']:+.2f}..{ours['high']:+.2f} and {theirs['low']:+.2f}..{theirs['high']:+.2f} points), "
        f"and it is faster ({pick.user_attrs['speedup']:.1f}x against {best.user_attrs['speedup']:.1f}x the teacher)"
    )


def interval_text(interval: dict[str, Any] | None) -> str:
    return f"{interval['low']:+.2f}..{interval['high']:+.2f}" if interval else ""


def _overlaps(interval: dict[str, Any] | None, best: dict[str, Any]) -> bool:
    """Whether a trial's drop interval reaches into the most accurate trial's (validation cannot separate them)."""
    return interval is not None and interval["low"] <= best["high"]


def final_benchmark(
    teacher: Path, selection: Selection, data: Any, config: AutoConfig, work: Path | None = None
) -> dict[str, Any]:
    """Teacher and finalists side by side on the test split, in the benchmark's interleaved rounds; timed while
    other processes were busy, the speed-ups are measured again as the search measures them
    (:func:`correct_for_load`)."""
    from slimformer.benchmark import BenchmarkConfig, benchmark_models
    from slimformer.metrics import paired_drop_interval
    from slimformer.timing import is_busy

    finalists = selection.finalists[: config.final_candidates]
    bench = BenchmarkConfig(latency_samples=max(config.latency_queries, 200), split="test", rounds=5)
    models = [teacher, *(Path(t.user_attrs["folder"]) for t in finalists)]
    report = benchmark_models(models, data, bench, keep_rows=True)
    teacher_correct = report["results"][0].pop("correct_rows")
    report["results"][0]["model"] = "teacher"
    report["results"][0]["stage"] = "teacher"
    for result, trial in zip(report["results"][1:], finalists, strict=True):
        result["model"] = f"trial-{trial.number}"
        result["stage"] = "auto"
        result["trial"] = trial.number
        correct = result.pop("correct_rows")  # the same test rows as the teacher's: a paired interval
        result[DROP_INTERVAL] = paired_drop_interval(teacher_correct, correct, config.max_accuracy_drop)
    if is_busy(report["environment"].get("others_cpu")):
        correct_for_load(report, teacher, finalists, data, config, work)
    return report


def correct_for_load(
    report: dict[str, Any], teacher: Path, finalists: list[Any], data: Any, config: AutoConfig, work: Path | None
) -> None:
    """Replace the benchmark's p50s, timed while other processes were busy, by load-proof ones. A steady load on one
    of the cores slows the 2-thread PyTorch teacher 2-3x and a 1-thread candidate hardly at all, so the side-by-side
    ratios read too high. Each finalist is timed again turn about with the teacher at the candidate's thread count
    (:func:`slimformer.auto.candidate.measure`, the search's clock, with the teacher's quiet thread scaling
    remembered in `work`); the teacher's p50 becomes that clock's estimate of it at its own threads (the median over
    the finalists) and each finalist's p50 the teacher's over its speed-up. The timed values are kept as
    `loaded_p50_ms`, and `environment.load_corrected` says so."""
    from slimformer.auto.candidate import SCALING_FILE, TeacherClock, measure
    from slimformer.data import column
    from slimformer.envelope import model_key
    from slimformer.timing import median_ms

    clock = TeacherClock(
        teacher, model_key(teacher), work / SCALING_FILE if work else None, turn_s=config.timing_turn_s
    )
    texts = column(data.test, "text")[: config.latency_queries]
    measured = [measure(Path(t.user_attrs["folder"]), texts, t.params.get("threads"), clock) for t in finalists]
    teacher_p50 = round(median_ms([m["reference_p50_ms"] for m in measured]), 4)
    results = report["results"]
    for result, timing in zip(results, [None, *measured], strict=True):
        latency = result["latency_ms"]
        result["loaded_p50_ms"] = latency["p50"]
        speedup = 1.0 if timing is None else timing["speedup_interval"]["speedup"]
        latency["p50"] = round(teacher_p50 / speedup, 4)
        if timing is not None:
            result["load_corrected"] = {
                "speedup_interval": timing["speedup_interval"],
                "others_cpu": timing["others_cpu"],
                "single_thread_bound": "single_thread_bound" in timing,
            }
    report["environment"]["load_corrected"] = True


def verdict(row: dict[str, Any] | None, teacher_row: dict[str, Any], config: AutoConfig) -> dict[str, Any]:
    """Does the benchmarked `row` (test split) meet the budget and the accuracy tolerance?"""
    from slimformer.auto.study import violations

    if row is None:
        return {"met": False, "checks": {}}
    drop = 100 * (teacher_row["accuracy"] - row["accuracy"])
    over = violations(row["p50_ms"], row["size_mb"], drop, teacher_row["p50_ms"], config)
    checks = {name: value <= 0 for name, value in over.items()}
    outcome: dict[str, Any] = {"met": all(checks.values()), "checks": checks}
    if row.get(DROP_INTERVAL):  # how sure the test rows make the accuracy check
        outcome["confidence"] = row[DROP_INTERVAL]["p_within_tolerance"]
    return outcome


def origin(attrs: dict[str, Any]) -> str:
    """Why an enqueued trial was tried ("" for one the sampler proposed)."""
    if attrs.get(BASELINE_ATTR):
        return str(attrs[BASELINE_ATTR])
    if DEEPER_ATTR in attrs:
        return f"the packaged recipe's choices at {attrs[DEEPER_ATTR]} layers"
    return "from an earlier study's Pareto front" if attrs.get(WARM_START_ATTR) else ""


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
                "baseline": bool(attrs.get(BASELINE_ATTR)),  # the packaged recipe's choices
                "state": state,
                "params": dict(t.params),
                "validation_accuracy": t.value if t.state.name == "COMPLETE" else None,  # pruned: a mid-run value
                "accuracy_drop_points": attrs.get("accuracy_drop_points"),
                "drop_interval": interval_text(attrs.get(DROP_INTERVAL)),
                "validation_in_scope": attrs.get("validation_in_scope"),
                "validation_oos_recall": attrs.get("validation_oos_recall"),
                "p50_ms": attrs.get("p50_ms", (attrs.get("screen") or {}).get("p50_ms")),
                "size_mb": attrs.get("size_mb", (attrs.get("screen") or {}).get("size_mb")),
                "speedup": attrs.get("speedup", (attrs.get("screen") or {}).get("speedup")),
                "meets_budget": feasible(t) if t.state.name == "COMPLETE" else False,
                "note": attrs.get(SCREENED)
                or attrs.get("error")
                or attrs.get(PRUNED_ATTR)
                or (f"retry of trial {attrs['retry_of']}" if "retry_of" in attrs else "")
                or origin(attrs),
                "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
                "worker": attrs.get("worker"),
            }
        )
    return rows
