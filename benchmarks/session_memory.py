"""Memory of a loaded ONNX model folder: the peak while its session is made and what stays resident after it.

Each folder is loaded `--runs` times, each in a fresh Python process that has imported onnxruntime, numpy and
tokenizers first (so the figures are the model's and its session's, not the libraries'): `slimformer.load(folder)`,
then 20 predictions. Reported: the process's peak RSS (VmHWM), its RSS and anonymous RSS after the predictions,
and how much each grew from before the load; medians over the runs. `--keep-freed` skips the predictor's
`return_freed_memory()` (glibc then keeps the memory the session's load freed) to show what it gives back.

    .venv/bin/python benchmarks/session_memory.py demo/model demo-sign/model --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from slimformer.cpu import cpu_model

CHILD = """
import json, re, sys
import numpy, onnxruntime, tokenizers  # the libraries' own memory before the first reading
import slimformer.predictor as predictor

def status(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

if sys.argv[2] == "keep":
    predictor.return_freed_memory = lambda: False
before = {"rss": status("VmRSS"), "anon": status("RssAnon"), "peak": status("VmHWM")}
model = predictor.load(sys.argv[1], threads=1)
for _ in range(20):
    model.predict(["how do i set an alarm for 7am"])
after = {"rss": status("VmRSS"), "anon": status("RssAnon"), "peak": status("VmHWM")}
print(json.dumps({"before": before, "after": after}))
"""


def measure(folder: str, keep_freed: bool) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, folder, "keep" if keep_freed else "return"],
        capture_output=True,
        text=True,
        check=True,
    )
    reading = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = reading["before"], reading["after"]
    return {
        "peak_mb": after["peak"],
        "peak_growth_mb": after["peak"] - before["rss"],
        "rss_mb": after["rss"],
        "rss_growth_mb": after["rss"] - before["rss"],
        "anon_growth_mb": after["anon"] - before["anon"],
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
