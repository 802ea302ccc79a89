"""Reports: `report.md` and a self-contained `report.html` comparing every variant, and the deployable folder.

Both reports open with one line a reader can act on (:func:`headline`): the final model against the teacher.
"""

from __future__ import annotations

import base64
import html
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimformer.artifacts import write_json
from slimformer.config import StageConfig, option


@dataclass
class ReportConfig(StageConfig):
    """Options of the report stage."""

    title: str = option("slimformer report", "Heading of report.md / report.html.")
    deploy: bool = option(True, "Also write the deployable OUTPUT/model/ folder.")


def comparison_rows(benchmark: dict[str, Any], baseline: str = "teacher") -> list[dict[str, Any]]:
    """One row per variant with its figures and its speed-up / shrink / accuracy delta against `baseline`."""
    results, environment = benchmark["results"], benchmark.get("environment", {})
    base = next((r for r in results if r["model"] == baseline), results[0])
    rows = []
    for r in results:
        rows.append(
            {
                "model": r["model"],
                "stage": r.get("stage", ""),
                "backend": r["backend"],
                "accuracy": r["accuracy"],
                "in_scope_accuracy": r.get("in_scope_accuracy"),
                "oos_recall": r.get("oos_recall"),
                "accuracy_delta_points": 100 * (r["accuracy"] - base["accuracy"]),
                "p50_ms": r["latency_ms"]["p50"],
                "p95_ms": r["latency_ms"]["p95"],
                "throughput_per_s": r["throughput_per_s"],
                "size_mb": r["size_mb"],
                "speedup": base["latency_ms"]["p50"] / r["latency_ms"]["p50"],
                "shrink": base["size_mb"] / r["size_mb"] if r["size_mb"] else float("nan"),
                "peak_rss_mb": r["peak_rss_mb"],
                "cpu": environment.get("cpu"),
                "threads": r.get("settings", {}).get("threads") or environment.get("threads"),
            }
        )
    return rows


def headline(rows: list[dict[str, Any]], budget: str | None = None) -> str:
    """The report's first line (markdown bold): the final model (the last row) against the teacher (the row
    named "teacher", else the first): speed-up and shrink with both numbers, accuracy change in points, and
    the CPU and threads it was measured with; `budget` (e.g. "budget: p50 ≤ 1 ms — met") is appended."""
    if not rows:
        raise ValueError("a headline needs at least one comparison row")
    base = next((r for r in rows if r["model"] == "teacher"), rows[0])
    final = rows[-1]
    if final is base:
        summary = (
            f"Final model: {final['model']} — {final['p50_ms']:.2f} ms p50, {final['size_mb']:.1f} MB, "
            f"{100 * final['accuracy']:.2f} % accuracy (no other variant measured)"
        )
    else:
        against = "the teacher" if base["model"] == "teacher" else base["model"]
        delta = f"{100 * (final['accuracy'] - base['accuracy']):+.2f}".replace("-", "−")
        summary = (
            f"Final model: {final['model']} — {_times(base['p50_ms'], final['p50_ms'], 'faster', 'slower')} than "
            f"{against} ({final['p50_ms']:.2f} vs {base['p50_ms']:.2f} ms p50), "
            f"{_times(base['size_mb'], final['size_mb'], 'smaller', 'larger')} "
            f"({final['size_mb']:.1f} vs {base['size_mb']:.1f} MB), {delta} points accuracy "
            f"({100 * final['accuracy']:.2f} vs {100 * base['accuracy']:.2f} %)"
        )
    count = final.get("threads")
    threads = f"{count} thread{'' if count == 1 else 's'}" if count else ""
    where = ", ".join(part for part in (short_cpu_name(final.get("cpu") or ""), threads) if part)
    return "**" + " · ".join(part for part in (summary, where, budget) if part) + "**"


def _times(base: float, value: float, better: str, worse: str) -> str:
    """ "11.2x faster" / "1.3x slower": how many times `value` beats `base` (smaller is better)."""
    if not value or not base:
        return f"n/a {better}"
    return f"{base / value:.1f}x {better}" if value <= base else f"{value / base:.1f}x {worse}"


def short_cpu_name(name: str) -> str:
    """A CPU model name without trademarks, clock and filler: "Intel(R) Xeon(R) Processor" -> "Intel Xeon"."""
    import re

    name = re.sub(r"\((R|TM|tm|r)\)|\bProcessor\b|(\bCPU\s*)?@.*$", " ", name)
    return " ".join(name.split())


