"""Bounded load test of `slimformer serve` on loopback, against a server this script starts and stops itself.

    python benchmarks/load_test.py --model runs/teacher --requests 10000 --concurrency 16 --output load.json

What it does, in one run over the same real CLINC150 test queries:

1. loads the model in this process as the baseline (`predictor.predict([text])`, the same thread settings);
2. starts `slimformer serve MODEL --port P` on 127.0.0.1 as a subprocess and waits for /readyz;
3. direct vs sequential: direct single-text calls and single-text requests sent one after another
   (concurrency 1), interleaved in rounds so background load hits both alike — server p50 / direct p50 is
   the cost of serving a request over HTTP. The requests go out three times: from httpx (a full async
   client), from a keep-alive `http.client` connection and from a bare keep-alive socket, whose own cost is
   smallest, so its p50 is closest to what the server adds;
4. load: `--requests` single-text requests at `--concurrency` (every request has a `--timeout`), reporting
   throughput, p50/p95/p99 and errors, and the server's own batch-size histogram from /metrics;
5. direct batched throughput (batches of `--concurrency` texts: the most micro-batching could gain);
6. stops the server, prints a markdown table and writes the JSON (`--output`).

Nothing leaves 127.0.0.1; the request count is fixed, so the run ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HOST = "127.0.0.1"  # loopback only: a load test must not reach anything else


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="Model folder to serve (PyTorch checkpoint or ONNX).")
    parser.add_argument("--requests", type=int, default=10_000, help="Requests in the load phase.")
    parser.add_argument("--concurrency", type=int, default=16, help="Requests in flight in the load phase.")
    parser.add_argument(
        "--sequential-requests",
        type=int,
        default=1000,
        help="Single-text requests sent one at a time (latency vs the direct call).",
    )
    parser.add_argument("--direct-calls", type=int, default=1000, help="Direct predictor calls timed.")
    parser.add_argument("--warmup", type=int, default=50, help="Untimed requests / calls before each phase.")
    parser.add_argument("--timeout", type=float, default=30.0, help="Per-request timeout in seconds.")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="Seconds to wait for /readyz.")
    parser.add_argument("--port", type=int, default=0, help="Server port (0: pick a free one).")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Predictor threads, server and direct (default: the server's default).",
    )
    parser.add_argument("--max-batch-size", type=int, default=32, help="Server micro-batch limit.")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="Server micro-batch max wait.")
    parser.add_argument("--workers", type=int, default=1, help="Server worker processes.")
    parser.add_argument("--data", default="clinc150", help="Dataset spec for slimformer.data.load_data.")
    parser.add_argument("--split", default="test", help="Split whose texts are sent.")
    parser.add_argument("--seed", type=int, default=0, help="Order of the texts.")
    parser.add_argument("--output", type=Path, default=None, help="Write the results JSON here.")
    parser.add_argument(
        "--server-bin",
        type=Path,
        default=None,
        help="The `slimformer` executable that serves (e.g. .venv-lean/bin/slimformer; default: this venv's).",
    )
    args = parser.parse_args(argv)
    for name in ("requests", "concurrency", "direct_calls", "sequential_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def load_texts(spec: str, split: str, seed: int) -> list[str]:
    """The split's texts, shuffled with `seed`."""
    from slimformer.data import column, load_data
    from slimformer.timing import sample_queries

    texts = column(load_data(spec).split(split), "text")
    return sample_queries(texts, len(texts), seed)


def cycle(texts: list[str], count: int, offset: int = 0) -> list[str]:
    return [texts[(offset + i) % len(texts)] for i in range(count)]


