"""Serve a classifier folder (PyTorch checkpoint or ONNX) over HTTP with FastAPI + uvicorn.

``create_app(model_dir, config)`` builds the app: the model is loaded once in the lifespan, requests that
arrive together are micro-batched (one asyncio batching task feeds the predictor, which runs in a single
dedicated thread), and every bad input ends as a 4xx JSON error ``{"error", "message", "details"}``.

Endpoints: ``POST /predict``, ``GET /healthz`` (process alive), ``GET /readyz`` (model loaded),
``GET /info`` (model, limits, batching and thread settings), ``GET /metrics`` (Prometheus text),
``GET /openapi.json``. ``serve(model_dir, config)`` runs it under uvicorn.
"""

import asyncio
import concurrent.futures
import functools
import json
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from slimformer.errors import ConfigError

if TYPE_CHECKING:
    import fastapi

    from slimformer.predictor import Predictor

# how uvicorn workers (separate processes) find the model and config of `serve(..., workers > 1)`
MODEL_ENV = "SLIMFORMER_SERVE_MODEL"
CONFIG_ENV = "SLIMFORMER_SERVE_CONFIG"
JSON_MEDIA_TYPES = ("application/json",)
NOT_ONLY_WHITESPACE = r"[^ \t\n\r\f\v]"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
# routes named on /metrics; any other path is counted as "other" so a scan cannot blow up label cardinality
KNOWN_PATHS = ("/predict", "/healthz", "/readyz", "/info", "/metrics", "/openapi.json", "/docs", "/redoc")


@dataclass
class ServeConfig:
    """Options of `slimformer serve`: where to listen, input limits, micro-batching and threads."""

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
    busy_poll_ms: float = 1.0  # after a lone request, keep polling this long so the next finds the CPU awake
    threads: int | None = None  # predictor intra-op threads (default: (available cores - 1) / workers)
    max_length: int | None = None  # model max tokens (default: the folder's session.json, else 128)
    top_k: int = 0  # top-k list returned when a request does not ask (0: none)
    max_top_k: int = 20  # largest top_k a request may ask for
    log_level: str = "warning"  # uvicorn log level; access logs are off (they cost throughput)

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
        if not 0 <= self.busy_poll_ms <= 1000:
            raise ConfigError(f"busy poll must be in 0..1000 ms, got {self.busy_poll_ms}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max length must be >= 2 tokens, got {self.max_length}")
        if not 0 <= self.top_k <= self.max_top_k:
            raise ConfigError(f"top k must be in 0..{self.max_top_k}, got {self.top_k}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")

    def predictor_threads(self) -> int:
        """Intra-op threads per worker: all cores but one (the event loop's), shared between the workers.

        The event loop parses and answers requests while a batch runs; giving the model every core makes
        the two fight over them (on 2 loaded cores, 2 threads ran the teacher ~6x slower than 1).
        """
        from slimformer.predictor import default_threads

        return self.threads or max(1, (default_threads() - 1) // self.workers)


class ServeError(Exception):
    """A request that cannot be answered: becomes a JSON error with this status code."""

    def __init__(self, status_code: int, error: str, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.details = details


# ----------------------------------------------------------------------------------------------------
# request / response models (built per app: the limits in the OpenAPI schema are the app's own)


def _drop_default(schema: dict[str, Any]) -> None:
    # the field is optional but never null: advertising "default": null would contradict "type": "string"
    schema.pop("default", None)


def _json_integer(value: Any) -> Any:
    # an integer as JSON Schema means it: 2 and 2.0 are, true and "2" are not (pydantic's lax mode takes them)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"must be an integer, not {_json_type(value)}")
    return value


def build_models(config: ServeConfig) -> dict[str, type]:
    """Pydantic models for /predict and the other endpoints, with this config's limits in their schema."""
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

    text_type = Annotated[
        str,
        # not only ASCII whitespace; `\S` would differ between regex engines (U+0085 and friends)
        StringConstraints(min_length=1, max_length=config.max_chars_per_text, pattern=NOT_ONLY_WHITESPACE),
    ]

    class PredictRequest(BaseModel):
        """Exactly one of `text` or `texts`, and optionally `top_k`."""

        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["texts"]}]},
        )
        text: text_type = Field(
            default=None,
            json_schema_extra=_drop_default,
            description=f"One text to classify (1..{config.max_chars_per_text} characters, not only "
            "whitespace). "
            "Text longer than the model's max tokens is truncated and the prediction says so.",
        )
        texts: list[text_type] = Field(
            default=None,
            min_length=1,
            max_length=config.max_texts_per_request,
            json_schema_extra=_drop_default,
            description=f"Several texts (1..{config.max_texts_per_request}), each as for `text`.",
        )
        top_k: int | None = Field(
            default=None,
            ge=0,
            le=config.max_top_k,
            description=f"Also return the k most probable labels (0: none; default {config.top_k}; "
            "capped at the number of labels).",
        )

        _top_k_is_integer = field_validator("top_k", mode="before")(_json_integer)

        @model_validator(mode="after")
        def _exactly_one_input(self) -> "PredictRequest":
            if (self.text is None) == (self.texts is None):
                raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
            return self

        def all_texts(self) -> list[str]:
            return [self.text] if self.text is not None else list(self.texts)

    class LabelScore(BaseModel):
        label: str
        score: float = Field(ge=0.0, le=1.0, description="Softmax probability.")

    class Prediction(BaseModel):
        label: str = Field(description="Most probable label.")
        score: float = Field(ge=0.0, le=1.0, description="Its softmax probability.")
        truncated: bool = Field(
            description="True when the text had more tokens than the model's max_length: only its first "
            "max_length tokens were classified."
        )
        num_tokens: int = Field(ge=0, description="Tokens of the text (special ones too) before truncation.")
        top_k: list[LabelScore] | None = Field(default=None, description="The k most probable labels.")

    class PredictResponse(BaseModel):
        predictions: list[Prediction] = Field(description="One prediction per input text, in input order.")
        max_length: int = Field(description="Model max tokens; longer texts are truncated to it.")

    class ErrorDetail(BaseModel):
        location: str = Field(description="Where in the request, e.g. 'texts[2]' or 'body'.")
        message: str

    class ErrorResponse(BaseModel):
        error: str = Field(description="Short machine-readable code, e.g. 'validation_error'.")
        message: str = Field(description="What was wrong, for a human.")
        details: list[ErrorDetail] | None = None

    class Status(BaseModel):
        status: str

    return {
        "PredictRequest": PredictRequest,
        "PredictResponse": PredictResponse,
        "Prediction": Prediction,
        "LabelScore": LabelScore,
        "ErrorResponse": ErrorResponse,
        "Status": Status,
    }


