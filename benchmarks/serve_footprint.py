"""Start-up time and peak RSS of `slimformer serve MODEL` for one or more `slimformer` executables (e.g. the
full .venv against the lean .venv-lean), each started fresh `--runs` times and sent `--requests` requests.

    .venv/bin/python benchmarks/serve_footprint.py --model demo/model \\
        --bin .venv/bin/slimformer --bin .venv-lean/bin/slimformer --runs 3
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """VmHWM of the process and its children (uvicorn may run the app in the same process)."""
    total = 0.0
    pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def one_run(binary: Path, model: str, requests: int) -> dict:
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [str(binary), "serve", model, "--host", HOST, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.02)
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"{binary} did not become ready")
        startup = time.perf_counter() - started
        body = json.dumps({"text": "please set an alarm for 7am"}).encode()
        for _ in range(requests):
            request = urllib.request.Request(
                f"http://{HOST}:{port}/predict", body, {"content-type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
        return {"startup_s": round(startup, 2), "peak_rss_mb": round(peak_rss_mb(server.pid), 1)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--bin", type=Path, action="append", required=True, help="A slimformer executable.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    for _ in range(args.runs):  # interleaved: each executable once per round
        for binary in args.bin:
            results.setdefault(str(binary), []).append(one_run(binary, args.model, args.requests))
    summary = {
        name: {
            "runs": runs,
            "startup_s_median": statistics.median(r["startup_s"] for r in runs),
            "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in runs),
        }
        for name, runs in results.items()
    }
    print(json.dumps(summary, indent=2))
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
