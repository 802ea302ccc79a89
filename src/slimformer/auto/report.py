"""`slimformer auto`'s report: a headline, the Pareto front (accuracy vs speed-up, bubble = size, the budget
drawn), the final side-by-side benchmark on test, and every trial."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from slimformer.auto.config import AutoConfig
from slimformer.report import TABLE_COLUMNS

# the run report's columns (slimformer.report.TABLE_COLUMNS) without the backend, throughput and memory, and whether
# each finalist meets the budget on test
FINAL_COLUMNS = [
    *(column for column in TABLE_COLUMNS if column[0] not in ("backend", "throughput_per_s", "peak_rss_mb")),
    ("test_drop_interval", "drop 90 % interval (test)", "{}"),
    ("meets", "meets budget (test)", "{}"),
]
TRIAL_COLUMNS = [
    ("trial", "trial", "{}"),
    ("state", "state", "{}"),
    ("validation_accuracy", "val. accuracy", "{:.4f}"),
    ("accuracy_drop_points", "drop vs teacher (points)", "{:.2f}"),
    ("drop_interval", "drop 90 % interval", "{}"),
    ("validation_in_scope", "val. in-scope", "{:.4f}"),
    ("validation_oos_recall", "val. OOS recall", "{:.4f}"),
    ("p50_ms", "p50 ms", "{:.3f}"),
    ("speedup", "speed-up", "{:.1f}x"),
    ("size_mb", "size MB", "{:.1f}"),
    ("meets_budget", "meets (val.)", "{}"),
    ("shape", "shape", "{}"),
    ("training", "training", "{}"),
    ("seconds", "seconds", "{:.0f}"),
    ("note", "note", "{}"),
]
SHAPE_KEYS = ("layers", "heads_fraction", "ffn_fraction", "vocab_clusters", "quantization", "per_channel", "threads")


def headline(
    rows: list[dict[str, Any]], final: dict[str, Any] | None, verdict: dict[str, Any], config: AutoConfig
) -> str:
    """The run report's headline (:func:`slimformer.report.headline`) for the pick, with the budget verdict."""
    from slimformer.report import headline as run_headline

    if final is None:
        return f"**No candidate met the budget ({config.budget_text}) on validation** · the closest are below"
    met = "met on validation and test" if verdict["met"] else "met on validation, NOT on test"
    if "confidence" in verdict:
        met += f" (test drop within the tolerance with {100 * verdict['confidence']:.0f} % confidence)"
    teacher = next(r for r in rows if r["model"] == "teacher")
    return run_headline([teacher, final], budget=f"budget {config.budget_text}: {met}")