def write_report(output: Path, benchmark: dict[str, Any], variants: list[Any], config: ReportConfig) -> Path:
    """Write report.md, report.html (images embedded) and the plots they show into `output`."""
    from slimformer.plots import write_breakdown_plot, write_history_plot, write_plot, write_size_plot

    output = Path(output)
    rows = comparison_rows(benchmark)
    images = {
        "Accuracy vs latency (bubble area = size on disk)": write_plot(
            benchmark["results"], output / "accuracy_vs_latency.png"
        ),
        "Size on disk": write_size_plot(rows, output / "sizes.png"),
    }
    histories = {v.name: v.metrics.get("history", []) for v in variants}
    history_plot = write_history_plot(histories, output / "history.png")
    if history_plot:
        images["Training history (validation accuracy per epoch)"] = history_plot
    breakdown_plot = write_breakdown_plot(benchmark["results"], output / "breakdown.png")
    if breakdown_plot:
        images["Where the time goes (batch 1, ms per query, profiled pass)"] = breakdown_plot
    search = _search_section(variants)
    environment = benchmark["environment"]
    markdown = _markdown(config.title, benchmark, rows, images, search, environment)
    (output / "report.md").write_text(markdown)
    (output / "report.html").write_text(_html(config.title, benchmark, rows, images, search, environment))
    write_json(output / "comparison.json", rows)
    return output / "report.html"


TABLE_COLUMNS = [
    ("model", "variant", "{}"),
    ("backend", "backend", "{}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("in_scope_accuracy", "in-scope acc.", "{:.4f}"),
    ("oos_recall", "OOS recall", "{:.4f}"),
    ("accuracy_delta_points", "Δ acc. (points)", "{:+.2f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p95_ms", "p95 ms", "{:.2f}"),
    ("throughput_per_s", "batch-32 /s", "{:.0f}"),
    ("size_mb", "size MB", "{:.1f}"),
    ("speedup", "speed-up", "{:.1f}x"),
    ("shrink", "shrink", "{:.1f}x"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
]


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    return "—" if value is None else fmt.format(value)


def _environment_line(environment: dict[str, Any]) -> str:
    isa = ", ".join(k for k, v in environment["isa"].items() if v) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in environment["versions"].items() if v)
    line = (
        f"{environment['cpu']} ({environment['cpu_count']} cores; ISA: {isa}); {environment['threads']} threads; "
        f"Python {environment['python']}; {versions}; {environment['platform']}"
    )
    others = environment.get("others_cpu")
    if others is not None:
        line += f". Other processes took {100 * others:.0f} % of the CPU while the latency was timed"
        if environment.get("load_corrected"):
            line += " (p50s timed again turn about with the teacher at each model's threads, as `auto` screens)"
    return line


def _method_line(benchmark: dict[str, Any]) -> str:
    config, data = benchmark["config"], benchmark["data"]
    return (
        f"{data['name']} {data['split']} split, {data['rows']} rows. Latency: batch 1, tokenization included, "
        f"{config['latency_samples']} real queries after {config['warmup']} warm-up calls; throughput at batch "
        f"{config['batch_size']}. Each model ran in a fresh process of its own, all in the same run; the latency "
        f"queries were timed in {config.get('rounds', 1)} interleaved rounds (the models took turns), so machine "
        "noise hit every model alike, and each turn began once the previous model's threads had gone idle."
    )


def _search_section(variants: list[Any]) -> list[dict[str, Any]]:
    """The search's trials (number, state, objective values, parameters) from its `trials.csv`, if it ran."""
    import csv

    for variant in variants:
        if variant.stage == "search":
            trials = Path(variant.path).parent / "trials.csv"  # the search folder; its model is best_model/
            if not trials.is_file():
                return []
            with trials.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            keep = [
                k for k in (rows[0] if rows else {}) if k in ("number", "state") or k.startswith(("value", "params_"))
            ]
            return [{key.removeprefix("params_"): row[key] for key in keep} for row in rows]
    return []


def _markdown(title, benchmark, rows, images, search, environment) -> str:
    lines = [f"# {title}", "", headline(rows), "", _method_line(benchmark), ""]
    lines.append("| " + " | ".join(header for _, header, _ in TABLE_COLUMNS) + " |")
    lines.append("|" + "---|" * len(TABLE_COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key, fmt) for key, _, fmt in TABLE_COLUMNS) + " |")
    lines.append("")
    lines.append("Speed-up and shrink are against the teacher (PyTorch fp32) in the same run; Δ acc. in points.")
    lines.append("")
    for caption, path in images.items():
        lines += [f"## {caption}", "", f"![{caption}]({Path(path).name})", ""]
    if search:
        lines += ["## Hyperparameter search", "", "| " + " | ".join(search[0]) + " |", "|" + "---|" * len(search[0])]
        lines += ["| " + " | ".join(str(v) for v in trial.values()) + " |" for trial in search]
        lines.append("")
    lines += ["## Environment", "", _environment_line(environment), ""]
    return "\n".join(lines)


