"""Start-up time and peak RSS (with its anonymous and file-backed parts) of `slimformer serve MODEL` for one or
more `slimformer` executables (e.g. the full .venv against the lean .venv-lean), each started fresh `--runs`
times and sent `--requests` requests.

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
# /proc/PID/status fields and the names they are reported under
STATUS_FIELDS = {"VmHWM": "peak_rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS), RssAnon and RssFile of the process and its children (uvicorn may run the app in the
    same process)."""
    totals = dict.fromkeys(STATUS_FIELDS.values(), 0.0)
    pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            field, _, value = line.partition(":")
            if field in STATUS_FIELDS:
                totals[STATUS_FIELDS[field]] += int(value.split()[0]) / 1024
    return {name: round(value, 1) for name, value in totals.items()}


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only). The shared libraries' resident pages count in RSS, and how many
    depends on the page cache's state: a freshly installed venv maps its .so files in larger folios (15 MB more
    RSS for the same libraries, measured). Dropping the cache before each start measures every venv alike."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def one_run(binary: Path, model: str, requests: int, drop_caches: bool) -> dict:
    dropped = drop_page_cache() if drop_caches else False
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
        return {"startup_s": round(startup, 2), **memory_mb(server.pid), "page_cache_dropped": dropped}
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
    parser.add_argument(
        "--no-drop-caches", action="store_true", help="Keep the page cache (by default it is dropped, as root)."
    )
    args = parser.parse_args()
    results = {}
    for _ in range(args.runs):  # interleaved: each executable once per round
        for binary in args.bin:
            run = one_run(binary, args.model, args.requests, drop_caches=not args.no_drop_caches)
            results.setdefault(str(binary), []).append(run)
    summary = {
        name: {
            "runs": runs,
            "startup_s_median": statistics.median(r["startup_s"] for r in runs),
            **{f"{key}_median": statistics.median(r[key] for r in runs) for key in STATUS_FIELDS.values()},
        }
        for name, runs in results.items()
    }
    print(json.dumps(summary, indent=2))
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
