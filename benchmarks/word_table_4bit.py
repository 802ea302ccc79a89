"""The word-embedding table in 4 bits (`quantize --word-embeddings-4bit`) against INT8, on INT8 model folders.

For each INT8 ONNX folder given, writes a copy whose word table is stored 4-bit (the quantize stage's own pass,
:func:`slimformer.onnx.embeddings.pack_word_embeddings_4bit`) under --output, then measures what a session costs
in memory: each graph loaded in a fresh process, resident memory after load and peak during it (anonymous
memory: ORT reads the file into its own buffers), the median of --repeats loads. Accuracy and batch-1 latency
come from `slimformer benchmark` on the folders side by side (the command is printed). Prints a markdown table.

    .venv/bin/python benchmarks/word_table_4bit.py demo-v3/stages/08-quantize-*/ runs/static/int8 \\
        --output runs/word-table-4bit
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

LOAD = """
import json, resource, sys, psutil, onnxruntime as ort
process = psutil.Process()
before = process.memory_info().rss
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
load_mb = (process.memory_info().rss - before) / 1e6
print(json.dumps({"load_mb": load_mb, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}))
"""


def load_memory(model: Path, repeats: int) -> dict[str, float]:
    """Median resident memory a session adds when it loads `model`, and the process's peak, over fresh processes."""
    runs = [
        json.loads(subprocess.run([sys.executable, "-c", LOAD, str(model)], capture_output=True, text=True).stdout)
        for _ in range(repeats)
    ]
    return {key: round(statistics.median(run[key] for run in runs), 1) for key in ("load_mb", "peak_mb")}


def main() -> None:
    from slimformer.onnx.embeddings import pack_word_embeddings_4bit

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="INT8 ONNX folders (model.onnx + tokenizer)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rows, compared = [], []
    for index, folder in enumerate(args.folders):
        packed = args.output / f"{index}-{folder.name}-4bit"
        shutil.copytree(folder, packed, dirs_exist_ok=True)
        summary = pack_word_embeddings_4bit(folder / "model.onnx", packed / "model.onnx")
        if summary is None:
            print(f"{folder}: no word-embedding lookup this pass handles; skipped")
            continue
        for name, model in (("INT8 table", folder), ("4-bit table", packed)):
            rows.append(
                {
                    "model": f"{folder} ({name})",
                    "size_mb": round((model / "model.onnx").stat().st_size / 1e6, 2),
                    "table_mb": round(summary["bytes_before" if model is folder else "bytes_after"] / 1e6, 2),
                    **load_memory(model / "model.onnx", args.repeats),
                }
            )
        compared += [str(folder), str(packed)]
    (args.output / "word_table_4bit.json").write_text(json.dumps(rows, indent=2))
    print("| model | file MB | word table MB | resident after load MB | peak during load MB |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['size_mb']} | {row['table_mb']} | {row['load_mb']} | {row['peak_mb']} |")
    print("\naccuracy and latency, side by side:\n  slimformer benchmark " + " ".join(compared) + " --rounds 10")


if __name__ == "__main__":
    main()
