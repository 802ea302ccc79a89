"""slimformer's INT8 beside Optimum's INT8 paths and the book's PyTorch dynamic INT8, on one teacher, timed side by
side (issue #15). Run from the repository root with the main venv (`make bench-peers` does it):

    .venv/bin/python benchmarks/peers/run.py --peers-python .venv-peers/bin/python --threads 2 \\
        --queries 300 --rounds 5 [--work runs/peers] [--teacher FOLDER] [--slimformer-model FOLDER]

1. The teacher: `--teacher`, else the packaged default teacher's body with a random CLINC150 head (151 labels,
   seed 0), built in `.venv-peers` (latency does not depend on the weights).
2. slimformer's model: `--slimformer-model`, else the teacher through `slimformer export`, `optimize --level 2`
   and `quantize --method auto` (the recipe's: the fastest of dynamic / static x per-channel / per-tensor weights
   within 0.5 validation points; `--slimformer-method dynamic` for dynamic alone), with the main venv's CLI.
3. Optimum's models, built in `.venv-peers` by build.py: the export, and avx2 / avx512_vnni dynamic quantization
   of it and of ORTOptimizer's O1 / O2 / O3 graphs; a path that fails is recorded with its one-line error.
   Then the teacher in two other runtimes' INT8 (build.py runtimes): OpenVINO + NNCF (static, calibrated on
   `--calibration` training texts) and CTranslate2, with their top-1 agreement with the fp32 teacher.
4. Every model gets its own timer process (timer.py, run by its venv's python), all loaded at once. Each round
   walks the same real validation queries (slimformer.timing.sample_queries) in blocks of about `--block`, and
   every timer in turn (slimformer.timing.interleaved_latencies_ms: the first rotated from block to block) times
   the block: batch 1, tokenization included, the same thread count. Latency: median and p90 over all rounds. A
   speed-up is also taken per block (one p50 over the other within the block), then its median and a 90%
   bootstrap interval over blocks (slimformer.timing.speedup_interval).

Writes WORK/peers.json and WORK/peers.md (the markdown table).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PLAIN_LOOP = "plain tokenizers + ORT loop"
OURS = {"source": "slimformer", "int8": True}


@dataclass
class Model:
    """One model to time and how: `kind` is timer.py's --kind, `source` whose path it is (slimformer, optimum,
    torch)."""

    name: str
    python: str
    kind: str
    folder: Path
    recipe: str
    source: str
    int8: bool
    file: str = "model.onnx"
    info: dict[str, Any] = field(default_factory=dict)
    blocks: list[list[float]] = field(default_factory=list)

    @property
    def timings(self) -> list[float]:
        return [t for one_block in self.blocks for t in one_block]

    @property
    def block_p50s(self) -> list[float]:
        return [float(np.percentile(one_block, 50)) for one_block in self.blocks]


# --- building the models ----------------------------------------------------------------------------------------


def _check(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def build_teacher(work: Path, peers_python: str, data: Any) -> Path:
    from slimformer.models import resolve_model_path

    teacher = work / "teacher"
    if not (teacher / "config.json").is_file():
        labels = work / "labels.json"
        labels.write_text(json.dumps(data.train.features["label"].names))
        base = str(resolve_model_path("default"))
        build = str(HERE / "build.py")
        _check([peers_python, build, "teacher", "--base", base, "--labels", str(labels), "--output", str(teacher)])
    return teacher


def build_slimformer(work: Path, teacher: Path, data_name: str, method: str) -> Path:
    cli = str(Path(sys.executable).parent / "slimformer")
    fp32, optimized, int8 = (work / "slimformer" / name for name in ("fp32", "opt", f"opt_int8_{method}"))
    steps = [
        (fp32, [cli, "export", str(teacher), "--output", str(fp32), "--data", data_name]),
        (optimized, [cli, "optimize", str(fp32), "--output", str(optimized), "--level", "2"]),
        (int8, [cli, "quantize", str(optimized), "--output", str(int8), "--method", method, "--data", data_name]),
    ]
    for folder, command in steps:
        if not (folder / "model.onnx").is_file():
            _check(command)
    return int8


def build_optimum(work: Path, teacher: Path, peers_python: str) -> list[dict[str, Any]]:
    folder = work / "optimum"
    status = folder / "status.json"
    if not status.is_file():
        _check([peers_python, str(HERE / "build.py"), "optimum", "--teacher", str(teacher), "--output", str(folder)])
    return json.loads(status.read_text())


def build_runtimes(
    work: Path, teacher: Path, optimum: list[dict[str, Any]], peers_python: str, texts: dict[str, list[str]]
) -> list[dict[str, Any]]:
    folder = work / "runtimes"
    status = folder / "status.json"
    export = next((entry for entry in optimum if entry["name"] == "optimum-export-fp32" and entry["ok"]), None)
    if export is None:
        return [{"name": "runtimes", "ok": False, "recipe": "", "error": "Optimum's fp32 export failed"}]
    if not status.is_file():
        texts_file = work / "runtime_texts.json"
        texts_file.write_text(json.dumps(texts))
        build = [peers_python, str(HERE / "build.py"), "runtimes", "--teacher", str(teacher)]
        _check([*build, "--export", export["folder"], "--texts", str(texts_file), "--output", str(folder)])
    return json.loads(status.read_text())


def plan(
    slimformer_model: Path,
    built: str,
    teacher: Path,
    optimum: list[dict[str, Any]],
    runtimes: list[dict[str, Any]],
    peers_python: str,
) -> list[Model]:
    """Every model to time. Optimum: the fp32 export as its baseline, and each working INT8 path both in the plain
    loop (the same code as slimformer's model) and in Optimum's own runtime; its optimized fp32 graphs are only
    steps towards INT8. Other runtimes: each working INT8 build in its own runtime behind the plain tokenizer."""
    main = sys.executable
    models = [
        Model("slimformer-int8", main, "slimformer", slimformer_model, f"{built}; slimformer.predictor", **OURS),
        Model("slimformer-int8 (plain loop)", main, "onnx", slimformer_model, f"{built}; {PLAIN_LOOP}", **OURS),
    ]
    for entry in optimum:
        int8 = not entry["name"].endswith("-fp32")
        if not entry["ok"] or not (int8 or entry["name"] == "optimum-export-fp32"):
            continue
        theirs = {"source": "optimum", "int8": int8, "file": entry["file"]}
        folder, recipe = Path(entry["folder"]), entry["recipe"]
        models.append(Model(entry["name"], peers_python, "onnx", folder, f"{recipe}; {PLAIN_LOOP}", **theirs))
        if int8:
            runtime = f"{recipe}; ORTModelForSequenceClassification"
            models.append(
                Model(entry["name"] + " (Optimum runtime)", peers_python, "optimum", folder, runtime, **theirs)
            )
    for entry in runtimes:
        if entry["ok"]:
            kind = entry["name"].removesuffix("-int8")
            recipe = f"{entry['recipe']}; tokenizers + {kind}"
            runtime = {"source": "runtime", "int8": True, "file": entry["file"]}
            models.append(Model(entry["name"], peers_python, kind, Path(entry["folder"]), recipe, **runtime))
    torch_fp32 = "transformers AutoModelForSequenceClassification, eval, inference_mode"
    book = "torch.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)"
    models += [
        Model("torch-fp32", peers_python, "torch", teacher, torch_fp32, source="torch", int8=False, file=""),
        Model(
            "torch-dynamic-int8 (book)",
            peers_python,
            "torch-dynamic",
            teacher,
            book,
            source="torch",
            int8=True,
            file="",
        ),
    ]
    return models


# --- timing -----------------------------------------------------------------------------------------------------


class Timer:
    """A timer.py process holding one loaded model; `ask` sends it one command line and returns its JSON answer."""

    def __init__(self, model: Model, queries: Path, threads: int) -> None:
        self.model = model
        options = {
            "--kind": model.kind,
            "--model": model.folder,
            "--file": model.file,
            "--queries": queries,
            "--threads": threads,
        }
        command = [model.python, str(HERE / "timer.py"), *(str(x) for pair in options.items() for x in pair)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)

    def ask(self, command: str | None) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        if command is not None:
            stdin.write(command + "\n")
            stdin.flush()
        for line in stdout:
            if line.startswith("{"):  # libraries may print their own lines first
                return json.loads(line)
        raise RuntimeError(f"{self.model.name}: the timer exited (code {self.process.wait()})")

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)


def time_side_by_side(
    models: list[Model], queries_file: Path, queries: list[str], threads: int, rounds: int, warmup: int, block: int
) -> None:
    """Fill each model's `blocks` with timed blocks: every round walks the queries in blocks of about `block`, and
    each block is timed by every model in turn (slimformer.timing's interleaving: the first model rotating from
    block to block), so that the models see the same machine load within a block. `blocks` ends up with one list
    of timings per (round, block)."""
    from slimformer.timing import interleaved_latencies_ms, split_rounds

    timers = [Timer(model, queries_file, threads) for model in models]
    blocks = split_rounds(queries, math.ceil(len(queries) / block))
    turns = {"done": 0}

    def block_timer(timer: Timer) -> Any:
        def time_block(texts: list[str], block_warmup: int) -> list[float]:
            timer.ask(f"warmup {block_warmup}")  # re-warm the caches the other processes used
            timings = timer.ask("time " + json.dumps(texts))["ms"]
            turns["done"] += 1
            if turns["done"] % (len(timers) * len(blocks)) == 0:
                print(f"round {turns['done'] // (len(timers) * len(blocks))}/{rounds} done", flush=True)
            return timings

        return time_block

    try:
        for timer in timers:
            timer.model.info = timer.ask(None)["info"]  # its "ready" line
            timer.ask(f"warmup {warmup}")
        by_model = interleaved_latencies_ms({i: block_timer(t) for i, t in enumerate(timers)}, blocks * rounds, 10)
        for index, timer in enumerate(timers):
            timer.model.blocks = by_model[index]
    finally:
        for timer in timers:
            timer.close()


# --- the report -------------------------------------------------------------------------------------------------


def per_block_ratio(slower: Model, faster: Model) -> list[float]:
    """`slower`'s p50 over `faster`'s, block by block (each block was timed by both under the same load)."""
    return [s / f for s, f in zip(slower.block_p50s, faster.block_p50s, strict=True)]


def summarise(models: list[Model]) -> list[dict[str, Any]]:
    from slimformer.timing import speedup_interval

    reference = models[0]  # slimformer's INT8 in its own predictor
    reference_p50 = float(np.percentile(reference.timings, 50))
    results = []
    for model in models:
        p50 = float(np.percentile(model.timings, 50))
        results.append(
            {
                "name": model.name,
                "recipe": model.recipe,
                "venv": "main" if model.python == sys.executable else "peers",
                "kind": model.kind,
                "source": model.source,
                "int8": model.int8,
                "folder": str(model.folder),
                "file": model.file,
                "p50_ms": round(p50, 3),
                "p90_ms": round(float(np.percentile(model.timings, 90)), 3),
                "block_p50_ms": [round(p, 3) for p in model.block_p50s],
                "slimformer_speedup_p50": round(p50 / reference_p50, 3),
                "slimformer_speedup_per_block_median": speedup_interval(model.blocks, reference.blocks)["speedup"],
                "info": model.info,
            }
        )
    return results


def headline(models: list[Model]) -> list[dict[str, Any]]:
    """slimformer's INT8 against Optimum's fastest working INT8 path: both in the same plain loop (the artefacts
    alone), and each in its own runtime (slimformer.predictor against ORTModelForSequenceClassification); then
    against the fastest other runtime's INT8 (OpenVINO, CTranslate2), each in its own runtime. The per-block
    speed-up is slimformer.timing's: the median of the blocks' ratios, with a 90% bootstrap interval over blocks."""
    from slimformer.timing import speedup_interval

    ours = {model.kind: model for model in models if model.source == "slimformer"}
    comparisons = []
    for what, mine, peer_source, peer_kinds in (
        ("Optimum's best working INT8, same plain loop", ours.get("onnx"), "optimum", {"onnx"}),
        ("Optimum's best working INT8, each in its own runtime", ours.get("slimformer"), "optimum", {"optimum"}),
        ("the fastest other runtime's INT8, each in its own runtime", ours.get("slimformer"), "runtime", None),
    ):
        peers = [
            m for m in models if m.source == peer_source and m.int8 and (peer_kinds is None or m.kind in peer_kinds)
        ]
        if not peers or mine is None:
            continue
        peer = min(peers, key=lambda m: float(np.percentile(m.timings, 50)))
        ratios = per_block_ratio(peer, mine)
        interval = speedup_interval(peer.blocks, mine.blocks)
        comparisons.append(
            {
                "what": f"slimformer INT8 vs {what}",
                "ours": mine.name,
                "peer": peer.name,
                "ours_p50_ms": round(float(np.percentile(mine.timings, 50)), 3),
                "peer_p50_ms": round(float(np.percentile(peer.timings, 50)), 3),
                "p50_ratio": round(float(np.percentile(peer.timings, 50) / np.percentile(mine.timings, 50)), 3),
                "per_block": [round(r, 2) for r in ratios],
                "per_block_median": interval["speedup"],
                "per_block_interval_90": [interval["low"], interval["high"]],
            }
        )
    return comparisons


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    isa = ", ".join(name for name, present in env["isa"].items() if present)
    lines = [
        f"{env['cpu']} ({isa}), {report['threads']} threads, {report['queries']} {report['data']} queries x "
        f"{report['rounds']} rounds, interleaved in blocks of {report['block']}, batch 1, tokenization included; "
        f"{env['timestamp']}",
        "",
        "| model | how it was built / run | venv | p50 ms | p90 ms | slimformer speed-up (p50) | per-block median |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['name']} | {r['recipe']} | {r['venv']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{r['slimformer_speedup_p50']:.2f}x | {r['slimformer_speedup_per_block_median']:.2f}x |"
        )
    runtimes = sorted({f"{r['venv']}: onnxruntime {r['info']['versions']['onnxruntime']}" for r in report["results"]})
    others = sorted(
        {
            f"{name} {version}"
            for r in report["results"]
            if r["source"] == "runtime"
            for name, version in r["info"]["versions"].items()
            if name in ("openvino", "nncf", "ctranslate2") and version
        }
    )
    lines += ["", "Versions: " + "; ".join(runtimes + others) + "."]
    agreements = [
        f"{entry['name']} {entry['top1_agreement_with_fp32_teacher']:.4f}"
        for entry in report["runtimes_build"]
        if entry["ok"]
    ]
    if agreements:
        lines.append(
            "Other runtimes' top-1 agreement with the fp32 teacher (validation): " + ", ".join(agreements) + "."
        )
    if len({runtime.split(": ")[1] for runtime in runtimes}) > 1:
        lines.append("**The two venvs run different ONNX Runtime versions: the comparison mixes runtimes.**")
    failed = [entry for entry in report["optimum_build"] + report["runtimes_build"] if not entry["ok"]]
    if failed:
        lines += ["", "| peer path that failed | error |", "|---|---|"]
        lines += [f"| {entry['name']}: {entry['recipe']} | `{entry['error'].split('. ')[0]}` |" for entry in failed]
    for versus in report["headline"]:
        detail = (
            f"{versus['peer']} {versus['peer_p50_ms']:.3f} ms / {versus['ours']} {versus['ours_p50_ms']:.3f} ms; "
            f"per-block median {versus['per_block_median']:.2f}x, 90% interval "
            f"{versus['per_block_interval_90'][0]:.2f}-{versus['per_block_interval_90'][1]:.2f}x, "
            f"blocks {versus['per_block']}"
        )
        lines += ["", f"{versus['what']}: **{versus['p50_ratio']:.2f}x** at p50 ({detail})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-python", default=str(REPO / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "peers", help="models and results go here")
    parser.add_argument("--teacher", type=Path, help="PyTorch classifier folder (default: built in WORK/teacher)")
    parser.add_argument("--slimformer-model", type=Path, help="slimformer INT8 folder (default: built from it)")
    parser.add_argument(
        "--slimformer-method", default="auto", choices=("auto", "dynamic", "static"), help="quantize --method"
    )
    parser.add_argument("--data", default="clinc150", help="dataset whose validation queries are timed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=300, help="queries timed per model and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=100, help="queries each model times before the next takes over")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="which validation queries")
    parser.add_argument("--calibration", type=int, default=300, help="training texts that calibrate OpenVINO's INT8")
    args = parser.parse_args()

    from slimformer.benchmark import environment_info
    from slimformer.data import column, load_data
    from slimformer.timing import sample_queries

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = load_data(args.data)
    teacher = (args.teacher or build_teacher(work, args.peers_python, data)).resolve()
    slimformer_model = (
        args.slimformer_model or build_slimformer(work, teacher, args.data, args.slimformer_method)
    ).resolve()
    built = (
        f"the given folder {args.slimformer_model}"
        if args.slimformer_model
        else f"slimformer export → optimize --level 2 → quantize --method {args.slimformer_method}"
    )
    optimum = build_optimum(work, teacher, args.peers_python)

    queries = sample_queries(column(data.validation, "text"), args.queries, args.seed)
    calibration = sample_queries(column(data.train, "text"), args.calibration, args.seed)
    runtimes = build_runtimes(work, teacher, optimum, args.peers_python, {"calibration": calibration, "check": queries})
    queries_file = work / "queries.json"
    queries_file.write_text(json.dumps(queries))

    models = plan(slimformer_model, built, teacher, optimum, runtimes, args.peers_python)
    tick = time.perf_counter()
    time_side_by_side(models, queries_file, queries, args.threads, args.rounds, args.warmup, args.block)
    report = {
        "environment": environment_info(args.threads),
        "threads": args.threads,
        "queries": len(queries),
        "rounds": args.rounds,
        "block": args.block,
        "data": f"{data.name} validation",
        "timing_seconds": round(time.perf_counter() - tick, 1),
        "teacher": str(teacher),
        "results": summarise(models),
        "optimum_build": [{k: v for k, v in entry.items() if k != "traceback"} for entry in optimum],
        "runtimes_build": [{k: v for k, v in entry.items() if k != "traceback"} for entry in runtimes],
        "headline": headline(models),
    }
    (work / "peers.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (work / "peers.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