# ----------------------------------------------------------------------------------------------------
# micro-batching


@dataclass
class TextResult:
    """What the predictor thread returns for one text."""

    label: str
    score: float
    truncated: bool
    num_tokens: int
    top_k: list[tuple[str, float]] | None


@dataclass
class _Job:
    texts: list[str]
    top_k: int
    future: asyncio.Future


class MicroBatcher:
    """Collect the texts of requests that arrive together and run them as one predictor call.

    One asyncio task forms batches; the predictor runs in a single dedicated thread, so inference never
    blocks the event loop and never runs twice at once. A batch waits up to `max_wait_ms` for more requests
    only while load shows they arrive together (the previous batch held more than one request), so a lone
    request pays no waiting time. With `inline_lone_requests`, a lone request on an idle server runs on the
    event loop itself: the hand-over to the thread and back costs more than a fast model's whole call when
    the CPUs are busy, and with nothing else queued there is nothing for the loop to do meanwhile. Such a
    request does not even pass through the batching task: `submit` yields to the loop once, so that requests
    that arrived with it can say so, and runs it at once if none did and no batch is queued or running.

    With `busy_poll_ms`, the loop keeps polling for that long after answering a lone request instead of
    sleeping in the kernel (as ONNX Runtime's own worker threads spin after their work): a thread that slept
    between requests computes the next one slower (measured on the 2-core test machine: a 0.32 ms model
    call took 0.36-0.44 ms after a 0.2-1 ms sleep). Polling stops as soon as a batch is queued or running.
    """

    def __init__(
        self,
        run_batch: Callable[[list[str], int], list[TextResult]],
        executor: concurrent.futures.Executor,
        max_batch_size: int,
        max_wait_ms: float,
        max_pending_texts: int,
        on_batch: Callable[[int, float], None] | None = None,
        inline_lone_requests: bool = False,
        busy_poll_ms: float = 0.0,
    ) -> None:
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_pending_texts = max_pending_texts
        self.on_batch = on_batch
        self.inline_lone_requests = inline_lone_requests
        self._pending: deque[_Job] = deque()
        self._pending_texts = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_batch_jobs = 0
        self._arriving = 0  # submit calls deciding whether they are alone
        self._busy = False  # a batch is running in the executor
        self.busy_poll_s = busy_poll_ms / 1000.0
        self._poll_until = 0.0  # loop time up to which the poller spins
        self._poller: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="slimformer-batcher")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with suppress(asyncio.CancelledError):
                await self._poller
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(ServeError(503, "shutting_down", "the server is shutting down"))

    @property
    def pending_texts(self) -> int:
        return self._pending_texts

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, texts: list[str], top_k: int) -> list[TextResult]:
        """Queue `texts` and wait for their results (in order)."""
        if not self.running:
            raise ServeError(503, "not_ready", "the model is not loaded")
        if self._pending_texts + len(texts) > self.max_pending_texts:
            message = f"more than {self.max_pending_texts} texts are queued; retry later"
            raise ServeError(503, "overloaded", message)
        if self.inline_lone_requests and len(texts) == 1 and self._idle():
            self._arriving += 1
            try:
                await asyncio.sleep(0)  # requests that arrived together all reach this point first
                alone = self._arriving == 1 and self._idle()
            finally:
                self._arriving -= 1
            if alone:
                return self._run_inline(texts, top_k)
        job = _Job(texts, top_k, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._pending_texts += len(texts)
        self._wakeup.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_wait_s > 0 and (self._last_batch_jobs > 1 or len(self._pending) > 1):
                await self._wait_for_more(loop.time() + self.max_wait_s)
            jobs = self._take_batch()
            self._last_batch_jobs = len(jobs)
            texts = [text for job in jobs for text in job.texts]
            top_k = max(job.top_k for job in jobs)
            started = time.perf_counter()
            inline = self.inline_lone_requests and len(jobs) == 1 and not self._pending and len(texts) == 1
            try:
                if inline:
                    results = self.run_batch(texts, top_k)
                else:
                    self._busy = True
                    try:
                        results = await loop.run_in_executor(self.executor, self.run_batch, texts, top_k)
                    finally:
                        self._busy = False
            except Exception as exc:  # a failing batch fails its requests, never the batcher
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(texts), time.perf_counter() - started)
            offset = 0
            for job in jobs:
                chunk = results[offset : offset + len(job.texts)]
                offset += len(job.texts)
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(chunk)

    def _idle(self) -> bool:
        return not self._pending and not self._busy

    def _run_inline(self, texts: list[str], top_k: int) -> list[TextResult]:
        started = time.perf_counter()
        results = self.run_batch(texts, top_k)
        self._last_batch_jobs = 1
        if self.on_batch is not None:
            self.on_batch(len(texts), time.perf_counter() - started)
        if self.busy_poll_s:
            loop = asyncio.get_running_loop()
            self._poll_until = loop.time() + self.busy_poll_s
            if self._poller is None or self._poller.done():
                self._poller = loop.create_task(self._busy_poll(), name="slimformer-busy-poll")
        return results

    async def _busy_poll(self) -> None:
        # each sleep(0) is one loop iteration whose I/O poll does not block: new requests are read at once
        loop = asyncio.get_running_loop()
        while loop.time() < self._poll_until and self._idle():
            await asyncio.sleep(0)

    async def _wait_for_more(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while self._pending_texts < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Job]:
        # whole requests only; a request larger than a batch goes alone (run_batch splits it)
        jobs = [self._pending.popleft()]
        count = len(jobs[0].texts)
        while self._pending and count + len(self._pending[0].texts) <= self.max_batch_size:
            job = self._pending.popleft()
            jobs.append(job)
            count += len(job.texts)
        self._pending_texts -= count
        return jobs


