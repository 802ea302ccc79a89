"""The book's `PerformanceBenchmark`, done honestly.

For each model folder (PyTorch checkpoint or ONNX), in a fresh process of its own so that peak memory and
thread settings are its own: accuracy metrics over the evaluation split, latency at batch 1 over real test
queries (tokenization included, after a warm-up), throughput at batch 32, size on disk, parameter count and
peak RSS. The environment (CPU, ISA flags, threads, library versions) is recorded with the results.

Latency is timed in interleaved rounds: every model's process stays alive, and the models take turns, each
timing its next slice of queries. Background load that comes and goes on a shared machine then hits every
model alike, so the ratios between them (speed-ups) hold even when the absolute numbers drift. A turn starts
with at least 50 ms of warm-up calls and ends only once the model's thread pools have stopped spinning, so no
model is timed while the previous one's idle workers still hold a core (slimformer.profiling). With `profile`,
a separate pass after the timed one splits each model's batch-1 time into tokenization, operators and the rest
(slimformer.profiling), so the profiler's own cost never reaches the latency numbers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from slimformer.config import StageConfig, option
from slimformer.errors import ConfigError, ModelError, SlimformerError
from slimformer.plots import write_plot as write_plot  # the benchmark's figure: callers import it from here
from slimformer.profiling import PROFILE_QUERIES, profile_predictor
from slimformer.timing import (
    ROUND_WARMUP,
    OtherLoad,
    batch1_latencies_ms,
    flat,
    interleaved_latencies_ms,
    is_busy,
    latency_summary,
    sample_queries,
    split_rounds,
)

QUICK_LATENCY_SAMPLES = 200  # --quick: batch-1 queries timed


@dataclass
class BenchmarkConfig(StageConfig):
    """Options of `slimformer benchmark`."""

    threads: int | None = option(
        None, "Intra-op threads for every model (default: each its session.json's, else all cores)."
    )
    max_samples: int | None = option(None, "Evaluation rows used for accuracy and throughput (default: all)")
    latency_samples: int = option(1000, "Batch-1 queries timed, drawn from the evaluation split.")
    warmup: int = option(20, "Untimed batch-1 calls before timing.")
    batch_size: int = option(32, "Batch size of the throughput / accuracy pass.")
    split: str = option("test", "Split to evaluate on.")
    seed: int = option(0, "Order in which queries are drawn.")
    isolate: bool = option(True, "Run each model in a fresh process (honest peak RSS, clean thread state)")
    rounds: int = option(5, "Latency is timed in this many interleaved rounds (models take turns each round)")
    profile: bool = option(
        False, "After the timed latency, a profiled pass: batch-1 time split into tokenization, operators, rest"
    )

    produces_model: ClassVar[bool] = False

    def quick(self) -> BenchmarkConfig:
        return replace(self, latency_samples=min(self.latency_samples, QUICK_LATENCY_SAMPLES))

    def validate(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max samples must be >= 1, got {self.max_samples}")
        if self.latency_samples < 1:
            raise ConfigError(f"latency samples must be >= 1, got {self.latency_samples}")
        if self.warmup < 0 or self.batch_size < 1:
            raise ConfigError("warmup must be >= 0 and batch size >= 1")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")


def benchmark_models(
    models: list[str | Path], data: Any, config: BenchmarkConfig | None = None, keep_rows: bool = False
) -> dict[str, Any]:
    """Benchmark every model folder on `data` (a DataSplits). Returns ``{"environment": ..., "results": [...]}``;
    with `keep_rows`, each result also holds `correct_rows` (per evaluated row, whether the model got it right),
    for paired comparisons (:func:`slimformer.metrics.paired_drop_interval`)."""
    from slimformer.cpu import default_threads
    from slimformer.data import column

    config = config or BenchmarkConfig()
    config.validate()
    if not models:
        raise ConfigError("give at least one model folder to benchmark")
    threads = config.threads or default_threads()
    dataset = data.split(config.split)
    if config.max_samples is not None and config.max_samples < len(dataset):
        dataset = dataset.shuffle(seed=config.seed).select(range(config.max_samples))
    job = {
        "texts": column(dataset, "text"),
        "label_ids": column(dataset, "label"),
        "labels": list(data.labels),
        "oos_label_id": data.oos_label_id,
        "threads": config.threads,  # None: each model runs as its session.json says (as it is served)
        "config": asdict(config),
        "keep_rows": keep_rows,
    }
    names = display_names([str(m) for m in models])
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(_ModelRunner(str(m), job, config.isolate)) for m in models]
        prepared = [runner.call(prepare_model, str(m), job) for runner, m in zip(runners, models, strict=True)]
        queries = sample_queries(job["texts"], config.latency_samples, config.seed)
        timers = {
            i: partial(runner.call, time_queries, str(m))
            for i, (runner, m) in enumerate(zip(runners, models, strict=True))
        }
        with OtherLoad(descendants=True) as others:  # the models' own processes are not "others"
            rounds = interleaved_latencies_ms(
                timers, split_rounds(queries, config.rounds), min(config.warmup, ROUND_WARMUP)
            )
        # peak RSS before any profiled session; the models stay loaded for the profiled pass
        finished = [
            runner.call(finish_model, str(m), flat(rounds[i]), config.profile)
            for i, (runner, m) in enumerate(zip(runners, models, strict=True))
        ]
        if config.profile:  # after the timed latency (a profiler slows the model), over its first queries
            queries = queries[:PROFILE_QUERIES]
            for runner, model, result in zip(runners, models, prepared, strict=True):
                result["breakdown"] = runner.call(profile_model, str(model), queries)
        results = [
            {"model": name, "path": str(m), **result, **summary}
            for name, m, result, summary in zip(names, models, prepared, finished, strict=True)
        ]
    return {
        "environment": {
            **environment_info(threads),
            "threads_per_model": config.threads is None,
            "others_cpu": others.share,  # other processes' share of all cores while the latency was timed
        },
        "data": {"name": data.name, "split": config.split, "rows": len(job["texts"])},
        "config": asdict(config),
        "results": results,
    }


_LOADED: dict[str, Any] = {}  # predictors of the models this process benchmarks, by path


def prepare_model(path: str, job: dict[str, Any]) -> dict[str, Any]:
    """Load the model (kept for the latency rounds), measure accuracy and batch throughput, warm up."""
    from slimformer.artifacts import folder_size_bytes, weights_size_bytes
    from slimformer.data import label_positions
    from slimformer.metrics import classification_metrics
    from slimformer.models import resolve_model_path
    from slimformer.predictor import load

    config = job["config"]
    rss_before = _current_rss_mb()
    predictor = load(path, threads=job["threads"])
    rss_loaded = _current_rss_mb()
    label_index = label_positions(predictor.labels, job["labels"])
    _LOADED[path] = predictor

    # accuracy and throughput: the whole evaluation split in batches
    texts, batch = job["texts"], config["batch_size"]
    predictor.predict_logits(texts[:batch])  # warm-up
    predictions = []
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        predictions.append(predictor.predict_logits(texts[start : start + batch]).argmax(axis=-1))
    batch_seconds = time.perf_counter() - started
    predicted = label_index[np.concatenate(predictions)]
    quality = classification_metrics(job["label_ids"], predicted, job["oos_label_id"])
    for text in texts[: config["warmup"]]:
        predictor.predict([text])
    folder = resolve_model_path(path)
    rows = {"correct_rows": (predicted == np.asarray(job["label_ids"])).tolist()} if job.get("keep_rows") else {}
    return {
        "backend": predictor.backend,
        **quality,
        **rows,
        "throughput_per_s": round(len(texts) / batch_seconds, 1),
        "throughput_batch_size": batch,
        "size_mb": round(weights_size_bytes(folder) / 1e6, 2),
        "folder_size_mb": round(folder_size_bytes(folder) / 1e6, 2),
        "parameters": parameter_count(predictor),
        "model_rss_mb": round(rss_loaded - rss_before, 1),
        "settings": predictor.settings(),
    }


def time_queries(path: str, queries: list[str], warmup: int) -> list[float]:
    """Batch-1 latencies (ms) of the loaded model `path` over `queries` (see :func:`batch1_latencies_ms`)."""
    return batch1_latencies_ms(_LOADED[path], queries, warmup)


def profile_model(path: str, queries: list[str]) -> dict[str, Any]:
    """The latency breakdown of the loaded model `path` (see slimformer.profiling); the model is released."""
    return profile_predictor(_LOADED.pop(path), queries)


def finish_model(path: str, timings: list[float], keep: bool = False) -> dict[str, Any]:
    """Latency summary and this process's peak RSS; the model is released unless `keep` (to profile it)."""
    if not keep:
        _LOADED.pop(path, None)
    return {"latency_ms": latency_summary(timings), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def parameter_count(predictor: Any) -> int:
    """Weights in the model: torch parameters, or the elements of an ONNX graph's initializers."""
    if predictor.backend == "pytorch":
        return int(sum(p.numel() for p in predictor.model.parameters()))
    import onnx

    graph = onnx.load(str(predictor.path / "model.onnx"), load_external_data=False).graph
    return int(sum(int(np.prod(init.dims)) if init.dims else 1 for init in graph.initializer))


def environment_info(threads: int) -> dict[str, Any]:
    """The machine and software a benchmark ran on."""
    import importlib.metadata

    from slimformer.cpu import cpu_model, isa_summary

    versions = {}
    for package in ("torch", "transformers", "onnxruntime", "onnx", "numpy", "slimformer"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "isa": isa_summary(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def display_names(paths: list[str]) -> list[str]:
    """Short unique names: the folder name, with parents added while two are equal."""
    parts = [Path(p).resolve().parts if p != "default" else ("default",) for p in paths]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


# the terminal table: each column's header and how a result fills it
TABLE_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("model", lambda r: r["model"]),
    ("backend", lambda r: r["backend"]),
    ("accuracy", lambda r: f"{r['accuracy']:.4f}"),
    ("macro-F1", lambda r: f"{r['macro_f1']:.4f}"),
    ("in-scope", lambda r: _maybe(r.get("in_scope_accuracy"))),
    ("OOS recall", lambda r: _maybe(r.get("oos_recall"))),
    ("p50 ms", lambda r: f"{r['latency_ms']['p50']:.2f}"),
    ("p95 ms", lambda r: f"{r['latency_ms']['p95']:.2f}"),
    ("p99 ms", lambda r: f"{r['latency_ms']['p99']:.2f}"),
    ("mean ± std ms", lambda r: f"{r['latency_ms']['mean']:.2f} ± {r['latency_ms']['std']:.2f}"),
    ("batch-32 /s", lambda r: f"{r['throughput_per_s']:.0f}"),
    ("size MB", lambda r: f"{r['size_mb']:.1f}"),
    ("params", lambda r: f"{r['parameters'] / 1e6:.1f}M"),
    ("peak RSS MB", lambda r: f"{r['peak_rss_mb']:.0f}"),
]


def print_table(report: dict[str, Any]) -> None:
    """A rich table of every figure, and the environment, on the terminal (and the latency breakdowns, if any)."""
    from rich.console import Console
    from rich.table import Table

    from slimformer.profiling import print_breakdowns

    environment = report["environment"]
    isa = ", ".join(name for name, present in environment["isa"].items() if present) or "none"
    table = Table(
        title=f"{report['data']['name']} {report['data']['split']} ({report['data']['rows']} rows)",
        caption=f"{environment['cpu']} · ISA: {isa} · {environment['threads']} threads · "
        f"torch {environment['versions']['torch']} · onnxruntime {environment['versions']['onnxruntime']}",
    )
    for header, _ in TABLE_COLUMNS:
        table.add_column(header, justify="left" if header in ("model", "backend") else "right")
    for result in report["results"]:
        table.add_row(*(cell(result) for _, cell in TABLE_COLUMNS))
    # a 14-column table needs more than the 80 columns rich assumes when output is not a terminal
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    if is_busy(environment.get("others_cpu")):
        console.print(load_warning(environment["others_cpu"]), markup=False, highlight=False)
    print_breakdowns(report["results"], lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))


def load_warning(others_cpu: float) -> str:
    """One line for a run timed while other processes took `others_cpu` of the CPU."""
    return (
        f"warning: other processes took {100 * others_cpu:.0f} % of the CPU while the latency was timed; the turns "
        "spread it over every model, but a steady load slows a many-threaded model more than a 1-thread one "
        '(BENCHMARKS.md, "slimformer auto"): re-run on a quiet machine for speed-ups to publish'
    )


def _maybe(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


class _ModelRunner:
    """Runs the benchmark steps of one model: in a spawned process of its own (isolate), else in this one."""

    def __init__(self, path: str, job: dict[str, Any], isolate: bool) -> None:
        self.path, self.isolate = path, isolate
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> _ModelRunner:
        if self.isolate:
            # spawn (not fork): a fresh interpreter, so RSS and thread pools are this model's alone
            context = multiprocessing.get_context("spawn")
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),)
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.pool is None:
            return function(*args)
        try:
            return self.pool.submit(function, *args).result()
        except SlimformerError:
            raise
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise ModelError(f"the benchmark process for {self.path} died (out of memory?)") from exc


def _exit_with_parent(parent_pid: int) -> None:
    """In a benchmark process: end it when the process that started it is gone (killed mid-run), instead of
    timing on and taking the CPU from whatever runs next."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="slimformer-parent-watch", daemon=True).start()


def _current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    """Peak RSS of this process. VmHWM belongs to the address space, so a spawned child reports its own peak;
    ru_maxrss would carry the parent's peak across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
