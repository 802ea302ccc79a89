"""`serve`: answer classification requests over HTTP (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    model_dir: Annotated[str, typer.Argument(help="Model folder (PyTorch checkpoint or ONNX folder).")],
    host: Annotated[str, typer.Option(help="Interface to bind; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes, each with its own model copy.")] = 1,
    threads: Annotated[
        int | None, typer.Option(help="Predictor threads per worker (default: (cores - 1) / workers).")
    ] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Most texts per model call.")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", help="How long a micro-batch waits for more requests (load).")
    ] = 2.0,
    max_texts: Annotated[int, typer.Option("--max-texts", help="Most texts in one request.")] = 64,
    max_chars: Annotated[
        int, typer.Option("--max-chars", help="Longest text accepted (longer than max tokens is truncated).")
    ] = 10_000,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest body.")] = 1_048_576,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Model max tokens (default: the folder's, else 128).")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Top-k labels returned by default (0: none).")] = 0,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            "--api-key-file",
            help="File holding the API key (else $SLIMFORMER_API_KEY); /predict and /metrics then need "
            "'Authorization: Bearer <key>'.",
        ),
    ] = None,
    open_metrics: Annotated[
        bool, typer.Option("--open-metrics", help="Serve /metrics without the API key (for a trusted scraper).")
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback --host without an API key.")
    ] = False,
    graceful_timeout: Annotated[
        float, typer.Option("--graceful-timeout", help="Seconds in-flight requests get to finish on SIGTERM.")
    ] = 30.0,
) -> None:
    """Serve a model folder: POST /predict, GET /healthz /readyz /info /metrics /openapi.json."""
    # imported here: `slimformer --help` stays instant, and no command pulls torch in before it needs it
    from slimformer.predictor import check_folder
    from slimformer.serve import ServeConfig, check_bind, load_api_key
    from slimformer.serve import serve as run_server

    config = ServeConfig(
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_texts_per_request=max_texts,
        max_chars_per_text=max_chars,
        max_body_bytes=max_body_bytes,
        max_length=max_length,
        top_k=top_k,
        log_level=log_level,
        api_key=load_api_key(api_key_file),
        open_metrics=open_metrics,
        insecure=insecure,
        graceful_timeout_s=graceful_timeout,
    )
    config.validate()
    # before announcing a server that will not start
    check_bind(config.host, config.api_key, config.insecure)
    check_folder(model_dir)
    auth = "API key required" if config.api_key else "no API key"
    typer.echo(f"serving {model_dir} on http://{host}:{port} (workers={workers}, {auth})", err=True)
    run_server(model_dir, config)


def register(app: typer.Typer) -> None:
    app.command()(serve)
