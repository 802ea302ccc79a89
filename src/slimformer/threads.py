"""How many intra-op threads an ONNX artefact runs with, and whether they spin: measured on this CPU, not guessed.

`tune_threads(folder, queries)` times batch 1 (tokenization included) at 1..N intra-op threads (N: the cores
this process may use), each with ONNX Runtime's spinning on and off (`session.intra_op.allow_spinning`: idle
pool threads busy-wait for the next piece of work instead of sleeping, so hand-offs are quicker but a core
stays busy). The settings take turns in interleaved rounds, as the benchmark's models do, so background load
hits them alike, and a sweep timed while other processes took the CPU is timed again (the least loaded of
`TUNE_TRIES` kept, its load recorded as `others_cpu`). The fastest median goes into the folder's session.json
(`threads`, `intra_op_allow_spinning`) with the whole sweep and the CPU it ran on (`thread_sweep`);
`slimformer.load`, and the server through it, then run with them unless told otherwise. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimformer.config import option
from slimformer.errors import ConfigError, ModelError

TUNE_QUERIES = 200  # batch-1 queries timed at each setting
TUNE_ROUNDS = 4  # interleaved rounds (the settings take turns)
TUNE_WARMUP = 5  # untimed calls at the start of each setting's turn
TUNE_TRIES = 3  # a sweep timed while other processes took the CPU is timed again, up to this many times in all
EVERY_COUNT_UP_TO = 8  # thread counts tried one by one; above, powers of two and the core count
# the ONNX stages' `threads` option (the stage envelope tunes them when it is None: envelope.run_stage)
THREADS_HELP = "Intra-op threads saved in session.json (None: the fastest of 1..N x spinning, timed on this CPU)"


@dataclass
class ThreadTuneConfig:
    """Options of `slimformer tune-threads`."""

    split: str = option("test", "Split the queries are drawn from.")
    queries: int = option(TUNE_QUERIES, "Batch-1 queries timed at each setting.")
    max_threads: int | None = option(None, "Most intra-op threads tried (default: every core).")
    rounds: int = option(TUNE_ROUNDS, "Interleaved rounds (the settings take turns).")
    seed: int = option(0, "Order in which queries are drawn.")

    def validate(self) -> None:
        if self.queries < 1 or self.rounds < 1:
            raise ConfigError(f"queries and rounds must be >= 1, got {self.queries} and {self.rounds}")
        if self.max_threads is not None and self.max_threads < 1:
            raise ConfigError(f"max threads must be >= 1, got {self.max_threads}")


def thread_candidates(cores: int) -> list[int]:
    """Intra-op thread counts to try: 1..cores, thinned above 8 to the powers of two and `cores` itself."""
    counts = set(range(1, min(cores, EVERY_COUNT_UP_TO) + 1)) | {cores}
    counts |= {2**k for k in range(1, cores.bit_length()) if 2**k < cores}
    return sorted(counts)


def tune_threads(
    folder: str | Path,
    queries: list[str],
    max_threads: int | None = None,
    rounds: int = TUNE_ROUNDS,
    warmup: int = TUNE_WARMUP,
) -> dict[str, Any]:
    """Time batch 1 of the ONNX folder `folder` over `queries` at each thread count (1..`max_threads`, default
    every available core) with spinning on and off; write the fastest into its session.json. Returns the sweep
    (also written there as `thread_sweep`): ``{"cpu", "cores", "queries", "p50_ms": [{"threads", "spinning",
    "p50_ms"}, ...], "best": {...}}``."""
    from slimformer.artifacts import write_json
    from slimformer.cpu import cpu_model, default_threads
    from slimformer.predictor import ONNX_FILE, SESSION_FILE, SPINNING_KEY, OnnxPredictor, saved_session
    from slimformer.timing import (
        flat,
        interleaved_latencies_ms,
        least_loaded,
        median_ms,
        predictor_timer,
        split_rounds,
    )

    folder = Path(folder)
    if not (folder / ONNX_FILE).is_file():
        raise ModelError(f"{folder} has no {ONNX_FILE}: thread tuning is for ONNX Runtime folders (export it first)")
    if not queries:
        raise ModelError("thread tuning needs at least one query")
    if max_threads is not None and max_threads < 1:
        raise ModelError(f"max threads must be >= 1, got {max_threads}")
    cores = default_threads()
    settings = [(count, spin) for count in thread_candidates(max_threads or cores) for spin in (True, False)]
    timers = {
        (count, spin): predictor_timer(
            OnnxPredictor.from_file(folder / ONNX_FILE, folder, threads=count, spinning=spin)
        )
        for count, spin in settings
    }
    # one busy core elsewhere slows 2 spinning threads far more than 1: time again until quiet (contention that
    # /proc/stat does not show, such as the host's for the second vCPU, still decides the sweep: BENCHMARKS.md)
    timings, others_cpu, tries = least_loaded(
        lambda: interleaved_latencies_ms(timers, split_rounds(queries, rounds), warmup), TUNE_TRIES
    )
    rows = [
        {"threads": count, "spinning": spin, "p50_ms": median_ms(flat(timings[count, spin]))}
        for count, spin in settings
    ]
    best = min(rows, key=lambda row: row["p50_ms"])
    sweep = {
        "cpu": cpu_model(),
        "cores": cores,
        "queries": len(queries),
        "rounds": rounds,
        "p50_ms": rows,
        "best": best,
        "others_cpu": others_cpu,
        "tries": tries,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    session = saved_session(folder)
    session.update({"threads": best["threads"], SPINNING_KEY: best["spinning"], "thread_sweep": sweep})
    write_json(folder / SESSION_FILE, session)
    return sweep


def print_sweep(sweep: dict[str, Any], echo: Callable[[str], Any] = print) -> None:
    """The sweep as a threads x spinning table of p50 ms, the fastest marked (and a warning if timed under load)."""
    from slimformer.timing import is_busy

    by_setting = {(row["threads"], row["spinning"]): row["p50_ms"] for row in sweep["p50_ms"]}
    best = (sweep["best"]["threads"], sweep["best"]["spinning"])
    echo(f"batch-1 p50 ms over {sweep['queries']} queries on {sweep['cpu']} ({sweep['cores']} cores)")
    echo(f"{'threads':>7}  {'spin on':>9}  {'spin off':>9}")
    for count in sorted({threads for threads, _ in by_setting}):
        cells = [f"{by_setting[count, spin]:>8.3f}{'*' if (count, spin) == best else ' '}" for spin in (True, False)]
        echo(f"{count:>7}  {cells[0]}  {cells[1]}")
    spin = "on" if best[1] else "off"
    if is_busy(sweep.get("others_cpu")):
        share = sweep["others_cpu"]
        echo(f"warning: other processes took {share:.0%} of the CPU in the least loaded of {sweep['tries']} tries")
    echo(f"* fastest: {best[0]} threads, spinning {spin} ({sweep['best']['p50_ms']:.3f} ms), written to session.json")
