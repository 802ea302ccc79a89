"""`ServeConfig`: the options of `slimformer serve` (its CLI is generated from these fields), validated in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimformer.config import option
from slimformer.errors import ConfigError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass
class ServeConfig:
    """Options of `slimformer serve`: where to listen, input limits, micro-batching, threads and the API key."""

    host: str = option("127.0.0.1", "Interface to bind; loopback by default (put a proxy in front for the network).")
    port: int = option(8000, "TCP port.")
    workers: int = option(1, "Worker processes, each with its own copy of the model.")
    threads: int | None = option(
        None, "Predictor threads per worker (default: the folder's tuned count, else (cores - 1) / workers)."
    )
    max_batch_size: int = option(32, "Most texts the predictor sees in one call.")
    max_wait_ms: float = option(2.0, "How long a micro-batch waits for more requests, once requests arrive together.")
    max_texts_per_request: int = option(64, "Most texts in one request (more: 422).", flag="--max-texts")
    max_chars_per_text: int = option(
        10_000,
        "Longest text accepted (longer: 422; below it, texts over max tokens are truncated).",
        flag="--max-chars",
    )
    max_body_bytes: int = option(1_048_576, "Largest request body (larger: 413, before parsing).")
    max_pending_texts: int = option(4096, "Queued texts beyond which new requests get 503 (back-pressure).")
    inline_lone_requests: bool = option(True, "Run a lone request on the event loop: no thread hop when idle.")
    max_length: int | None = option(None, "Model max tokens (default: the folder's session.json, else 128).")
    top_k: int = option(0, "Top-k labels returned when a request does not ask (0: none).")
    max_top_k: int = option(20, "Largest top_k a request may ask for.")
    log_level: str = option("warning", "uvicorn log level; access logs are off (they cost throughput).")
    # with a key, /predict (and /metrics unless open_metrics) need `Authorization: Bearer <key>`; never a CLI
    # option (it would show in the process list): --api-key-file or $SLIMFORMER_API_KEY
    api_key: str | None = option(None, "The API key.", cli=False, repr=False)
    open_metrics: bool = option(False, "Serve /metrics without the API key (for a trusted scraper).")
    insecure: bool = option(False, "Allow a non-loopback --host without an API key.")
    graceful_timeout_s: float = option(
        30.0, "Seconds in-flight requests get to finish on SIGTERM.", flag="--graceful-timeout"
    )

    def validate(self) -> None:
        """Raise ConfigError for settings that cannot work."""
        positive = {
            "port": self.port,
            "workers": self.workers,
            "max_texts_per_request": self.max_texts_per_request,
            "max_chars_per_text": self.max_chars_per_text,
            "max_body_bytes": self.max_body_bytes,
            "max_batch_size": self.max_batch_size,
            "max_pending_texts": self.max_pending_texts,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 1, got {value}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max wait must be >= 0 ms, got {self.max_wait_ms}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max length must be >= 2 tokens, got {self.max_length}")
        if not 0 <= self.top_k <= self.max_top_k:
            raise ConfigError(f"top k must be in 0..{self.max_top_k}, got {self.top_k}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty")
        if self.graceful_timeout_s <= 0:
            raise ConfigError(f"graceful timeout must be > 0 s, got {self.graceful_timeout_s}")

    def predictor_threads(self, model_dir: Any = None) -> int:
        """Intra-op threads per worker: `--threads`, else the count `slimformer tune-threads` recorded in the
        model's session.json (capped at this worker's share of the cores), else all cores but one (the event
        loop's), shared between the workers.

        The event loop parses and answers requests while a batch runs; giving the model every core makes
        the two fight over them (on 2 loaded cores, 2 threads ran the teacher ~6x slower than 1).
        """
        from slimformer.cpu import default_threads
        from slimformer.predictor import saved_session

        if self.threads:
            return self.threads
        share = max(1, default_threads() // self.workers)
        session = saved_session(model_dir) if model_dir is not None else {}
        tuned = session.get("threads") if session.get("thread_sweep") else None  # only a measured count
        return min(tuned, share) if tuned else max(1, (default_threads() - 1) // self.workers)