def write_pareto_plot(
    trials: list[dict[str, Any]],
    front: list[int],
    pick: int | None,
    teacher: dict[str, float],
    config: AutoConfig,
    path: Path,
) -> Path:
    """Validation accuracy vs speed-up of every trained trial (bubble area = size), front joined, budget drawn.
    Speed-ups, each timed turn about with the teacher, as the front and the pick compare them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t["validation_accuracy"] is not None and t.get("speedup") is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if done:
        sizes = [max(20.0, 6 * t["size_mb"]) for t in done]
        colors = ["tab:green" if t["meets_budget"] else "tab:gray" for t in done]
        ax.scatter(
            [t["speedup"] for t in done], [100 * t["validation_accuracy"] for t in done], s=sizes, c=colors, alpha=0.55
        )
        on_front = sorted((t for t in done if t["trial"] in front), key=lambda t: t["speedup"])
        ax.plot(
            [t["speedup"] for t in on_front],
            [100 * t["validation_accuracy"] for t in on_front],
            "k--",
            lw=1,
            label="Pareto front",
        )
        for t in done:  # every trained trial named, so the trials table can be read against the plot
            ax.annotate(
                f"#{t['trial']}",
                (t["speedup"], 100 * t["validation_accuracy"]),
                textcoords="offset points",
                xytext=(6, -10),
                fontsize=8,
            )
        recipe = [t for t in done if t.get("baseline")]
        if recipe:  # the enqueued first trial: the packaged recipe's choices, trained in this study
            ax.scatter(
                [recipe[0]["speedup"]],
                [100 * recipe[0]["validation_accuracy"]],
                marker="D",
                s=90,
                facecolors="none",
                edgecolors="tab:blue",
                linewidths=1.5,
                label="the packaged recipe's choices",
                zorder=4,
            )
        chosen = [t for t in done if t["trial"] == pick]
        if chosen:
            ax.scatter(
                [chosen[0]["speedup"]],
                [100 * chosen[0]["validation_accuracy"]],
                marker="*",
                s=260,
                c="tab:red",
                label="pick",
                zorder=5,
            )
    floor = 100 * teacher["accuracy"] - config.max_accuracy_drop
    ax.axhline(floor, color="tab:red", lw=1, ls=":", label=f"teacher − {config.max_accuracy_drop:g} pts")
    if config.min_speedup is not None:
        ax.axvline(config.min_speedup, color="tab:blue", lw=1, ls=":", label=f"budget {config.min_speedup:g}x")
    elif config.max_latency_ms is not None:  # in speed-up terms through the search's teacher p50
        limit = teacher["p50_ms"] / config.max_latency_ms
        ax.axvline(limit, color="tab:blue", lw=1, ls=":", label=f"budget {config.max_latency_ms:g} ms (≈{limit:.1f}x)")
    ax.set_xlabel("speed-up over the teacher (batch-1 p50, validation queries, timed turn about during the search)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("slimformer auto: trained candidates (bubble area = size on disk; green = meets the budget)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(value: Any, fmt: str) -> str:
    if value is None or value == "":
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _table_rows(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> tuple[list[str], list[list[str]]]:
    return [h for _, h, _ in columns], [[_fmt(r.get(k), f) for k, _, f in columns] for r in rows]


def trial_table(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trial rows with the shape and training parameters folded into two short columns."""
    out = []
    for t in trials:
        params = t["params"]
        shape = ", ".join(f"{k}={params[k]}" for k in SHAPE_KEYS if k in params)
        training = ", ".join(
            f"{k}={params[k]:.3g}" for k in ("epochs", "alpha", "temperature", "learning_rate") if k in params
        )
        out.append({**t, "shape": shape, "training": training})
    return out


def write_report(
    output: Path, summary: dict[str, Any], final_rows: list[dict[str, Any]], trials: list[dict[str, Any]], plot: Path
) -> None:
    """report.md and report.html (the plot embedded) in `output`."""
    sections = [
        ("Final benchmark (test split, side by side, interleaved rounds)", _table_rows(final_rows, FINAL_COLUMNS)),
        ("Every trial (validation split)", _table_rows(trial_table(trials), TRIAL_COLUMNS)),
    ]
    notes = summary["notes"]
    md = ["# slimformer auto", "", summary["headline"], "", *[f"- {n}" for n in notes], ""]
    md += ["## Pareto front", "", f"![Pareto front]({plot.name})", ""]
    for title, (header, rows) in sections:
        md += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
        md.append("")
    (output / "report.md").write_text("\n".join(md))
    esc = html.escape
    image = base64.b64encode(plot.read_bytes()).decode()
    body = [f"<h1>slimformer auto</h1><p>{_bold(esc(summary['headline']))}</p><ul>"]
    body += [f"<li>{esc(n)}</li>" for n in notes] + [
        "</ul>",
        f'<figure><img alt="Pareto front" src="data:image/png;base64,{image}"></figure>',
    ]
    for title, (header, rows) in sections:
        body.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        body.append("</table>")
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#f3f3f3}img{max-width:800px}"
    )
    (output / "report.html").write_text(
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>slimformer auto</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def _bold(text: str) -> str:
    parts = text.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def model_card_section(summary: dict[str, Any]) -> str:
    """The budget part of OUTPUT/model/README.md."""
    verdict = summary["verdict"]
    checks = ", ".join(f"{k}: {v}" for k, v in verdict["checks"].items())
    lines = [
        "## Budget (slimformer auto)",
        "",
        f"- budget: {summary['budget']}",
        f"- met: {'yes' if verdict['met'] else 'NO'} on test ({checks}); chosen on validation only, test scored once",
        *(
            [f"- confidence that the test drop is within the tolerance: {100 * verdict['confidence']:.0f} %"]
            if "confidence" in verdict
            else []
        ),
        f"- trial {summary['pick']['trial']}: {summary['pick']['params']}",
        "",
    ]
    return "\n".join(lines)
