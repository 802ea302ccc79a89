"""Batch-1 timing, written once: every latency in slimformer (benchmark, thread tuning, the INT8 pick, `auto`'s
screen and trials, the search's latency objective) and in `benchmarks/` is timed here.

- **Queries**: real texts in a seeded order (:func:`sample_queries`), split into rounds (:func:`split_rounds`).
- **One call**: ``predict([text])``, tokenization included, after a warm-up of at least WARMUP_MIN_S; afterwards
  the process waits until its thread pools stop spinning, so the next model timed has the cores to itself
  (:func:`batch1_latencies_ms`).
- **Side by side**: the models take turns round by round, the first of each round rotating
  (:func:`interleaved_latencies_ms`), so background load that comes and goes hits them alike; a turn can be
  held to a minimum length, its queries repeated, so a fast model's turn spans more than one scheduler slice.
- **On a quiet machine**: other processes' share of the CPU while a block runs (:class:`OtherLoad`), and a
  measurement repeated until the machine is quiet, the least loaded kept (:func:`least_loaded`).
- **Summaries**: medians and percentiles (:func:`latency_summary`); a speed-up as the median of per-round ratios
  with a bootstrap interval over rounds (:func:`speedup_interval`), which a loaded machine widens instead of
  biasing.

The sessions themselves are configured in one place too: :func:`slimformer.predictor.session_options`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from slimformer.metrics import bootstrap_interval

# a warm-up lasts at least this long: after idling, these shared hosts run the first tens of ms of work slower
WARMUP_MIN_S = 0.05
# after its timed calls a model's thread pools keep spinning (ONNX Runtime's workers for ~40 ms on AMD EPYC): wait
# until the process uses less than SETTLE_QUIET_S of CPU in a SETTLE_STEP_S window, at most SETTLE_LIMIT_S
SETTLE_STEP_S, SETTLE_QUIET_S, SETTLE_LIMIT_S = 0.005, 0.0005, 0.5
ROUND_WARMUP = 5  # untimed calls at the start of each turn (another model just had the caches)

RoundTimer = Callable[[list[str], int], list[float]]  # (queries, warmup) -> milliseconds per query


def sample_queries(texts: list[str], count: int, seed: int = 0) -> list[str]:
    """`count` of `texts` in a seeded order (repeated when there are fewer)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in np.resize(order, count)] if len(texts) else []


def split_rounds(queries: list[str], rounds: int) -> list[list[str]]:
    """`queries` cut into `rounds` consecutive slices of (nearly) equal length, none empty."""
    chunks = np.array_split(np.array(queries, dtype=object), max(1, min(rounds, len(queries))))
    return [list(chunk) for chunk in chunks if len(chunk)]


def batch1_latencies_ms(predictor: Any, queries: list[str], warmup: int, min_seconds: float = 0.0) -> list[float]:
    """Milliseconds of `predict([text])` for each query (tokenization included), after `warmup` untimed calls that
    last at least WARMUP_MIN_S (none when `warmup` is 0); with `min_seconds`, the queries are timed again, in
    order, until the timed calls have lasted that long. Then it waits until this process's thread pools have
    stopped spinning (`wait_until_idle`), so that the next model timed side by side has the cores to itself."""
    started, calls = time.perf_counter(), 0
    while queries and warmup and (calls < warmup or time.perf_counter() - started < WARMUP_MIN_S):
        predictor.predict([queries[calls % len(queries)]])
        calls += 1
    timings: list[float] = []
    started = time.perf_counter()
    while queries and (not timings or time.perf_counter() - started < min_seconds):
        for text in queries:
            tick = time.perf_counter()
            predictor.predict([text])
            timings.append((time.perf_counter() - tick) * 1000)
    wait_until_idle()
    return timings


def wait_until_idle() -> float:
    """Sleep until this process has stopped using the CPU (its idle thread pools spinning), at most SETTLE_LIMIT_S;
    returns the seconds waited. Measured side by side in turns, a 2-thread ONNX model timed while the previous
    model's workers still spin gets a p95 of 4.5 ms instead of 0.7 (BENCHMARKS.md, "Threads and the timing harness")."""
    started = time.perf_counter()
    used = time.process_time()  # every thread of this process
    while time.perf_counter() - started < SETTLE_LIMIT_S:
        time.sleep(SETTLE_STEP_S)
        now = time.process_time()
        if now - used < SETTLE_QUIET_S:
            break
        used = now
    return time.perf_counter() - started


def predictor_timer(predictor: Any, min_seconds: float = 0.0) -> RoundTimer:
    """A :data:`RoundTimer` for a predictor loaded in this process (each round timed for at least `min_seconds`)."""
    return lambda queries, warmup: batch1_latencies_ms(predictor, queries, warmup, min_seconds)


QUIET_SHARE = 0.1  # other processes using under this share of all cores: the machine counts as quiet


def is_busy(others_cpu: float | None) -> bool:
    """Whether other processes took at least :data:`QUIET_SHARE` of the CPU (None: not measured, not busy)."""
    return others_cpu is not None and others_cpu >= QUIET_SHARE


