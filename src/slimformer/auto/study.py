"""The study behind `slimformer auto`: Optuna over RDB storage, one or many workers, heartbeats, resumable.

Sampler: TPE, constrained (``Trial.set_constraint``: the budget and the accuracy tolerance, each ≤ 0 when met)
and maximising validation accuracy. TPE rather than NSGA-II because each trial costs minutes of training: TPE
models a mixed categorical / integer / log-float space from a handful of trials, where a genetic algorithm
needs populations of dozens. ``multivariate`` + ``group`` model the joint shape (depth × heads × FFN × INT8
method × threads), including the trials screened out before their training parameters were sampled;
``constant_liar`` keeps parallel workers from proposing the same point. The Pareto front (accuracy vs speed-up)
is computed over the finished trials for the report.

Trial states: COMPLETE (trained and measured), PRUNED with user attr ``screened_out`` (the untrained shape missed
the budget: no training spent), PRUNED by the median pruner (weak per-epoch validation accuracy), FAIL (a
worker died: its heartbeat stopped, the trial is failed and re-queued with the same parameters).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.artifacts import read_json_cache
from slimformer.auto.candidate import (
    MEASURE_ROUNDS,
    StageCache,
    build_chain,
    measure,
    student_base,
    suggest_shape,
    suggest_training,
)
from slimformer.auto.config import AutoConfig
from slimformer.errors import SlimformerError
from slimformer.studies import BASELINE_ATTR, PRUNED_ATTR, fail_stale_trials
from slimformer.timing import is_busy

if TYPE_CHECKING:
    import optuna

SCREENED = "screened_out"
SECONDS_ATTR = "seconds"  # user attribute: seconds spent screening, training and timing the trial
DROP_INTERVAL = "drop_interval"  # paired bootstrap of the validation drop against the teacher (points)
CONSTRAINTS = "constraints"
DEEPER_ATTR = "deeper_recipe"  # user attribute of an enqueued trial of the recipe's choices at more layers
WARM_START_ATTR = "warm_start"  # user attribute of a trial enqueued from an earlier study's Pareto front


class SurplusTrial(Exception):
    """Another worker already started the last trial the study needs: this one ends unrun."""


class CandidateFailed(Exception):
    """A stage failed on this candidate (e.g. an ONNX Runtime quantizer limit): the trial fails, the search goes on."""


MAX_FAILED_IN_A_ROW = 3


def open_study(url: str, name: str, config: AutoConfig, seed_offset: int = 0) -> optuna.Study:
    """Create or join the study `name` in the RDB storage `url` (slimformer.studies: heartbeats on, dead
    workers' trials retried). The sampler's seed is `config.seed + seed_offset` plus the trials it holds."""
    from slimformer.studies import open_study as open_shared_study

    return open_shared_study(
        url,
        name,
        seed=config.seed + seed_offset,
        heartbeat_seconds=config.heartbeat_seconds,
        pruner=BudgetPruner(halving=config.halving),
    )


TARGET_ATTR = "target_accuracy"  # user attribute: the validation accuracy a trial must reach (teacher - tolerance)


class BudgetPruner:
    """An Optuna pruner that judges a trial only against trials of its own depth, by two rules:

    - **The budget:** it is stopped when its validation curve cannot reach the teacher's accuracy minus the
      tolerance (the trial's `target_accuracy`), judged against finished trials of its depth that trained at least
      as many epochs: even the largest rise any of them made from this epoch to its end (plus SLACK) would leave
      it short.
    - **Successive halving** (`halving` = N, 0 = off): at the rungs, epochs 2, 2N, 2N², ..., it goes on only while
      its validation accuracy ranks in the top 1/N of the trials of its depth that reached that epoch with epochs
      still to go, once N of them have; so more shapes get trained in the same wall clock.

    A small student is never compared with larger ones, and with no such trial yet nothing is stopped. `reason`
    says why the last trial was stopped."""

    SLACK = 0.005  # half a point of accuracy the curve may beat its peers by
    FIRST_RUNG = 2  # the first epoch successive halving compares trials at
    reason = "cannot reach the teacher's accuracy minus the tolerance, judged by finished trials of its depth"

    def __init__(self, warmup_epochs: int = 1, halving: int = 0) -> None:
        self.warmup_epochs = warmup_epochs
        self.halving = halving

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        if self._cannot_reach_target(study, trial, step):
            self.reason = BudgetPruner.reason
            return True
        rank = self._halving_rank(study, trial, step)
        if rank is None:
            return False
        self.reason = (
            f"ranks {rank[0]} of the {rank[1]} trials of depth {trial.params.get('layers')} at epoch {step}; "
            f"successive halving keeps the top 1/{self.halving}"
        )
        return True

    def _cannot_reach_target(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, step: int) -> bool:
        from optuna.trial import TrialState

        target = trial.user_attrs.get(TARGET_ATTR)
        if step <= self.warmup_epochs or target is None:
            return False
        epochs = trial.params.get("epochs", step)
        peers = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.params.get("layers") == trial.params.get("layers")
            and step in t.intermediate_values
            and max(t.intermediate_values) >= epochs
        ]
        if not peers:
            return False
        rise = max(max(t.intermediate_values.values()) - t.intermediate_values[step] for t in peers)
        return trial.intermediate_values[step] + max(rise, 0.0) + self.SLACK < target

    def _halving_rank(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, step: int) -> tuple[int, int] | None:
        """(its rank, how many) when successive halving stops the trial at this epoch, else None. Only trials with
        epochs still to go are compared (one at its last epoch has decayed its learning rate, and stopping it
        saves nothing)."""
        if self.halving < 2 or not self._is_rung(step) or trial.params.get("epochs", step + 1) <= step:
            return None
        values = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number
            and t.params.get("layers") == trial.params.get("layers")
            and t.params.get("epochs", step + 1) > step
            and step in t.intermediate_values
        ]
        if len(values) + 1 < self.halving:
            return None
        ours = trial.intermediate_values[step]
        rank = 1 + sum(value > ours for value in values)
        kept = max(1, (len(values) + 1) // self.halving)
        return (rank, len(values) + 1) if rank > kept else None

    def _is_rung(self, step: int) -> bool:
        rung = self.FIRST_RUNG
        while rung < step:
            rung *= self.halving
        return rung == step


def set_constraints(trial: optuna.Trial, values: list[float]) -> None:
    """Record the constraint values (≤ 0: met) for the sampler and for the report."""
    trial.set_user_attr(CONSTRAINTS, [round(v, 5) for v in values])
    for index, value in enumerate(values):
        trial.set_constraint(f"c{index}", value)


def trained(trial: optuna.trial.FrozenTrial) -> bool:
    """A finished trial that spent training: complete, or stopped by the pruner (not screened out)."""
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.PRUNED and SCREENED not in trial.user_attrs)


class Reference:
    """The teacher, loaded once per worker: its validation accuracy, and the clock every candidate is timed
    against, turn about, on the same queries (so a speed-up is measured side by side)."""

    def __init__(self, teacher: Path, teacher_key: str, data: Any, work: Path | None, turn_s: float) -> None:
        from slimformer.auto.candidate import SCALING_FILE, TeacherClock
        from slimformer.evaluation import correct_rows

        self.clock = TeacherClock(teacher, teacher_key, work / SCALING_FILE if work else None, turn_s=turn_s)
        self.correct = correct_rows(self.clock.predictor, data.validation, data)  # per row, for paired comparisons
        self.accuracy = float(self.correct.mean())


def violations(
    p50_ms: float, size_mb: float, drop_points: float | None, teacher_p50: float, config: AutoConfig
) -> dict[str, float]:
    """The budget and the accuracy tolerance as named constraints (≤ 0 means met): the relative excess over
    the latency or size limit, the points over the accuracy tolerance. The search (validation, timed during
    the search) and the verdict (test, the final benchmark) both judge with it."""
    values = {}
    limit = config.latency_limit_ms(teacher_p50)
    if limit is not None:
        values["p50_ms"] = p50_ms / limit - 1
    if config.max_size_mb is not None:
        values["size_mb"] = size_mb / config.max_size_mb - 1
    if drop_points is not None:
        values["accuracy_drop_points"] = drop_points - config.max_accuracy_drop
    return values


SCREEN_MEMORY_FILE = "screens.json"
BORDERLINE = "borderline"


def summarise_screen(measured: dict[str, Any]) -> dict[str, Any]:
    """A screen measurement as stored: p50s, size, the speed-up interval and the optimistic p50 (the teacher's
    p50 over the interval's upper end: the fastest the shape can plausibly be, given the noise)."""
    interval = measured["speedup_interval"]
    teacher_p50 = measured["reference_p50_ms"]
    return {
        "p50_ms": measured["p50_ms"],
        "size_mb": measured["size_mb"],
        "teacher_p50_ms": teacher_p50,
        "speedup": interval["speedup"],
        "speedup_low": interval["low"],
        "speedup_high": interval["high"],
        "optimistic_p50_ms": round(teacher_p50 / interval["high"], 4),
        "rounds": interval["rounds"],
        "teacher_scaling": measured["teacher_scaling"]["factor"],
        "others_cpu": measured.get("others_cpu"),
    }


def screen_verdict(screen: dict[str, Any], config: AutoConfig, borderline: bool = False) -> str | None:
    """Why an untrained shape cannot meet the budget, or None when it may. A shape is dropped only when even the
    optimistic end of its speed-up interval misses the budget by more than `screen_margin` (or its size does);
    with `borderline`, a shape that misses by less than twice that (one the noise could still carry) answers
    BORDERLINE, to be timed again."""
    optimistic = violations(screen["optimistic_p50_ms"], screen["size_mb"], None, screen["teacher_p50_ms"], config)
    worst = max(optimistic.values(), default=0.0)
    margin = config.screen_margin - 1
    if worst <= margin:
        return None
    if borderline and not size_misses(screen, config) and worst <= 2 * margin:
        return BORDERLINE
    return (
        f"untrained shape {screen['speedup']:.1f}x (90 % interval {screen['speedup_low']:.1f}-"
        f"{screen['speedup_high']:.1f}x, {screen['p50_ms']:.3f} ms), {screen['size_mb']:.1f} MB: "
        f"misses the budget by more than the {config.screen_margin:g} margin even at its fastest"
    )


def size_misses(screen: dict[str, Any], config: AutoConfig) -> bool:
    """True when the shape's size alone misses a size budget by more than the margin (sizes do not move with
    load, so no re-timing or exemption can help)."""
    over = violations(screen["optimistic_p50_ms"], screen["size_mb"], None, screen["teacher_p50_ms"], config)
    return over.get("size_mb", 0.0) > config.screen_margin - 1


class ScreenMemory:
    """Screen measurements remembered in the work folder, by CPU, `models` (the teacher, and the students' base
    when it is another model) and shape: a later study (or another worker) on the same machine and models pays
    nothing for a shape already timed."""

    def __init__(self, path: Path, models: str) -> None:
        from slimformer.cpu import cpu_model

        self.path = path
        self.prefix = f"{cpu_model()}|{models}"

    def _key(self, shape: Any) -> str:
        import dataclasses

        return self.prefix + "|" + json.dumps(dataclasses.asdict(shape), sort_keys=True)

    def get(self, shape: Any) -> dict[str, Any] | None:
        found = read_json_cache(self.path).get(self._key(shape))
        return {**found, "remembered": True} if found else None

    def put(self, shape: Any, screen: dict[str, Any]) -> None:
        from slimformer.artifacts import remember_json

        remember_json(self.path, self._key(shape), screen)


class Objective:
    """One trial: suggest a shape, screen it untrained, then (if it can fit) train, build and measure it."""

    def __init__(self, teacher: Path, teacher_key: str, data: Any, work: Path, config: AutoConfig) -> None:
        from slimformer.cpu import default_threads
        from slimformer.data import column

        self.teacher, self.teacher_key, self.data, self.config = teacher, teacher_key, data, config
        self.cache = StageCache(work / "stages", teacher, teacher_key)
        self.cache.base = student_base(self.cache, config, data)
        self.texts = column(data.validation, "text")[: config.latency_queries]
        self.cores = default_threads()
        self.reference = Reference(teacher, teacher_key, data, work, config.timing_turn_s)
        base_key = self.cache.base[1]  # a shape of another base (--student) is another model
        models = self.teacher_key if base_key == self.teacher_key else f"{self.teacher_key}|{base_key}"
        self.screens = ScreenMemory(work / SCREEN_MEMORY_FILE, models)

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        try:
            return self._run(trial)
        except (optuna.TrialPruned, SurplusTrial):
            raise
        except Exception as exc:  # one candidate's failure must not end a long search; recorded, and counted
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            trial.set_user_attr("error", reason[:300])
            raise CandidateFailed(reason) from exc

    def _run(self, trial: optuna.Trial) -> float:

        self._refuse_surplus(trial)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("teacher_validation_accuracy", self.reference.accuracy)
        shape = suggest_shape(trial, self.config, self.cache.max_layers(), self.cores)
        seconds: dict[str, float] = {}  # where this trial's time went (auto.json sums it over the study)
        try:
            return self._screen_train_score(trial, shape, seconds)
        finally:
            trial.set_user_attr(SECONDS_ATTR, {part: round(value, 1) for part, value in seconds.items()})

    def _screen_train_score(self, trial: optuna.Trial, shape: Any, seconds: dict[str, float]) -> float:
        import optuna

        started = time.perf_counter()
        screen = self._screen(shape)
        seconds["screening"] = time.perf_counter() - started
        trial.set_user_attr("screen", screen)
        trial.set_user_attr("teacher_p50_ms", screen["teacher_p50_ms"])
        verdict = screen_verdict(screen, self.config)
        # the baseline (the recipe's shape) trains whatever its timing under load says; a size miss is exact
        if verdict is not None and (BASELINE_ATTR not in trial.user_attrs or size_misses(screen, self.config)):
            trial.set_user_attr(SCREENED, verdict)
            optimistic = violations(
                screen["optimistic_p50_ms"], screen["size_mb"], None, screen["teacher_p50_ms"], self.config
            )
            set_constraints(trial, [*optimistic.values(), 0.0])
            raise optuna.TrialPruned("screened out before training")
        trial.set_user_attr(TARGET_ATTR, self.reference.accuracy - self.config.max_accuracy_drop / 100)
        training = suggest_training(trial, self.config)
        from slimformer.trial_pruning import OptunaPruningCallback

        started = time.perf_counter()
        try:
            folder = build_chain(self.cache, shape, training, self.data, self.config, (OptunaPruningCallback(trial),))
        finally:
            seconds["training"] = time.perf_counter() - started  # the chain: distillation and the stages after it
        started = time.perf_counter()
        accuracy = self._score(trial, folder, shape)
        seconds["timing"] = time.perf_counter() - started
        return accuracy

    def _screen(self, shape: Any) -> dict[str, Any]:
        """The untrained shape timed against the teacher (remembered per CPU in the work folder, so a later
        study pays nothing for it); a borderline shape is timed again over twice the queries and rounds."""
        remembered = self.screens.get(shape)
        if remembered is not None:
            return remembered
        chain = build_chain(self.cache, shape, None, self.data, self.config)
        screen = summarise_screen(measure(chain, self.texts, shape.threads, self.reference.clock))
        if screen_verdict(screen, self.config, borderline=True) == BORDERLINE:
            longer = measure(chain, self.texts * 2, shape.threads, self.reference.clock, 2 * MEASURE_ROUNDS)
            screen = summarise_screen(longer)
        self.screens.put(shape, screen)
        return screen

    def _score(self, trial: optuna.Trial, folder: Path, shape: Any) -> float:
        from slimformer.artifacts import read_metrics
        from slimformer.evaluation import correct_rows
        from slimformer.metrics import paired_drop_interval
        from slimformer.predictor import load

        validation = read_metrics(folder)["validation"]
        accuracy = validation["accuracy"]
        # per kind as well: validation and test may differ in composition (CLINC150: 3 % against 18 % OOS)
        trial.set_user_attr("validation_in_scope", validation.get("in_scope_accuracy"))
        trial.set_user_attr("validation_oos_recall", validation.get("oos_recall"))
        measured = measure(folder, self.texts, shape.threads, self.reference.clock)
        teacher_p50 = measured.pop("reference_p50_ms")
        drop = round(100 * (self.reference.accuracy - accuracy), 3)
        candidate_correct = correct_rows(load(folder, threads=shape.threads), self.data.validation, self.data)
        interval = paired_drop_interval(self.reference.correct, candidate_correct, self.config.max_accuracy_drop)
        trial.set_user_attr(DROP_INTERVAL, interval)
        trial.set_user_attr("folder", str(folder))
        trial.set_user_attr("validation_accuracy", accuracy)
        trial.set_user_attr("teacher_p50_ms", teacher_p50)
        trial.set_user_attr("accuracy_drop_points", drop)
        trial.set_user_attr("speedup", round(teacher_p50 / measured["p50_ms"], 2))
        met = violations(measured["p50_ms"], measured["size_mb"], drop, teacher_p50, self.config)
        set_constraints(trial, list(met.values()))
        for key, value in measured.items():
            trial.set_user_attr(key, value)
        return accuracy

    def _refuse_surplus(self, trial: optuna.Trial) -> None:
        from optuna.trial import TrialState

        trials = trial.study.get_trials(deepcopy=False)
        done = sum(trained(t) for t in trials)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
        if done + ahead >= self.config.trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"the study already has {done} trained and {ahead} running trials")


def run_worker(objective: Objective, study: optuna.Study, config: AutoConfig, say: Any, on_trial: Any = None) -> None:
    """Run trials until the study holds `config.trials` trained ones (or time / screening runs out); after each,
    `on_trial(study)` when given (auto.json's running table)."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + 60 * config.time_budget if config.time_budget else None
    while True:
        fail_stale_trials(study)  # a dead worker's trial: FAIL, re-queued by the retry callback
        trials = study.get_trials(deepcopy=False)
        done = sum(trained(t) for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if done >= config.trials:
            return
        if failed_streak(trials) >= MAX_FAILED_IN_A_ROW:
            last = max((t for t in trials if "error" in t.user_attrs), key=lambda t: t.number)
            raise SlimformerError(
                f"{MAX_FAILED_IN_A_ROW} candidates in a row failed; the last: {last.user_attrs['error']}"
            )
        if screened_streak(trials) >= config.max_screened:
            say(f"the last {config.max_screened} shapes all missed the budget untrained: stopping the search")
            return
        if deadline is not None and time.monotonic() > deadline:
            say(f"time budget of {config.time_budget:g} min spent: no new trial")
            return
        if done + running >= config.trials and not waiting:
            time.sleep(min(config.heartbeat_seconds, 5))  # the last trials run elsewhere: wait for them
            continue
        catch = (SurplusTrial, CandidateFailed)
        callbacks = [_Printer(say), *([lambda study, _trial: on_trial(study)] if on_trial else [])]
        study.optimize(objective, n_trials=1, catch=catch, gc_after_trial=True, callbacks=callbacks)


def failed_streak(trials: list[Any]) -> int:
    """How many of the most recent finished trials in a row failed with an error (not a dead worker)."""
    streak = 0
    for trial in sorted((t for t in trials if t.state.is_finished()), key=lambda t: -t.number):
        if "error" not in trial.user_attrs:
            break
        streak += 1
    return streak


def screened_streak(trials: list[Any]) -> int:
    """How many of the most recent finished trials in a row were screened out."""
    from optuna.trial import TrialState

    streak = 0
    for trial in sorted((t for t in trials if t.state.is_finished()), key=lambda t: -t.number):
        if trial.state == TrialState.PRUNED and SCREENED in trial.user_attrs:
            streak += 1
        elif trial.state != TrialState.FAIL:
            break
    return streak


class _Printer:
    def __init__(self, say: Any) -> None:
        self.say = say

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        attrs = trial.user_attrs
        if SCREENED in attrs:
            outcome = f"screened out ({attrs[SCREENED]})"
        elif trial.state.name == "COMPLETE":
            interval = attrs.get(DROP_INTERVAL)
            spread = f", 90 % {interval['low']:+.2f}..{interval['high']:+.2f}" if interval else ""
            outcome = (
                f"validation {100 * trial.value:.2f} % ({attrs['accuracy_drop_points']:+.2f} pts drop{spread}), "
                f"{attrs['p50_ms']:.3f} ms, {attrs['speedup']:.1f}x, {attrs['size_mb']:.1f} MB, "
                f"{'meets' if all(v <= 0 for v in attrs.get(CONSTRAINTS, [1])) else 'misses'} the budget"
            )
            if is_busy(attrs.get("others_cpu")):
                outcome += f" (timed while other processes took {100 * attrs['others_cpu']:.0f} % of the CPU"
                outcome += ": bounded from 1 thread each" if attrs.get("single_thread_bound") else ""
                assumed = (attrs.get("teacher_scaling") or {}).get("assumed")
                outcome += "; the teacher's thread scaling bounded, never timed quiet)" if assumed else ")"
        else:
            why = attrs.get("error") or attrs.get(PRUNED_ATTR)
            outcome = trial.state.name.lower() + (f" ({why})" if why else "")
        self.say(f"trial {trial.number}: {outcome} [{params}] · {best_so_far(study)}")


def best_so_far(study: optuna.Study) -> str:
    """The most accurate trial that meets the budget so far, in words."""
    from optuna.trial import TrialState

    meets = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(v <= 0 for v in t.user_attrs.get(CONSTRAINTS, [1]))
    ]
    if not meets:
        return "no trial meets the budget yet"
    best = max(meets, key=lambda t: t.value)
    return f"best so far: trial {best.number}, {100 * best.value:.2f} %, {best.user_attrs.get('speedup', 0):.1f}x"