def latency_summary(latencies_s: list[float]) -> dict[str, float]:
    """Mean and percentiles in milliseconds. Its own, not slimformer.timing's: HTTP request latencies in seconds,
    a phase may have none (every request failed), and the report's keys are `*_ms`."""
    if not latencies_s:
        return {"mean_ms": float("nan"), "p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    ms = np.asarray(latencies_s) * 1000.0
    return {
        "mean_ms": float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


# --- 1. the direct predictor ------------------------------------------------------------------------------------


class DirectPredictor:
    """The model loaded in this process the way the server loads it (same threads, same max_length)."""

    def __init__(self, model: str, threads: int | None) -> None:
        from slimformer.predictor import load

        self.predictor = load(model, threads=threads)  # max_length capped at the model's limit, as the server's

    def time_single(self, texts: list[str]) -> list[float]:
        """Seconds of each `predictor.predict([text])` call (slimformer.timing's batch-1 loop, no warm-up)."""
        from slimformer.timing import batch1_latencies_ms

        return [ms / 1000 for ms in batch1_latencies_ms(self.predictor, texts, warmup=0)]

    def batched_throughput(self, texts: list[str], batch_size: int) -> dict[str, Any]:
        """Texts per second when the predictor is given `batch_size` texts per call."""
        started = time.perf_counter()
        for offset in range(0, len(texts), batch_size):
            self.predictor.predict(texts[offset : offset + batch_size])
        return {
            "batch_size": batch_size,
            "texts": len(texts),
            "throughput_rps": len(texts) / (time.perf_counter() - started),
        }


class SequentialClient:
    """Single-text `POST /predict` requests, one at a time, on one keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.connect()

    def connect(self) -> None:
        raise NotImplementedError

    def post(self, body: bytes) -> int:
        """Send one request and read the whole response; its status code."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def send(self, texts: list[str]) -> dict[str, Any]:
        # its own loop, not slimformer.timing: HTTP requests to the server, timed client-side, errors counted
        latencies: list[float] = []
        errors: dict[str, int] = {}
        started = time.perf_counter()
        cpu_started = time.process_time()
        for text in texts:
            body = json.dumps({"text": text}).encode()
            tick = time.perf_counter()
            try:
                status = self.post(body)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                self.close()
                self.connect()
                continue
            if status == 200:
                latencies.append(time.perf_counter() - tick)
            else:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
        return run_summary(len(texts), 1, latencies, errors, time.perf_counter() - started, cpu_started)


class HttpClientConnection(SequentialClient):
    """The standard library's `http.client` (it parses headers with the `email` package: some client work)."""

    def connect(self) -> None:
        self.connection = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)

    def post(self, body: bytes) -> int:
        self.connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.connection.close()


class RawSocketConnection(SequentialClient):
    """A bare socket: the request written as bytes, the response read up to its Content-Length. The least
    client-side work there is, so its latency is the closest an outside client gets to the server's own."""

    def connect(self) -> None:
        self.sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def post(self, body: bytes) -> int:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._receive()
        header, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
        while len(rest) < length:
            rest += self._receive()
        self.buffer = rest[length:]
        return status

    def _receive(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 2. the server -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def serve_command(args: argparse.Namespace, port: int) -> list[str]:
    """`slimformer serve MODEL --port P ...`, through the console script next to this Python when it exists."""
    script = args.server_bin or Path(sys.executable).with_name("slimformer")
    prefix = (
        [str(script)]
        if script.is_file()
        else ([shutil.which("slimformer")] if shutil.which("slimformer") else [sys.executable, "-m", "slimformer.cli"])
    )
    command = [
        *prefix,
        "serve",
        args.model,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-wait-ms",
        str(args.max_wait_ms),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return command


def start_server(command: list[str], log_path: Path) -> subprocess.Popen:
    log = log_path.open("wb")
    # its own process group, so stopping it also stops uvicorn's worker processes
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(server: subprocess.Popen) -> int | None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    return server.returncode


async def wait_ready(client: Any, server: subprocess.Popen, timeout: float, log_path: Path) -> float:
    """Poll /readyz until it answers 200; returns the seconds it took."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if (await client.get("/readyz")).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.25)
    raise TimeoutError(f"server not ready after {timeout:.0f} s")


async def send_all(client: Any, texts: list[str], concurrency: int, timeout: float) -> dict[str, Any]:
    """Send one single-text request per text, `concurrency` at a time; latencies of the successful ones (HTTP
    requests in flight together: nothing slimformer.timing's batch-1 loop could time)."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(texts):
            text = texts[next_index]
            next_index += 1
            started = time.perf_counter()
            try:
                response = await client.post("/predict", json={"text": text}, timeout=timeout)
                ok = response.status_code == 200 and len(response.json()["predictions"]) == 1
                key = None if ok else f"HTTP {response.status_code}"
            except httpx.TimeoutException:
                key = "timeout"
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                key = type(exc).__name__
            if key is None:
                latencies.append(time.perf_counter() - started)
            else:
                errors[key] = errors.get(key, 0) + 1

    cpu_started, wall_started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return run_summary(len(texts), concurrency, latencies, errors, time.perf_counter() - wall_started, cpu_started)


def run_summary(
    requests: int, concurrency: int, latencies: list[float], errors: dict[str, int], wall_s: float, cpu_started: float
) -> dict[str, Any]:
    """Counts, throughput and latency percentiles of one request phase (latencies_s kept for merging rounds)."""
    return {
        "requests": requests,
        "concurrency": concurrency,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_s": wall_s,
        "throughput_rps": requests / wall_s,
        **latency_summary(latencies),
        "client_cpu_s": time.process_time() - cpu_started,
        "latencies_s": latencies,
    }


def batch_histogram(metrics_text: str) -> dict[str, float]:
    """Micro-batch count and mean size from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = ("slimformer_batch_size_count", "slimformer_batch_size_sum")
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name in wanted
    }
    count, total = values.get("slimformer_batch_size_count", 0.0), values.get("slimformer_batch_size_sum", 0.0)
    return {"batches": count, "texts": total, "mean_batch_size": total / count if count else float("nan")}


async def measure(args: argparse.Namespace, texts: list[str], log_path: Path) -> dict[str, Any]:
    """Direct calls and server requests over the same texts; the server is started and stopped here.

    The direct single-text calls and the sequential requests are interleaved in rounds, so a change in
    background load affects both sides of their ratio alike.
    """
    import httpx
    import psutil

    from slimformer.serve import ServeConfig

    # the baseline runs with the server's thread count, so the ratio measures serving, not threads
    threads = args.threads or ServeConfig(workers=args.workers).predictor_threads()
    progress(f"loading {args.model} in this process (direct baseline, {threads} threads)")
    direct = DirectPredictor(args.model, threads)
    direct.time_single(cycle(texts, args.warmup))
    port = args.port or free_port()
    command = serve_command(args, port)
    progress(f"starting: {' '.join(command)}")
    server = start_server(command, log_path)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    result: dict[str, Any] = {"command": " ".join(command)}
    try:
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits, timeout=args.timeout) as client:
            result["startup_s"] = await wait_ready(client, server, args.startup_timeout, log_path)
            result["info"] = (await client.get("/info")).json()
            process = psutil.Process(server.pid)
            await send_all(client, cycle(texts, args.warmup), args.concurrency, args.timeout)

            progress(
                f"direct calls ({args.direct_calls}) interleaved with sequential requests "
                f"({args.sequential_requests}) in {ROUNDS} rounds"
            )
            # its own rounds, not slimformer.timing's interleaving: the HTTP phases report errors and throughput
            # as well as latencies, and the direct calls and the requests may number differently per round
            direct_latencies: list[float] = []
            sequential: list[dict[str, Any]] = []
            light, raw = HttpClientConnection(port, args.timeout), RawSocketConnection(port, args.timeout)
            light.send(cycle(texts, args.warmup))
            raw.send(cycle(texts, args.warmup))
            sequential_light: list[dict[str, Any]] = []
            sequential_raw: list[dict[str, Any]] = []
            for round_index in range(ROUNDS):
                direct_latencies += direct.time_single(_round_slice(texts, args.direct_calls, round_index))
                sequential.append(
                    await send_all(client, _round_slice(texts, args.sequential_requests, round_index), 1, args.timeout)
                )
                sequential_light.append(light.send(_round_slice(texts, args.sequential_requests, round_index)))
                sequential_raw.append(raw.send(_round_slice(texts, args.sequential_requests, round_index)))
            light.close()
            raw.close()
            result["direct"] = {
                "calls": len(direct_latencies),
                **latency_summary(direct_latencies),
                "throughput_rps": len(direct_latencies) / sum(direct_latencies),
                "settings": direct.predictor.settings(),
            }
            result["sequential"] = _merge_runs(sequential)
            result["sequential_light"] = _merge_runs(sequential_light)
            result["sequential_raw"] = _merge_runs(sequential_raw)

            progress(f"load: {args.requests} requests at concurrency {args.concurrency}")
            before = batch_histogram((await client.get("/metrics")).text)
            server_cpu = _cpu_seconds(process)
            load_texts_ = cycle(texts, args.requests, offset=args.sequential_requests)
            result["load"] = await send_all(client, load_texts_, args.concurrency, args.timeout)
            result["load"].pop("latencies_s")
            result["load"]["server_cpu_s"] = _cpu_seconds(process) - server_cpu
            after = batch_histogram((await client.get("/metrics")).text)
            batches, batched = after["batches"] - before["batches"], after["texts"] - before["texts"]
            result["load"]["micro_batches"] = batches
            result["load"]["mean_batch_size"] = batched / batches if batches else float("nan")

            progress(f"direct batched throughput (batches of {args.concurrency})")
            result["direct"]["batched"] = direct.batched_throughput(
                cycle(texts, min(args.direct_calls, 1024)), args.concurrency
            )
    finally:
        progress("stopping the server")
        result["server_exit_code"] = stop_server(server)
    return result


ROUNDS = 5  # direct / sequential alternations


def _round_slice(texts: list[str], total: int, round_index: int) -> list[str]:
    # the same texts for the direct calls and the sequential requests of a round
    per_round = max(1, total // ROUNDS)
    return cycle(texts, per_round, offset=round_index * per_round)


def _merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [value for run in runs for value in run.pop("latencies_s")]
    errors: dict[str, int] = {}
    for run in runs:
        for key, count in run["error_kinds"].items():
            errors[key] = errors.get(key, 0) + count
    wall_s = sum(run["wall_s"] for run in runs)
    requests = sum(run["requests"] for run in runs)
    return {
        "requests": requests,
        "concurrency": 1,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_s": wall_s,
        "throughput_rps": requests / wall_s,
        **latency_summary(latencies),
        "client_cpu_s": sum(run["client_cpu_s"] for run in runs),
    }


def _cpu_seconds(process: Any) -> float:
    """User + system CPU seconds of the server and its worker processes."""
    processes = [process, *process.children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in processes)


# --- report ------------------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import httpx
    import uvicorn

    from slimformer.predictor import default_threads

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": default_threads(),
        "processor": platform.processor(),
        "uvicorn": uvicorn.__version__,
        "httpx": httpx.__version__,
        "uvloop": _version("uvloop"),
        "httptools": _version("httptools"),
        # other work on the machine skews every number: the 1-minute load average says how much there was
        "load_average_1m": os.getloadavg()[0],
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def markdown_table(report: dict[str, Any]) -> str:
    direct, server = report["direct"], report["server"]
    seq, light, raw, load = server["sequential"], server["sequential_light"], server["sequential_raw"], server["load"]
    rows = [
        (
            "direct `predict([text])`",
            direct["calls"],
            1,
            0,
            direct["throughput_rps"],
            direct["p50_ms"],
            direct["p95_ms"],
            direct["p99_ms"],
            "-",
        ),
        (
            f"direct `predict(batch of {direct['batched']['batch_size']})`",
            direct["batched"]["texts"],
            "-",
            0,
            direct["batched"]["throughput_rps"],
            float("nan"),
            float("nan"),
            float("nan"),
            direct["batched"]["batch_size"],
        ),
        (
            "server, sequential",
            seq["requests"],
            1,
            seq["errors"],
            seq["throughput_rps"],
            seq["p50_ms"],
            seq["p95_ms"],
            seq["p99_ms"],
            "-",
        ),
        (
            "server, sequential (http.client keep-alive)",
            light["requests"],
            1,
            light["errors"],
            light["throughput_rps"],
            light["p50_ms"],
            light["p95_ms"],
            light["p99_ms"],
            "-",
        ),
        (
            "server, sequential (raw socket keep-alive)",
            raw["requests"],
            1,
            raw["errors"],
            raw["throughput_rps"],
            raw["p50_ms"],
            raw["p95_ms"],
            raw["p99_ms"],
            "-",
        ),
        (
            "server, load",
            load["requests"],
            load["concurrency"],
            load["errors"],
            load["throughput_rps"],
            load["p50_ms"],
            load["p95_ms"],
            load["p99_ms"],
            f"{load['mean_batch_size']:.1f}",
        ),
    ]
    lines = [
        "| run | requests | concurrency | errors | throughput (req/s) | p50 ms | p95 ms | p99 ms | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, count, conc, errors, rps, p50, p95, p99, batch in rows:
        cells = [
            f"{v:.2f}" if isinstance(v, float) and v == v else ("-" if isinstance(v, float) else str(v))
            for v in (p50, p95, p99)
        ]
        lines.append(f"| {name} | {count} | {conc} | {errors} | {rps:.1f} | {' | '.join(cells)} | {batch} |")
    ratios = report["ratios"]
    lines += [
        "",
        f"- server p50 (sequential, raw socket) / direct p50: **{ratios['raw_p50_over_direct_p50']:.2f}x**",
        f"- server p50 (sequential, http.client) / direct p50: {ratios['light_p50_over_direct_p50']:.2f}x",
        f"- server p50 (sequential, httpx) / direct p50: {ratios['sequential_p50_over_direct_p50']:.2f}x",
        f"- server p50 (concurrency {load['concurrency']}) / direct p50: "
        f"{ratios['load_p50_over_direct_p50']:.2f}x (includes queueing behind other requests)",
        f"- server throughput (concurrency {load['concurrency']}) / direct single-call throughput: "
        f"{ratios['load_throughput_over_direct_throughput']:.2f}x",
        f"- predictor settings: {json.dumps(report['server']['info'].get('predictor', {}))}",
        f"- machine: {report['environment']['cpus']} CPUs, 1-min load average "
        f"{report['environment']['load_average_1m_before']:.1f} before / "
        f"{report['environment']['load_average_1m']:.1f} after (other processes share the CPUs)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    load_average_before = os.getloadavg()[0]
    texts = load_texts(args.data, args.split, args.seed)
    log_path = Path(args.output).with_suffix(".server.log") if args.output else Path(os.devnull)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    measured = asyncio.run(measure(args, texts, log_path))
    direct = measured.pop("direct")
    server, load = measured, measured["load"]
    report = {
        "model": args.model,
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": {**environment(), "load_average_1m_before": load_average_before},
        "texts": {"data": args.data, "split": args.split, "distinct": len(texts)},
        "direct": direct,
        "server": server,
        "ratios": {
            "raw_p50_over_direct_p50": server["sequential_raw"]["p50_ms"] / direct["p50_ms"],
            "light_p50_over_direct_p50": server["sequential_light"]["p50_ms"] / direct["p50_ms"],
            "sequential_p50_over_direct_p50": server["sequential"]["p50_ms"] / direct["p50_ms"],
            "load_p50_over_direct_p50": load["p50_ms"] / direct["p50_ms"],
            "load_throughput_over_direct_throughput": load["throughput_rps"] / direct["throughput_rps"],
        },
    }
    print(markdown_table(report))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nresults written to {args.output}")
    sequential_errors = sum(server[k]["errors"] for k in ("sequential", "sequential_light", "sequential_raw"))
    if load["errors"] or sequential_errors:
        print(f"errors: load {load['error_kinds']}, sequential {server['sequential']['error_kinds']}", file=sys.stderr)
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(1 if report["server"]["load"]["errors"] or report["server"]["sequential"]["errors"] else 0)
