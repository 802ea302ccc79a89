"""Does `slimformer auto`'s screen reach the same verdict on a loaded machine as on a quiet one? (issue 25)

Takes the trained candidates of a finished study (their latency does not depend on the weights, so they stand for
the untrained shapes the screen times) and times each against the teacher exactly as the screen does
(:func:`slimformer.auto.candidate.measure`: turn about, 5 rounds, the teacher at the candidate's thread count and
its thread scaling timed once on the quiet machine, the median of round ratios with a 90 % interval), first on a
quiet machine, then with a background process spinning on one core. For each budget it
prints the screen's verdict both times: kept, or dropped (even the interval's fast end misses by the margin).

    .venv/bin/python benchmarks/screen_under_load.py --study runs/auto12 \\
        --teacher demo/stages/01-finetune-teacher-710ff7845f49 --budgets 12 25 40

Without a study, `--folders FOLDER:THREADS ...` names the ONNX candidates (e.g. `make demo`'s model at 1 and 2
threads).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from slimformer.auto.candidate import SCALING_FILE, TeacherClock, measure
from slimformer.auto.config import AutoConfig
from slimformer.auto.study import screen_verdict, summarise_screen
from slimformer.cpu import cpu_model
from slimformer.data import column, load_data


def candidates(study_dir: Path) -> list[dict[str, Any]]:
    """The completed trials of the study in `study_dir`: number, folder, threads."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{study_dir.resolve() / 'study.db'}"
    name = optuna.get_all_study_summaries(url)[0].study_name
    study = optuna.load_study(study_name=name, storage=url)
    return [
        {"trial": t.number, "folder": t.user_attrs["folder"], "threads": t.params["threads"]}
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE"
    ]


def folder_row(index: int, spec: str) -> dict[str, Any]:
    """`DIR:N` as a candidate row (numbered by its place on the command line)."""
    folder, _, threads = spec.rpartition(":")
    if not folder or not threads.isdigit():
        raise SystemExit(f"error: --folders takes DIR:THREADS, got {spec!r}")
    return {"trial": index, "folder": folder, "threads": int(threads)}


def screens(rows: list[dict[str, Any]], teacher: TeacherClock, texts: list[str]) -> dict[int, dict[str, Any]]:
    return {
        row["trial"]: summarise_screen(measure(Path(row["folder"]), texts, row["threads"], teacher)) for row in rows
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--study", type=Path, help="an `auto` output folder (its study.db)")
    source.add_argument("--folders", nargs="+", help="ONNX model folders with the threads to time them at: DIR:N")
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--budgets", nargs="+", type=float, default=[12.0, 25.0])
    parser.add_argument("--queries", type=int, default=200, help="validation queries timed (auto's default)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    texts = column(load_data("clinc150").validation, "text")[: args.queries]
    # the teacher's thread scaling is timed on the quiet machine and remembered, as in a study's work folder
    memory = Path(tempfile.mkdtemp()) / SCALING_FILE
    teacher = TeacherClock(args.teacher, "teacher", memory)
    rows = candidates(args.study) if args.study else [folder_row(i, spec) for i, spec in enumerate(args.folders)]
    quiet = screens(rows, teacher, texts)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one core busy, as another job would be
    try:
        loaded = screens(rows, teacher, texts)
    finally:
        hog.kill()
        hog.wait()

    lines = [
        f"CPU: {cpu_model()}; {len(texts)} validation queries, 5 rounds turn about with the teacher at the "
        "candidate's thread count; loaded = one core spinning in another process",
        "",
        "| trial | threads | quiet: speed-up (90 % interval) | loaded: speed-up (90 % interval) "
        "| others' CPU, loaded | " + " | ".join(f"{b:g}x: quiet / loaded" for b in args.budgets) + " |",
        "|---|---|---|---|---|" + "---|" * len(args.budgets),
    ]
    for row in rows:
        q, lo = quiet[row["trial"]], loaded[row["trial"]]
        verdicts = []
        for budget in args.budgets:
            config = AutoConfig(min_speedup=budget)
            verdicts.append(" / ".join("dropped" if screen_verdict(s, config) else "kept" for s in (q, lo)))
        quiet_text = f"{q['speedup']:.1f}x ({q['speedup_low']:.1f}-{q['speedup_high']:.1f})"
        loaded_text = f"{lo['speedup']:.1f}x ({lo['speedup_low']:.1f}-{lo['speedup_high']:.1f})"
        others = f"{100 * (lo['others_cpu'] or 0):.0f} %"
        name = str(row["trial"]) if args.study else row["folder"]
        cells = [name, str(row["threads"]), quiet_text, loaded_text, others, *verdicts]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"quiet": quiet, "loaded": loaded, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