def predict_batch(predictor: "Predictor", texts: list[str], top_k: int, max_batch_size: int) -> list[TextResult]:
    """Label, score, top-k and truncation flag of each text; predictor calls of <= `max_batch_size` texts."""
    import numpy as np

    from slimformer.predictor import softmax

    top_k = min(top_k, len(predictor.labels))
    results: list[TextResult] = []
    for start in range(0, len(texts), max_batch_size):
        chunk = texts[start : start + max_batch_size]
        logits, counts = predictor.predict_logits_and_token_counts(chunk)
        num_tokens = counts or predictor.token_counts(chunk)
        probs = softmax(logits)
        # the full ranking only when a top-k list is wanted (argsort of every row costs more than the argmax)
        order = np.argsort(-probs, axis=-1)[:, :top_k] if top_k else probs.argmax(axis=-1)[:, None]
        for row in range(len(chunk)):
            best = int(order[row, 0])
            ranked = [(predictor.labels[i], float(probs[row, i])) for i in order[row, :top_k]] or None
            count = num_tokens[row]
            label, score = predictor.labels[best], float(probs[row, best])
            results.append(TextResult(label, score, count > predictor.max_length, count, ranked))
    return results


# ----------------------------------------------------------------------------------------------------
# metrics and the request guard (plain ASGI middleware: they see every request, 413s and 404s included)


