"""The book's `PerformanceBenchmark`, done honestly.

For each model folder (PyTorch checkpoint or ONNX), in a fresh process of its own so that peak memory and
thread settings are its own: accuracy metrics over the evaluation split, latency at batch 1 over real test
queries (tokenization included, after a warm-up), throughput at batch 32, size on disk, parameter count and
peak RSS. The environment (CPU, ISA flags, threads, library versions) is recorded with the results.

Latency is timed in interleaved rounds: every model's process stays alive, and the models take turns, each
timing its next slice of queries. Background load that comes and goes on a shared machine then hits every
model alike, so the ratios between them (speed-ups) hold even when the absolute numbers drift.
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
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from slimformer.config import StageConfig, option
from slimformer.errors import ConfigError, ModelError, SlimformerError

QUICK_LATENCY_SAMPLES = 200  # --quick: batch-1 queries timed


@dataclass
class BenchmarkConfig(StageConfig):
    """Options of `slimformer benchmark`."""

    threads: int | None = option(None, "Intra-op threads per model (default: every available core)")
    max_samples: int | None = option(None, "Evaluation rows used for accuracy and throughput (default: all)")
    latency_samples: int = option(1000, "Batch-1 queries timed, drawn from the evaluation split.")
    warmup: int = option(20, "Untimed batch-1 calls before timing.")
    batch_size: int = option(32, "Batch size of the throughput / accuracy pass.")
    split: str = "test"
    seed: int = option(0, "Order in which queries are drawn.")
    isolate: bool = option(True, "Run each model in a fresh process (honest peak RSS, clean thread state)")
    rounds: int = option(5, "Latency is timed in this many interleaved rounds (models take turns each round)")

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


def benchmark_models(models: list[str | Path], data: Any, config: BenchmarkConfig | None = None) -> dict[str, Any]:
    """Benchmark every model folder on `data` (a DataSplits). Returns ``{"environment": ..., "results": [...]}``."""
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
        "threads": threads,
        "config": asdict(config),
    }
    names = display_names([str(m) for m in models])
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(_ModelRunner(str(m), job, config.isolate)) for m in models]
        partial = [runner.call(prepare_model, str(m), job) for runner, m in zip(runners, models, strict=True)]
        timings: list[list[float]] = [[] for _ in models]
        for queries in latency_rounds(job["texts"], config):
            for runner, model, times in zip(runners, models, timings, strict=True):
                times += runner.call(time_queries, str(model), queries, min(config.warmup, ROUND_WARMUP))
        results = [
            {"model": name, "path": str(m), **result, **runner.call(finish_model, str(m), times)}
            for name, m, result, runner, times in zip(names, models, partial, runners, timings, strict=True)
        ]
    return {
        "environment": environment_info(threads),
        "data": {"name": data.name, "split": config.split, "rows": len(job["texts"])},
        "config": asdict(config),
        "results": results,
    }


ROUND_WARMUP = 5  # untimed calls at the start of each round (another model just had the caches)
_LOADED: dict[str, Any] = {}  # predictors of the models this process benchmarks, by path


def latency_rounds(texts: list[str], config: BenchmarkConfig) -> list[list[str]]:
    """The batch-1 queries of each round: `latency_samples` real texts in a seeded order, split evenly."""
    order = np.random.default_rng(config.seed).permutation(len(texts))
    queries = [texts[i] for i in np.resize(order, config.latency_samples)]
    return [list(chunk) for chunk in np.array_split(np.array(queries, dtype=object), config.rounds) if len(chunk)]


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
    return {
        "backend": predictor.backend,
        **quality,
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


def batch1_latencies_ms(predictor: Any, queries: list[str], warmup: int) -> list[float]:
    """Milliseconds of `predict([text])` for each query (tokenization included), after `warmup` untimed calls."""
    for text in queries[:warmup]:
        predictor.predict([text])
    timings = []
    for text in queries:
        tick = time.perf_counter()
        predictor.predict([text])
        timings.append((time.perf_counter() - tick) * 1000)
    return timings


def finish_model(path: str, timings: list[float]) -> dict[str, Any]:
    """Latency summary and this process's peak RSS; the model is released."""
    _LOADED.pop(path, None)
    return {"latency_ms": latency_summary(timings), "peak_rss_mb": round(_peak_rss_mb(), 1)}


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


def write_plot(results: list[dict[str, Any]], path: str | Path, title: str = "Accuracy vs latency") -> Path:
    """The book's figure: accuracy against p50 latency, bubble area proportional to size, one colour each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    largest = max(r["size_mb"] for r in results) or 1.0
    colours = plt.get_cmap("tab10")
    for i, result in enumerate(results):
        area = 80 + 2400 * result["size_mb"] / largest
        ax.scatter(
            result["latency_ms"]["p50"],
            100 * result["accuracy"],
            s=area,
            alpha=0.55,
            color=colours(i % 10),
            edgecolors="black",
            linewidths=0.6,
            label=f"{result['model']} ({result['size_mb']:.1f} MB)",
        )
        ax.annotate(
            result["model"],
            (result["latency_ms"]["p50"], 100 * result["accuracy"]),
            textcoords="offset points",
            xytext=(0, area**0.5 / 2 + 4),
            ha="center",
            fontsize=8,
        )
    accuracies = [100 * r["accuracy"] for r in results]
    latencies = [r["latency_ms"]["p50"] for r in results]
    ax.set_ylim(min(accuracies) - 3, max(accuracies) + 3)
    ax.set_xlim(0, max(latencies) * 1.25 + 0.5)
    ax.set_xlabel("p50 latency at batch 1 (ms)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title} — bubble area = size on disk")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, markerscale=0.4, labelspacing=1.2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_table(report: dict[str, Any]) -> None:
    """A rich table of every figure, and the environment, on the terminal."""
    from rich.console import Console
    from rich.table import Table

    environment = report["environment"]
    isa = ", ".join(name for name, present in environment["isa"].items() if present) or "none"
    table = Table(
        title=f"{report['data']['name']} {report['data']['split']} ({report['data']['rows']} rows)",
        caption=f"{environment['cpu']} · ISA: {isa} · {environment['threads']} threads · "
        f"torch {environment['versions']['torch']} · onnxruntime {environment['versions']['onnxruntime']}",
    )
    for header in (
        "model",
        "backend",
        "accuracy",
        "macro-F1",
        "in-scope",
        "OOS recall",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "mean ± std ms",
        "batch-32 /s",
        "size MB",
        "params",
        "peak RSS MB",
    ):
        table.add_column(header, justify="left" if header in ("model", "backend") else "right")
    for r in report["results"]:
        lat = r["latency_ms"]
        table.add_row(
            r["model"],
            r["backend"],
            f"{r['accuracy']:.4f}",
            f"{r['macro_f1']:.4f}",
            _maybe(r.get("in_scope_accuracy")),
            _maybe(r.get("oos_recall")),
            f"{lat['p50']:.2f}",
            f"{lat['p95']:.2f}",
            f"{lat['p99']:.2f}",
            f"{lat['mean']:.2f} ± {lat['std']:.2f}",
            f"{r['throughput_per_s']:.0f}",
            f"{r['size_mb']:.1f}",
            f"{r['parameters'] / 1e6:.1f}M",
            f"{r['peak_rss_mb']:.0f}",
        )
    # a 14-column table needs more than the 80 columns rich assumes when output is not a terminal
    Console(width=None if sys.stdout.isatty() else 200).print(table)


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
