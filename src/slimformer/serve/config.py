"""`ServeConfig`: the options of `slimformer serve`, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slimformer.errors import ConfigError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass
class ServeConfig:
    """Options of `slimformer serve`: where to listen, input limits, micro-batching, threads and the API key."""

    host: str = "127.0.0.1"  # interface to bind (loopback by default: put a proxy in front for the network)
    port: int = 8000  # TCP port
    workers: int = 1  # uvicorn worker processes, each with its own copy of the model
    max_texts_per_request: int = 64  # a request with more texts is rejected (422)
    max_chars_per_text: int = 10_000  # hard safety bound (422 beyond it); below it long texts are truncated
    max_body_bytes: int = 1_048_576  # request bodies larger than this are rejected (413) before parsing
    max_batch_size: int = 32  # most texts the predictor sees in one call
    max_wait_ms: float = 2.0  # how long a batch waits for more requests, once requests arrive together
    max_pending_texts: int = 4096  # queued texts beyond which new requests get 503 (back-pressure)
    inline_lone_requests: bool = True  # run a lone request on the event loop: no thread hop when idle
    threads: int | None = None  # predictor intra-op threads (default: (available cores - 1) / workers)
    max_length: int | None = None  # model max tokens (default: the folder's session.json, else 128)
    top_k: int = 0  # top-k list returned when a request does not ask (0: none)
    max_top_k: int = 20  # largest top_k a request may ask for
    log_level: str = "warning"  # uvicorn log level; access logs are off (they cost throughput)
    # with a key, /predict (and /metrics unless open_metrics) need `Authorization: Bearer <key>`
    api_key: str | None = field(default=None, repr=False)
    open_metrics: bool = False  # serve /metrics without the key (for a scraper inside a trusted network)
    insecure: bool = False  # allow a non-loopback bind without an API key
    graceful_timeout_s: float = 30.0  # on SIGTERM, how long in-flight requests may take before they are cut

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
