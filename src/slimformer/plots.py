"""Every figure slimformer draws: accuracy against latency (benchmark), size and training history (report),
and where batch-1 time goes (the profiled pass). Matplotlib is imported inside each function, headless."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PLOT_OPS = 9  # operator types the breakdown plot names (tab10 less its grey); the others are "other ops"
PLOT_OPS_PER_MODEL = 3  # of each model's slowest operator types


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plot(results: list[dict[str, Any]], path: str | Path, title: str = "Accuracy vs latency") -> Path:
    """The book's figure: accuracy against p50 latency, bubble area proportional to size, one colour each."""
    plt = _pyplot()
    fig = accuracy_latency_figure(results, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_latency_figure(results: list[dict[str, Any]], title: str = "Accuracy vs latency") -> Any:
    """The figure of :func:`write_plot`. Latency is on a log axis: the ONNX variants sit ten times left of the
    teacher and would clump at 0 on a linear one. Each bubble's label sits in a column right of the axes, at its
    bubble's height where it can and pushed apart where not, with a leader line to its bubble. Below, when the
    data has an out-of-scope label, two panels with the same colours: in-scope accuracy and out-of-scope recall
    (a gain in one can hide a loss in the other)."""
    plt = _pyplot()
    by_kind = all(r.get("in_scope_accuracy") is not None and r.get("oos_recall") is not None for r in results)
    fig = plt.figure(figsize=(8, 9.0 if by_kind else 5.5))
    grid = fig.add_gridspec(
        2 if by_kind else 1, 2, height_ratios=[1.6, 1] if by_kind else [1], hspace=0.45, wspace=0.45
    )
    ax = fig.add_subplot(grid[0, :])
    fig.subplots_adjust(left=0.09, right=0.66, top=0.94, bottom=0.07)
    largest = max(r["size_mb"] for r in results) or 1.0
    colours = plt.get_cmap("tab10")
    points = [(r["latency_ms"]["p50"], 100 * r["accuracy"]) for r in results]
    areas = [80 + 2400 * r["size_mb"] / largest for r in results]
    for i, (latency, accuracy) in enumerate(points):
        ax.scatter(latency, accuracy, s=areas[i], alpha=0.55, color=colours(i % 10), edgecolors="black", linewidths=0.6)
    ax.set_ylim(min(y for _, y in points) - 3, max(y for _, y in points) + 3)
    _log_latency_axis(ax, [x for x, _ in points])
    low, high = ax.get_ylim()
    slots = label_slots([(y - low) / (high - low) for _, y in points])
    for i, slot in enumerate(slots):
        ax.annotate(
            f"{results[i]['model']} · {results[i]['size_mb']:.1f} MB",
            xy=points[i],
            xytext=(1.03, slot),
            textcoords="axes fraction",
            va="center",
            fontsize=8,
            arrowprops={"arrowstyle": "-", "color": colours(i % 10), "lw": 0.8, "relpos": (0, 0.5), "shrinkB": 0},
        )
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title} — bubble area = size on disk")
    if by_kind:
        for column, (key, label) in enumerate(
            (("in_scope_accuracy", "in-scope accuracy (%)"), ("oos_recall", "OOS recall (%)"))
        ):
            panel = fig.add_subplot(grid[1, column])
            for i, r in enumerate(results):
                panel.scatter(r["latency_ms"]["p50"], 100 * r[key], s=40, color=colours(i % 10), edgecolors="black")
            values = [100 * r[key] for r in results]
            panel.set_ylim(min(values) - 2, max(values) + 2)
            _log_latency_axis(panel, [x for x, _ in points], "p50 ms (log scale)")
            panel.set_ylabel(label)
    return fig


def _log_latency_axis(ax: Any, latencies: list[float], label: str = "p50 latency at batch 1 (ms, log scale)") -> None:
    """p50 latency on a log axis with plain millisecond tick labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_xlim(min(latencies) / 1.6, max(latencies) * 1.6)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)
    ax.grid(alpha=0.3, which="both")


def label_slots(heights: list[float], gap: float = 0.05, low: float = 0.02, high: float = 0.98) -> list[float]:
    """Label heights (axes fraction) as close to `heights` as they can be while at least `gap` apart (less when
    too many labels to fit) and inside [low, high]; the labels keep the order of their points."""
    order = sorted(range(len(heights)), key=lambda i: -heights[i])
    gap = min(gap, (high - low) / max(1, len(heights) - 1))
    slots = [min(max(heights[i], low), high) for i in order]
    for k in range(1, len(slots)):  # push down what is too close to the label above
        slots[k] = min(slots[k], slots[k - 1] - gap)
    for k in range(len(slots) - 1, -1, -1):  # then up what fell below the bottom
        slots[k] = min(max(slots[k], low + gap * (len(slots) - 1 - k)), high)
    placed = [0.0] * len(heights)
    for i, slot in zip(order, slots, strict=True):
        placed[i] = slot
    return placed


def write_size_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Horizontal bars of size on disk per variant."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    names = [r["model"] for r in rows]
    sizes = [r["size_mb"] for r in rows]
    bars = ax.barh(names, sizes, color=plt.get_cmap("tab10").colors[: len(rows)])
    ax.bar_label(bars, labels=[f"{s:.1f} MB" for s in sizes], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("size on disk (MB)")
    ax.set_xlim(0, max(sizes) * 1.2)
    ax.set_title("Model size per variant")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_history_plot(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Validation accuracy per epoch of each training stage (fine-tuning, distillation, pruning)."""
    histories = {name: h for name, h in histories.items() if h and any("validation_accuracy" in e for e in h)}
    if not histories:
        return None
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, history in histories.items():
        points = [(e["epoch"], 100 * e["validation_accuracy"]) for e in history if "validation_accuracy" in e]
        ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Training history")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_breakdown_plot(results: list[dict[str, Any]], path: str | Path) -> Path | None:
    """A stacked horizontal bar per profiled model: tokenization, the slowest operator types, the rest (ms per
    query). None when no result has a breakdown."""
    from slimformer.profiling import breakdown_parts

    profiled = [r for r in results if r.get("breakdown")]
    if not profiled:
        return None
    plt = _pyplot()
    totals: dict[str, float] = {}
    for result in profiled:
        for op, ms in result["breakdown"]["ops_ms"].items():
            totals[op] = totals.get(op, 0.0) + ms
    # each model's slowest operator types by name (a PyTorch teacher's aten ops would crowd out the ONNX ones)
    named = {op for r in profiled for op in list(r["breakdown"]["ops_ms"])[:PLOT_OPS_PER_MODEL]}
    ops_shown = sorted(named, key=lambda op: -totals[op])[:PLOT_OPS]
    segments = list(breakdown_parts(profiled[0]["breakdown"], ops_shown))
    palette = [colour for i, colour in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # grey is tokenization's
    colours = ["#4d4d4d", *palette[: len(ops_shown)], "#d9d9d9", "#f2e6c9"]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(profiled) + 2.4))
    names = [r["model"] for r in profiled]
    left = np.zeros(len(profiled))
    for segment, colour in zip(segments, colours, strict=True):
        widths = np.clip([breakdown_parts(r["breakdown"], ops_shown)[segment] for r in profiled], 0, None)
        ax.barh(names, widths, left=left, color=colour, edgecolor="white", linewidth=0.5, label=segment)
        left += widths
    for row, result in enumerate(profiled):
        ax.text(left[row], row, f" {result['breakdown']['total_ms']:.2f} ms", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.18 or 1.0)
    ax.set_xlabel("ms per query at batch 1 (profiled pass: the profiler adds time of its own)")
    ax.set_title("Where the time goes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