class ServeMetrics:
    """Prometheus metrics in a registry of this app's own (several apps in one process do not collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "slimformer_requests",
            "HTTP requests by method, path and status code.",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "slimformer_request_latency_seconds",
            "HTTP request latency (server side).",
            ["method", "path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "slimformer_batch_size",
            "Texts per predictor call (micro-batch size).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "slimformer_batch_latency_seconds",
            "Predictor time per micro-batch.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.texts = Counter("slimformer_texts", "Texts classified.", registry=self.registry)
        self.truncated = Counter(
            "slimformer_truncated_texts", "Texts truncated to the model's max tokens.", registry=self.registry
        )
        self.pending = Gauge("slimformer_pending_texts", "Texts waiting for the predictor.", registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_latency.observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count every response by status code and time it."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app fails before answering

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            method = scope["method"] if scope["method"] in ("GET", "POST", "HEAD") else "other"
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - started)


class RequestGuard:
    """Reject oversize and undecodable bodies before the framework parses them, and answer `POST /predict`.

    A declared Content-Length over the limit is refused before reading a byte; a body sent without one
    (chunked) is read only until it passes the limit. /predict bodies must be UTF-8 JSON. With `predict`,
    a checked /predict body goes straight to it (body bytes in, response bytes out) and its answer straight
    to the server, without FastAPI's routing and response classes; its errors are answered as the app's
    exception handlers answer them. Every other request goes on to the app.
    """

    def __init__(
        self, app: Any, max_body_bytes: int, predict: Callable[[bytes], Awaitable[bytes]] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.predict = predict

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_predict = scope["path"] == "/predict" and scope["method"] == "POST"
        answered = is_predict and self.predict is not None
        try:
            body = await self._read_body(scope, receive)
            if is_predict:
                self._check_json(scope, body)
            payload = await self.predict(body) if answered else b""
        except Exception as exc:  # answered as the app's exception handlers answer it
            await _error_response(_as_serve_error(exc))(scope, receive, send)
            return
        if answered:
            await _send_json(send, payload)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect like the real receive would

        await self.app(scope, replay, send)

    async def _read_body(self, scope: dict, receive: Callable) -> bytes:
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise ServeError(400, "bad_request", f"Content-Length {declared!r} is not a number") from None
            if length > self.max_body_bytes:
                raise ServeError(
                    413, "body_too_large", f"request body is {length} bytes; the limit is {self.max_body_bytes} bytes"
                )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise ServeError(
                    413, "body_too_large", f"request body is over the limit of {self.max_body_bytes} bytes"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def _check_json(scope: dict, body: bytes) -> None:
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type not in JSON_MEDIA_TYPES and not content_type.endswith("+json"):
            shown = content_type or "none"
            raise ServeError(
                415,
                "unsupported_media_type",
                f"send the body as JSON with 'Content-Type: application/json' (got {shown})",
            )
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServeError(
                400, "invalid_encoding", f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason})"
            ) from None


async def _send_json(send: Callable, payload: bytes) -> None:
    """A 200 JSON response, as two ASGI messages."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _as_serve_error(exc: Exception) -> "ServeError":
    """What the app's exception handlers make of an exception: 4xx for bad requests, else a 500."""
    from fastapi.exceptions import RequestValidationError

    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, RequestValidationError):
        return validation_error(list(exc.errors()))
    # a bug, not a user error: answer 500 with a message and keep serving
    return ServeError(500, "internal_error", f"internal error: {type(exc).__name__}")


