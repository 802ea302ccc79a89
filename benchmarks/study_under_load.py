"""Does a whole `slimformer auto` study reach the same verdict on a loaded machine as on a quiet one? (issue 25)

Runs the same study twice, as a user would (`slimformer auto`, a fixed number of trained trials, no time budget, the
same seed): first on a quiet machine, then with another process spinning on one core for the whole run. The loaded
study runs in the quiet study's work folder with the screens and Pareto fronts remembered there moved aside (put
back afterwards), so it finds the quiet study's trained stages: a shape trained in both is not trained twice
(training does not decide the verdict, and beside the spinning process it runs 10x slower), while everything timing
decides is done afresh: the screen of every shape, each trial's speed-up, the final side-by-side benchmark on test
and the verdict. The teacher's quiet thread scaling stays remembered, as in any work folder that once saw a quiet
machine; `--forget-scaling` drops it too (a first study on a busy machine: the scaling is then only bounded, and
the screen keeps shapes the quiet one drops). Prints, for both runs, the verdict, the pick and each trial's state
and speed-up.

    .venv/bin/python benchmarks/study_under_load.py --model demo/stages/01-finetune-teacher-* --min-speedup 12 \\
        --trials 6 --output runs/study-under-load
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from slimformer.auto.candidate import SCALING_FILE
from slimformer.auto.run import PARETO_FILE
from slimformer.auto.study import SCREEN_MEMORY_FILE
from slimformer.cpu import cpu_model

TIMING_MEMORY = (SCREEN_MEMORY_FILE, PARETO_FILE)  # what a work folder remembers of its studies' timing
SCALING_MEMORY = SCALING_FILE  # the teacher's quiet thread scaling, per CPU: kept unless --forget-scaling


def run_study(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """`slimformer auto` into OUTPUT/NAME with the work folder `--work`; its auto.json, exit code, seconds (a quiet
    study already in OUTPUT/quiet is kept, not run again)."""
    output, work = args.output / name, args.work
    if name == "quiet" and (output / "auto.json").is_file():
        return {"exit_code": None, "seconds": None, "summary": json.loads((output / "auto.json").read_text())}
    command = [
        str(Path(sys.executable).with_name("slimformer")),
        "auto",
        "--model",
        str(args.model),
        "--data",
        args.data,
        "--min-speedup",
        f"{args.min_speedup:g}",
        "--max-accuracy-drop",
        f"{args.max_accuracy_drop:g}",
        "--trials",
        str(args.trials),
        "--output",
        str(output),
        "--work-dir",
        str(work),
        *args.extra,
    ]
    started = time.perf_counter()
    with (args.output / f"{name}.log").open("w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    summary = json.loads((output / "auto.json").read_text()) if (output / "auto.json").is_file() else {}
    return {"exit_code": code, "seconds": round(time.perf_counter() - started), "summary": summary}


def trial_cells(row: dict[str, Any]) -> str:
    speedup = f"{row['speedup']:.1f}x" if row.get("speedup") else "–"
    drop = f"{row['accuracy_drop_points']:.2f}" if row.get("accuracy_drop_points") is not None else "–"
    return f"{row['state']}, {speedup}, drop {drop}"


def final_cells(row: dict[str, Any]) -> str:
    """A final-benchmark row: its speed-up (and as timed, when the load was corrected for), accuracy, verdict."""
    loaded = f" (as timed {row['loaded_speedup']:.1f}x)" if row.get("loaded_speedup") else ""
    return f"{row['speedup']:.1f}x{loaded}, accuracy {row['accuracy']:.4f}, meets {row.get('meets')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the fine-tuned teacher")
    parser.add_argument("--data", default="clinc150")
    parser.add_argument("--min-speedup", type=float, default=12.0)
    parser.add_argument("--max-accuracy-drop", type=float, default=0.5)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--output", type=Path, default=Path("runs/study-under-load"))
    parser.add_argument("--work", type=Path, default=None, help="the studies' work folder (default OUTPUT/work)")
    parser.add_argument(
        "--forget-scaling",
        action="store_true",
        help="the loaded study starts without the teacher's quiet thread scaling (a first study on a busy machine)",
    )
    parser.add_argument("extra", nargs="*", help="more `slimformer auto` options, after --")
    args = parser.parse_args()
    args.work = args.work or args.output / "work"  # stage keys hold its path: both studies must name it alike
    args.output.mkdir(parents=True, exist_ok=True)

    runs = {"quiet": run_study(args, "quiet")}
    work, aside = args.work, args.output / "quiet-timing"
    aside.mkdir(exist_ok=True)
    forget = TIMING_MEMORY + ((SCALING_MEMORY,) if args.forget_scaling else ())
    for name in forget:  # the loaded study times every shape afresh; the trained stages stay
        if (work / name).exists():
            shutil.move(work / name, aside / name)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one core busy, as another job would be
    try:
        runs["loaded"] = run_study(args, "loaded")
    finally:
        hog.kill()
        hog.wait()
        for name in forget:
            if (aside / name).exists():
                shutil.move(aside / name, work / f"{name}.quiet")  # the quiet study's, beside the loaded one's

    lines = [
        f"CPU: {cpu_model()}; `slimformer auto --min-speedup {args.min_speedup:g} --max-accuracy-drop "
        f"{args.max_accuracy_drop:g} --trials {args.trials}`; loaded = one core spinning in another process",
        "",
        "| | quiet | loaded |",
        "|---|---|---|",
    ]
    summaries = {name: run["summary"] for name, run in runs.items()}

    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(str(cell(runs[n], summaries[n])) for n in ("quiet", "loaded")) + " |")

    row("exit code", lambda run, s: run["exit_code"])
    row("budget met", lambda run, s: (s.get("verdict") or {}).get("met"))
    row("pick", lambda run, s: (s.get("pick") or {}).get("trial"))
    row("minutes", lambda run, s: f"{run['seconds'] / 60:.1f}" if run["seconds"] else "(an earlier run)")
    tables = {name: {r["trial"]: r for r in s.get("trial_table", [])} for name, s in summaries.items()}
    for trial in sorted(set(tables["quiet"]) | set(tables["loaded"])):
        cells = [trial_cells(tables[n][trial]) if trial in tables[n] else "–" for n in ("quiet", "loaded")]
        lines.append(f"| trial {trial} | " + " | ".join(cells) + " |")
    finals = {name: {r["model"]: r for r in s.get("final_benchmark", [])} for name, s in summaries.items()}
    for model in dict.fromkeys([*finals["quiet"], *finals["loaded"]]):
        cells = [final_cells(finals[n][model]) if model in finals[n] else "–" for n in ("quiet", "loaded")]
        lines.append(f"| final benchmark: {model} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    (args.output / "study_under_load.md").write_text("\n".join(lines) + "\n")
    (args.output / "study_under_load.json").write_text(json.dumps(runs, indent=2, default=str))


if __name__ == "__main__":
    main()