def least_loaded(measure: Callable[[], Any], tries: int) -> tuple[Any, float | None, int]:
    """Run `measure` up to `tries` times, stopping at the first run on a quiet machine (:class:`OtherLoad`);
    returns the result of the least loaded run, the share of the CPU other processes took during it (None: not
    measurable, taken as quiet) and how many runs it took."""
    best: tuple[Any, float | None] | None = None
    runs = 0
    while runs < max(tries, 1):
        runs += 1
        with OtherLoad() as load:
            result = measure()
        if best is None or (load.share or 0.0) < (best[1] or 0.0):
            best = (result, load.share)
        if not load.busy:
            break
    assert best is not None
    return best[0], best[1], runs


class OtherLoad:
    """While a block runs, the CPU time other processes (and the hypervisor: steal) took, as a share of all cores
    (`share`: 0 = this process had the machine to itself, 0.5 = one of 2 cores busy elsewhere; None where
    /proc/stat is missing). Taking turns cancels load that comes and goes; this tells a steady load apart.
    With `descendants`, this process's child processes (a benchmark's model runners) count as its own."""

    share: float | None = None

    def __init__(self, descendants: bool = False) -> None:
        self.descendants = descendants

    def __enter__(self) -> OtherLoad:
        self._start = (_busy_cpu_seconds(), self._own_cpu_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc_info: object) -> None:
        busy, own, wall = _busy_cpu_seconds(), self._own_cpu_seconds(), time.perf_counter()
        if busy is None or self._start[0] is None or wall <= self._start[2]:
            return
        others = (busy - self._start[0]) - (own - self._start[1])
        self.share = round(min(1.0, max(0.0, others / ((wall - self._start[2]) * _cpus()))), 3)

    @property
    def busy(self) -> bool:
        """Whether other processes took at least :data:`QUIET_SHARE` of the CPU."""
        return is_busy(self.share)

    def _own_cpu_seconds(self) -> float:
        """CPU seconds of this process, plus (with `descendants`) its live and its finished child processes: a
        child alive at the start and reaped by the end moves from the live sum to the reaped one, whole."""
        own = time.process_time()
        if self.descendants:
            import os

            import psutil

            reaped = os.times()
            own += reaped.children_user + reaped.children_system
            for child in psutil.Process().children(recursive=True):
                try:
                    times = child.cpu_times()
                except psutil.Error:  # ended just now: counted once it is reaped
                    continue
                own += times.user + times.system
        return own


def _busy_cpu_seconds() -> float | None:
    """Seconds every CPU of the machine spent busy since boot (user, nice, system, irq, softirq, steal)."""
    import os
    from pathlib import Path

    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def interleaved_latencies_ms(
    timers: dict[Any, RoundTimer], rounds: list[list[str]], warmup: int = ROUND_WARMUP
) -> dict[Any, list[list[float]]]:
    """Each timer's milliseconds per query, round by round: in every round each model times that round's queries
    in turn (a warm-up of `warmup` calls first), the model going first rotating from round to round."""
    names = list(timers)
    timings: dict[Any, list[list[float]]] = {name: [] for name in names}
    for index, queries in enumerate(rounds):
        first = index % len(names)
        for name in names[first:] + names[:first]:
            timings[name].append(timers[name](queries, warmup))
    return timings


def flat(rounds: list[list[float]]) -> list[float]:
    """Every timing of every round in one list."""
    return [value for times in rounds for value in times]


def median_ms(timings: list[float]) -> float:
    """The median of `timings`, rounded to 0.1 µs."""
    return round(float(np.median(timings)), 4)


def latency_summary(timings_ms: list[float]) -> dict[str, float]:
    """mean, std, p50, p95, p99 (milliseconds) and the number of timed calls."""
    values = np.asarray(timings_ms, dtype=float)
    percentiles = np.percentile(values, [50, 95, 99])
    return {
        "mean": round(float(values.mean()), 3),
        "std": round(float(values.std()), 3),
        "p50": round(float(percentiles[0]), 3),
        "p95": round(float(percentiles[1]), 3),
        "p99": round(float(percentiles[2]), 3),
        "n": len(values),
    }


def speedup_interval(
    reference: list[list[float]], candidate: list[list[float]], confidence: float = 0.9, seed: int = 0
) -> dict[str, float]:
    """How many times faster `candidate` is than `reference`, from rounds timed side by side: the median of the
    per-round ratios of their medians, and a two-sided `confidence` bootstrap interval over the rounds. Load
    that comes and goes slows both alike within a round, so it widens the interval rather than moving it."""
    ratios = np.array(
        [np.median(ref) / np.median(cand) for ref, cand in zip(reference, candidate, strict=True) if ref and cand]
    )
    if not len(ratios):
        raise ValueError("no round has timings of both models")
    low, high, _ = bootstrap_interval(ratios, np.median, confidence, seed=seed)
    return {
        "speedup": round(float(np.median(ratios)), 3),
        "low": round(float(low), 3),
        "high": round(float(high), 3),
        "rounds": len(ratios),
        "confidence": confidence,
    }