def _json_body(body: bytes) -> Any:
    """The request body parsed as FastAPI parses a JSON body parameter, with the same errors."""
    from fastapi.exceptions import RequestValidationError

    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}]) from None


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _error_response(exc: ServeError, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    content = {"error": exc.error, "message": exc.message, "details": exc.details}
    return JSONResponse(content, status_code=exc.status_code, headers=headers)


# ----------------------------------------------------------------------------------------------------
# validation messages a person can act on

_MESSAGES = {
    "string_too_short": lambda e: "must not be empty",
    "string_pattern_mismatch": lambda e: "must contain a character other than spaces, tabs and line breaks",
    "string_too_long": lambda e: (
        f"has {len(e['input'])} characters; the limit is {e['ctx']['max_length']} "
        "(texts under the limit but over the model's max tokens are truncated, not rejected)"
    ),
    "too_short": lambda e: "must hold at least one text",
    "too_long": lambda e: (
        f"holds {e['ctx'].get('actual_length', 'too many')} items; the limit is {e['ctx']['max_length']}"
    ),
    "extra_forbidden": lambda e: "is not a known field (use 'text' or 'texts', and optionally 'top_k')",
    "missing": lambda e: "is required",
    "model_attributes_type": lambda e: 'must be a JSON object such as {"text": "..."}',
    "model_type": lambda e: 'must be a JSON object such as {"text": "..."}',
    "string_type": lambda e: f"must be a string, not {_json_type(e.get('input'))}",
    "list_type": lambda e: f"must be a list of strings, not {_json_type(e.get('input'))}",
    "string_unicode": lambda e: "is not valid Unicode (it holds a lone surrogate)",
    "less_than_equal": lambda e: f"must be <= {e['ctx']['le']}",
    "greater_than_equal": lambda e: f"must be >= {e['ctx']['ge']}",
    "int_from_float": lambda e: "must be a whole number",
    "int_type": lambda e: f"must be an integer, not {_json_type(e.get('input'))}",
}


def _json_type(value: Any) -> str:
    names = {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


def _location(loc: tuple) -> str:
    parts = [p for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def validation_error(errors: list[dict[str, Any]]) -> ServeError:
    """Turn pydantic/FastAPI validation errors into one ServeError (400 for malformed JSON, else 422)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        error = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        position = error["loc"][-1] if error.get("loc") else "?"
        message = f"request body is not valid JSON: {reason} (at character {position})"
        return ServeError(400, "malformed_json", message)
    details = []
    for e in errors:
        render = _MESSAGES.get(e.get("type", ""))
        try:
            message = render(e) if render else str(e.get("msg", "is invalid"))
        except (KeyError, TypeError):
            message = str(e.get("msg", "is invalid"))
        message = message.removeprefix("Value error, ")
        details.append({"location": _location(tuple(e.get("loc", ()))), "message": message})
    summary = "; ".join(
        f"{d['location']}: {d['message']}" if d["location"] != "body" else d["message"] for d in details[:5]
    )
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    return ServeError(422, "validation_error", f"invalid request: {summary}{more}", details)


# ----------------------------------------------------------------------------------------------------
# the app


@dataclass
class ServeState:
    """What the lifespan sets up and the endpoints use."""

    predictor: "Predictor | None" = None
    batcher: MicroBatcher | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    ready: bool = False


def create_app(model_dir: str | Path, config: ServeConfig | None = None) -> "fastapi.FastAPI":
    """A FastAPI app serving the classifier in `model_dir` (PyTorch checkpoint or ONNX folder).

    The model is loaded (and warmed up) in the lifespan, so use the app under uvicorn or as
    ``with TestClient(app)``. Limits, batching and threads come from `config`.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from slimformer.predictor import load

    config = config or ServeConfig()
    config.validate()
    models = build_models(config)
    PredictRequest, PredictResponse, ErrorResponse, Status = (
        models["PredictRequest"],
        models["PredictResponse"],
        models["ErrorResponse"],
        models["Status"],
    )
    metrics = ServeMetrics()
    state = ServeState()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # one thread owns the model: it loads it, warms it up and runs every batch
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slimformer-predict")
        loop = asyncio.get_running_loop()
        threads = config.predictor_threads()

        def load_and_warm_up() -> "tuple[Predictor, dict[str, Any]]":
            predictor = load(model_dir, threads=threads, max_length=config.max_length)
            warm_up_texts = ["warm up the model"] * min(4, config.max_batch_size)
            predict_batch(predictor, warm_up_texts, 1, config.max_batch_size)
            return predictor, predictor.settings()

        try:
            state.predictor, predictor_settings = await loop.run_in_executor(executor, load_and_warm_up)
            state.settings = {
                "model_dir": str(model_dir),
                "backend": state.predictor.backend,
                "num_labels": len(state.predictor.labels),
                "max_length": state.predictor.max_length,
                "predictor": predictor_settings,
                "process_cpus": _process_cpus(),
                "threads_choice": "set by the threads option"
                if config.threads
                else "(cores available - 1) / workers: one core stays with the event loop; one inference at a "
                "time per worker, so batches never compete with each other",
                "batching": {
                    "max_batch_size": config.max_batch_size,
                    "max_wait_ms": config.max_wait_ms,
                    "max_pending_texts": config.max_pending_texts,
                    "inline_lone_requests": config.inline_lone_requests,
                    "busy_poll_ms": config.busy_poll_ms,
                },
                "limits": {
                    "max_texts_per_request": config.max_texts_per_request,
                    "max_chars_per_text": config.max_chars_per_text,
                    "max_body_bytes": config.max_body_bytes,
                    "max_top_k": config.max_top_k,
                },
                "workers": config.workers,
            }
            state.batcher = MicroBatcher(
                lambda texts, k: predict_batch(state.predictor, texts, k, config.max_batch_size),
                executor,
                config.max_batch_size,
                config.max_wait_ms,
                config.max_pending_texts,
                on_batch=metrics.observe_batch,
                inline_lone_requests=config.inline_lone_requests,
                busy_poll_ms=config.busy_poll_ms,
            )
            state.batcher.start()
            metrics.pending.set_function(lambda: state.batcher.pending_texts)  # read at scrape time
            state.ready = True
            yield
        finally:
            state.ready = False
            if state.batcher is not None:
                await state.batcher.stop()
            executor.shutdown(wait=True)

    error_responses = {
        code: {"model": ErrorResponse, "description": text}
        for code, text in (
            (400, "Malformed JSON or a body that is not UTF-8"),
            (413, "Body over the size limit"),
            (415, "Body is not JSON"),
            (422, "Request does not match the schema"),
            (503, "Model not loaded yet, or too many texts queued"),
        )
    }

    class ServeApp(FastAPI):
        """FastAPI, except that `POST /predict` is answered before its middleware stack and router: by the
        metrics middleware and the request guard, which parses, validates and answers it."""

        async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] == "http" and scope["path"] == "/predict" and scope["method"] == "POST":
                await predict_endpoint(scope, receive, send)
            else:
                await super().__call__(scope, receive, send)

    app = ServeApp(
        title="slimformer",
        summary="Text classification served from a slimformer model folder.",
        version=_package_version(),
        lifespan=lifespan,
        responses={
            404: {"model": ErrorResponse, "description": "No such path"},
            405: {"model": ErrorResponse, "description": "Method not allowed"},
        },
    )
    app.state.serve = state
    app.state.metrics = metrics
    app.state.config = config

    @app.exception_handler(ServeError)
    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(_as_serve_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such path: {request.url.path} (see /openapi.json)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        error = ServeError(exc.status_code, codes.get(exc.status_code, "http_error"), message)
        return _error_response(error, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(_as_serve_error(exc))

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=error_responses,
        summary="Classify one text or a list of texts",
    )
    async def predict(body: PredictRequest) -> Any:  # type: ignore[valid-type]
        """The documented endpoint (schema and all). Requests are answered by `predict_body` below (called
        by `ServeApp` through the request guard), which does the same validation with the same model."""
        return Response(await answer(body), media_type="application/json")

    async def predict_body(body: bytes) -> bytes:
        from pydantic import ValidationError

        data = _json_body(body)
        try:
            request = PredictRequest.model_validate(data)
        except ValidationError as exc:  # located under "body", as FastAPI reports a body parameter's errors
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        return await answer(request)

    async def answer(body: Any) -> bytes:
        if not state.ready or state.batcher is None:
            raise ServeError(503, "not_ready", "the model is not loaded yet")
        texts = body.all_texts()
        top_k = config.top_k if body.top_k is None else body.top_k
        results = await state.batcher.submit(texts, top_k)
        metrics.texts.inc(len(results))
        truncated = sum(r.truncated for r in results)
        if truncated:
            metrics.truncated.inc(truncated)
        predictions = [
            {
                "label": r.label,
                "score": r.score,
                "truncated": r.truncated,
                "num_tokens": r.num_tokens,
                "top_k": [{"label": label, "score": score} for label, score in r.top_k[:top_k]]
                if top_k and r.top_k is not None
                else None,
            }
            for r in results
        ]
        # already plain JSON types: the bytes directly rather than re-validating through the response model
        payload = {"predictions": predictions, "max_length": state.predictor.max_length}
        return json.dumps(payload, separators=(",", ":")).encode()

    @app.get("/healthz", response_model=Status, summary="The process is up")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Status,
        responses={503: {"model": ErrorResponse, "description": "Model not loaded"}},
        summary="The model is loaded and requests are served",
    )
    async def readyz() -> Any:
        if not state.ready or state.batcher is None or not state.batcher.running:
            raise ServeError(503, "not_ready", "the model is not loaded yet")
        return {"status": "ready"}

    @app.get(
        "/info",
        responses={503: {"model": ErrorResponse, "description": "Model not loaded"}},
        summary="Model, limits, batching and the predictor's thread settings",
    )
    async def info() -> dict[str, Any]:
        if not state.ready:
            raise ServeError(503, "not_ready", "the model is not loaded yet")
        return state.settings

    @app.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus metrics",
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # outermost first: metrics sees every response, the guard refuses bad bodies before FastAPI parses them
    app.add_middleware(RequestGuard, max_body_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # POST /predict: the same two layers, without FastAPI's own (error, telemetry, body-limit, routing)
    framework = functools.partial(FastAPI.__call__, app)  # where the guard would pass anything else on
    predict_endpoint = MetricsMiddleware(RequestGuard(framework, config.max_body_bytes, predict_body), metrics)
    return app


def create_app_from_env() -> "fastapi.FastAPI":
    """App factory for uvicorn worker processes: model folder and config come from the environment."""
    config = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    return create_app(os.environ[MODEL_ENV], config)


def serve(model_dir: str | Path, config: ServeConfig | None = None) -> None:
    """Serve `model_dir` under uvicorn until interrupted (one process, or `config.workers` processes)."""
    import uvicorn

    from slimformer.models import resolve_model_path

    config = config or ServeConfig()
    config.validate()
    folder = resolve_model_path(model_dir)  # a missing folder is a one-line error, not a failed worker
    options = {"host": config.host, "port": config.port, "log_level": config.log_level, "access_log": False}
    if config.workers == 1:
        uvicorn.run(create_app(folder, config), **options)
        return
    os.environ[MODEL_ENV] = str(folder)
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))
    uvicorn.run("slimformer.serve:create_app_from_env", factory=True, workers=config.workers, **options)


def _process_cpus() -> int:
    from slimformer.predictor import default_threads

    return default_threads()


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slimformer")
    except PackageNotFoundError:
        return "0"