def _html(title, benchmark, rows, images, search, environment) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(header)}</th>" for _, header, _ in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(_cell(row, key, fmt))}</td>" for key, _, fmt in TABLE_COLUMNS) + "</tr>"
        for row in rows
    )
    figures = "".join(
        f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(Path(path).read_bytes()).decode()}"><figcaption>{esc(caption)}</figcaption></figure>'
        for caption, path in images.items()
    )
    search_html = ""
    if search:
        search_html = (
            "<h2>Hyperparameter search</h2><table><tr>"
            + "".join(f"<th>{esc(str(k))}</th>" for k in search[0])
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in t.values()) + "</tr>" for t in search)
            + "</table>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}"
        "figure{display:inline-block;margin:1em}img{max-width:560px}figcaption{text-align:center;color:#555}"
    )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{style}</style></head><body><h1>{esc(title)}</h1>"
        f"<p class='headline'><strong>{esc(headline(rows).strip('*'))}</strong></p>"
        f"<p>{esc(_method_line(benchmark))}</p>"
        f"<table id='comparison'><tr>{head}</tr>{body}</table>"
        "<p>Speed-up and shrink are against the teacher (PyTorch fp32) in the same run; Δ acc. in points.</p>"
        f"{figures}{search_html}<h2>Environment</h2><p>{esc(_environment_line(environment))}</p></body></html>"
    )


def write_deployable_model(
    model: Path,
    output: Path,
    benchmark: dict[str, Any],
    variants: list[Any],
    config: ReportConfig,
    threads: int | None = None,
    data: Any = None,
    producer: str = "slimformer run",
) -> Path | None:
    """Copy the final model to `output` with its session settings and a model card holding the measured numbers
    (`producer`: the command that made it). An ONNX folder also gets the lean install's `requirements.txt`.
    An ONNX model keeps the threads and spinning its stage measured on this CPU (the settings it was benchmarked
    with); measured elsewhere or not at all, they are timed here over validation queries of `data` and recorded
    in its session.json (slimformer.threads), unless `threads` fixes them."""
    from slimformer.artifacts import atomic_output_dir
    from slimformer.predictor import ONNX_FILE, SESSION_FILE, default_threads, saved_session

    if not config.deploy:
        return None
    model = Path(model)
    final = next((v for v in variants if Path(v.path) == model), None)
    row = next((r for r in comparison_rows(benchmark) if final and r["model"] == final.name), None)
    with atomic_output_dir(output) as folder:
        for item in model.iterdir():
            if item.is_file() and item.name not in ("metrics.json", SESSION_FILE):
                shutil.copy2(item, folder / item.name)
        session = {"threads": threads or default_threads(), "max_length": 64, "graph_optimization_level": "all"}
        session.update({key: value for key, value in saved_session(model).items() if value is not None})
        write_json(folder / SESSION_FILE, session)
        sweep = None
        if data is not None and threads is None and (folder / ONNX_FILE).is_file():
            sweep = _threads_measured_here(session) or _tune_threads(folder, data)
        write_json(folder / "labels.json", _labels(model))
        (folder / "README.md").write_text(_model_card(model, row, benchmark, variants, sweep, producer))
        if (folder / ONNX_FILE).is_file():
            (folder / LEAN_REQUIREMENTS_FILE).write_text("\n".join(LEAN_REQUIREMENTS) + "\n")
        write_json(folder / "metrics.json", {"stage": "deploy", "source": str(model), "benchmark": row})
    return output


def _threads_measured_here(session: dict[str, Any]) -> dict[str, Any] | None:
    """The sweep the model's stage recorded (the settings it was benchmarked with), when it ran on this CPU."""
    from slimformer.cpu import cpu_model

    sweep = session.get("thread_sweep")
    return sweep if sweep and sweep.get("cpu") == cpu_model() else None


def _tune_threads(folder: Path, data: Any) -> dict[str, Any]:
    """Threads x spinning timed over validation queries (settings are chosen on validation, never on test)."""
    from slimformer.data import column
    from slimformer.threads import TUNE_QUERIES, tune_threads
    from slimformer.timing import sample_queries

    return tune_threads(folder, sample_queries(column(data.validation, "text"), TUNE_QUERIES))


def _labels(model: Path) -> list[str]:
    from slimformer.models import classifier_labels

    return classifier_labels(model) or []


