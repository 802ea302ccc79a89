"""Run the app under uvicorn: one process or several workers, with a graceful stop on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.serve.app import create_app
from slimformer.serve.auth import API_KEY_ENV, check_bind
from slimformer.serve.config import ServeConfig

if TYPE_CHECKING:
    import fastapi

# how uvicorn workers (separate processes) find the model and config of `serve(..., workers > 1)`
MODEL_ENV = "SLIMFORMER_SERVE_MODEL"
CONFIG_ENV = "SLIMFORMER_SERVE_CONFIG"


def create_app_from_env() -> fastapi.FastAPI:
    """App factory for uvicorn worker processes: model folder and config come from the environment (the key
    from $SLIMFORMER_API_KEY, never from the config JSON)."""
    config = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    config.api_key = os.environ.get(API_KEY_ENV) or None
    return create_app(os.environ[MODEL_ENV], config)


def serve(model_dir: str | Path, config: ServeConfig | None = None) -> None:
    """Serve `model_dir` under uvicorn until SIGTERM or Ctrl-C, then stop gracefully and return.

    On the signal uvicorn stops accepting connections and lets in-flight requests finish (for up to
    `config.graceful_timeout_s`); the lifespan then drains the batcher.
    """
    import uvicorn

    from slimformer.predictor import check_folder

    config = config or ServeConfig()
    config.validate()
    check_bind(config.host, config.api_key, config.insecure)
    folder = check_folder(model_dir)  # a missing folder or tokenizer is a one-line error, not a failed startup
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "log_level": config.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": config.graceful_timeout_s,
        "ws": "none",  # no WebSocket routes: the websockets library stays unimported (0.7 MB of RSS)
    }
    with _signals_end_quietly():
        if config.workers == 1:
            uvicorn.run(create_app(folder, config), **options)
            return
        os.environ[MODEL_ENV] = str(folder)
        os.environ[CONFIG_ENV] = json.dumps({**asdict(config), "api_key": None})
        if config.api_key is not None:
            os.environ[API_KEY_ENV] = config.api_key
        uvicorn.run("slimformer.serve:create_app_from_env", factory=True, workers=config.workers, **options)


@contextlib.contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """While serving, SIGTERM and SIGINT end the server normally (exit 0).

    uvicorn handles both itself and, once it has stopped, raises the signal again for the handler that was
    installed before it; the default handlers would then kill the process (SIGTERM) or raise
    KeyboardInterrupt (SIGINT) after a clean shutdown. No-op handlers around the run make that a no-op.
    """
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
