"""Memory of a loaded ONNX model folder: the peak while its session is made and what stays resident after it.

Each folder is loaded `--runs` times, each in a fresh Python process that has imported onnxruntime, numpy and
tokenizers first (so the figures are the model's and its session's, not the libraries'): `slimformer.load(folder)`,
then 20 predictions. The page cache is dropped before each process (root only), as `serve_footprint.py` does, and
memory is read the same way (`serve_footprint.memory_mb`). Reported: the process's peak RSS (VmHWM), its RSS
(anonymous + file-backed) after the predictions, and how much each grew from before the load; medians over the
runs. `--keep-freed` skips the predictor's `return_freed_memory()` (glibc then keeps the memory the session's load
freed) to show what it gives back.

    .venv/bin/python benchmarks/session_memory.py demo/model demo-sign/model --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from serve_footprint import drop_page_cache

from slimformer.cpu import cpu_model

CHILD = """
import json, os, sys
import numpy, onnxruntime, tokenizers  # the libraries' own memory before the first reading
import slimformer.predictor as predictor

sys.path.insert(0, sys.argv[3])
from serve_footprint import memory_mb

if sys.argv[2] == "keep":
    predictor.return_freed_memory = lambda: False
before = memory_mb(os.getpid())
model = predictor.load(sys.argv[1], threads=1)
for _ in range(20):
    model.predict(["how do i set an alarm for 7am"])
print(json.dumps({"before": before, "after": memory_mb(os.getpid())}))
"""


def measure(folder: str, keep_freed: bool) -> dict[str, float]:
    drop_page_cache()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, folder, "keep" if keep_freed else "return", str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    reading = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = reading["before"], reading["after"]
    rss_before, rss_after = before["anon_mb"] + before["file_mb"], after["anon_mb"] + after["file_mb"]
    return {
        "peak_mb": after["peak_rss_mb"],
        "peak_growth_mb": after["peak_rss_mb"] - rss_before,
        "rss_mb": rss_after,
        "rss_growth_mb": rss_after - rss_before,
        "anon_growth_mb": after["anon_mb"] - before["anon_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep-freed", action="store_true", help="do not hand freed memory back (the comparison)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; 1 thread; medians of {args.runs} fresh processes; MB = MiB")
    print("| model | peak RSS | peak growth | RSS after | RSS growth | anonymous growth |")
    print("|---|---|---|---|---|---|")
    for folder in args.folders:
        runs = [measure(folder, args.keep_freed) for _ in range(args.runs)]
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(
            f"| {folder} | {median['peak_mb']:.0f} | {median['peak_growth_mb']:.0f} | {median['rss_mb']:.0f} "
            f"| {median['rss_growth_mb']:.0f} | {median['anon_growth_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