# the lean install's packages (the repository's requirements-serve.txt; a test keeps the two equal), written
# into every deployable ONNX folder so that a user holding only the folder can follow its model card
LEAN_REQUIREMENTS = (
    "numpy>=1.26",
    "onnxruntime>=1.20",
    "tokenizers>=0.20",
    "fastapi>=0.110",
    "starlette>=0.37",
    "pydantic>=2.0",
    "uvicorn>=0.29",
    "httptools>=0.6",
    "uvloop>=0.19",
    "prometheus-client>=0.20",
    "typer>=0.12",
    "pyyaml>=6",
)
LEAN_REQUIREMENTS_FILE = "requirements.txt"
SERVING_NOTE = [
    "## Serve it without PyTorch",
    "",
    "An ONNX folder needs only ONNX Runtime, `tokenizers` and the web stack: "
    "`pip install --no-deps slimformer && pip install -r requirements.txt` (this folder's file). "
    "Neither torch nor transformers is imported. Served, the `make demo` model peaks at 283 MiB of RSS while "
    "ONNX Runtime unpacks its word table and then holds 156 MiB (Intel Xeon, BENCHMARKS.md, "
    "`benchmarks/serve_footprint.py`).",
    "",
    "```bash",
    "slimformer serve model --host 0.0.0.0 --api-key-file key.txt  # or $SLIMFORMER_API_KEY, never argv",
    "curl -H \"Authorization: Bearer $(cat key.txt)\" -H 'content-type: application/json' \\",
    '     -d \'{"text": "how do i set an alarm for 7am"}\' http://HOST:8000/predict',
    "```",
    "",
    "`/healthz` and `/readyz` stay open for load balancers; without a key the server binds to loopback only "
    "(`--insecure` to override); SIGTERM finishes the requests in flight, then exits 0.",
    "",
]


def _serving_note(model: Path) -> list[str]:
    """How to serve an ONNX folder lean and behind an API key (PyTorch folders need the full install)."""
    return SERVING_NOTE if (model / "model.onnx").is_file() else []


def _model_card(
    model: Path,
    row: dict[str, Any] | None,
    benchmark: dict[str, Any],
    variants: list[Any],
    sweep: dict[str, Any] | None = None,
    producer: str = "slimformer run",
) -> str:
    lineage = " → ".join(f"{v.name} ({v.stage})" for v in variants)
    backend = "ONNX Runtime (`model.onnx`)" if (model / "model.onnx").is_file() else "PyTorch / transformers"
    lines = [
        "# slimformer model",
        "",
        f"Intent classifier produced by `{producer}`. Backend: {backend}.",
        "",
        f"Made by: {lineage}.",
        "",
        "## Use",
        "",
        "```python",
        "import slimformer",
        "predictor = slimformer.load('model')",
        "labels, scores = predictor.predict(['how do i set an alarm for 7am'])",
        "```",
        "",
        "or serve it: `slimformer serve model --port 8000`.",
        "",
        *_serving_note(model),
        *_custom_code_note(model),
        "## Measured",
        "",
    ]
    if row:
        by_kind = (
            f"; in-scope accuracy {_fmt(row['in_scope_accuracy'])}; OOS recall {_fmt(row['oos_recall'])}"
            if row.get("in_scope_accuracy") is not None
            else ""  # no out-of-scope label in this dataset
        )
        lines += [
            f"- accuracy {row['accuracy']:.4f} ({row['accuracy_delta_points']:+.2f} points vs the teacher){by_kind}",
            f"- latency p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms at batch 1 "
            f"({row['speedup']:.1f}x faster than the teacher in PyTorch fp32)",
            f"- size {row['size_mb']:.1f} MB ({row['shrink']:.1f}x smaller than the teacher)",
            f"- throughput {row['throughput_per_s']:.0f} queries/s at batch 32",
        ]
    if sweep:
        best = sweep["best"]
        lines.append(
            f"- runs with {best['threads']} intra-op threads, spinning {'on' if best['spinning'] else 'off'}: the "
            f"fastest batch-1 p50 ({best['p50_ms']:.2f} ms) of 1..{sweep['cores']} threads x spinning on/off on "
            f"{sweep['cpu']} (`thread_sweep` in session.json; `slimformer tune-threads model` redoes it on another CPU)"
        )
    lines += [
        "",
        "## How it was measured",
        "",
        _method_line(benchmark),
        "",
        _environment_line(benchmark["environment"]),
    ]
    return "\n".join(lines) + "\n"


def _custom_code_note(model: Path) -> list[str]:
    """What a head-pruned PyTorch folder needs to load outside slimformer (an ONNX folder needs nothing)."""
    from slimformer.models import read_config

    if (model / "model.onnx").is_file():
        return []
    model_type = str(read_config(model).get("model_type", ""))
    if model_type == "slimbert":
        return [
            "Its attention heads were pruned (SlimBERT): plain transformers loads it with "
            "`AutoModelForSequenceClassification.from_pretrained('model', trust_remote_code=True)` from the "
            "`configuration_slimbert.py` / `modeling_slimbert.py` beside the weights (read them first).",
            "",
        ]
    if model_type.startswith("slim-"):
        return [
            f"Its attention heads were pruned (model type `{model_type}`): loading this PyTorch folder needs "
            "slimformer installed (`slimformer.load`); plain transformers has no class for it.",
            "",
        ]
    return []


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
