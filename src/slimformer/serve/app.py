"""The FastAPI app: routes, the lifespan that loads the model, and the error handlers.

`POST /predict` is a plain FastAPI route with a pydantic body model; FastAPI parses and validates it and every
error goes through the app's exception handlers as one JSON shape (see `schema.py`). Two small checks sit in
front of FastAPI's body parsing, where they have to be: the body-size limit (an ASGI middleware, so an oversize
body is never read in full) and, in the route class, the API key, the JSON media type and UTF-8.
"""

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.serve.auth import ApiKeyAuth
from slimformer.serve.batcher import MicroBatcher, predict_batch
from slimformer.serve.config import ServeConfig
from slimformer.serve.metrics import MetricsMiddleware, ServeMetrics
from slimformer.serve.schema import ServeError, build_models, error_response, validation_error

if TYPE_CHECKING:
    import fastapi

    from slimformer.predictor import Predictor

logger = logging.getLogger("slimformer.serve")
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


@dataclass
class ServeState:
    """What the lifespan sets up and the endpoints use."""

    predictor: "Predictor | None" = None
    batcher: MicroBatcher | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    ready: bool = False


class BodyLimit:
    """Refuse request bodies over `max_body_bytes` (413): by their declared Content-Length before a byte is read,
    and a body sent without one (chunked) as soon as it passes the limit while the route reads it."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_declared_length(scope)
        except ServeError as exc:
            await error_response(exc)(scope, receive, send)
            return
        size = 0

        async def counting_receive() -> dict:
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:  # raised inside the route: answered by the app's handlers
                raise ServeError(
                    413, "body_too_large", f"request body is over the limit of {self.max_body_bytes} bytes"
                )
            return message

        await self.app(scope, counting_receive, send)

    def _check_declared_length(self, scope: dict) -> None:
        declared = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == b"content-length"), None
        )
        if declared is None:
            return
        try:
            length = int(declared)
        except ValueError:
            raise ServeError(400, "bad_request", f"Content-Length {declared!r} is not a number") from None
        if length > self.max_body_bytes:
            message = f"request body is {length} bytes; the limit is {self.max_body_bytes} bytes"
            raise ServeError(413, "body_too_large", message)


async def check_json_body(request: "fastapi.Request") -> None:
    """415 unless the body is declared JSON, 400 unless it is UTF-8 (FastAPI would take other bodies as bytes)."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        shown = content_type or "none"
        message = f"send the body as JSON with 'Content-Type: application/json' (got {shown})"
        raise ServeError(415, "unsupported_media_type", message)
    body = await request.body()  # Starlette keeps it: FastAPI parses these same bytes next
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        raise ServeError(400, "invalid_encoding", message) from None


def guarded_route_class(auth: ApiKeyAuth | None, protected: set[str]) -> type:
    """An APIRoute that checks the API key (on `protected` paths) and a JSON body before FastAPI reads it."""
    from fastapi.routing import APIRoute

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable:
            handler = super().get_route_handler()
            needs_key = auth is not None and self.path in protected
            has_body = self.body_field is not None

            async def guarded(request: "fastapi.Request") -> Any:
                if needs_key:
                    auth.check(request.headers.get("authorization"))
                if has_body:
                    await check_json_body(request)
                return await handler(request)

            return guarded

    return GuardedRoute


def _settings(model_dir: str | Path, predictor: "Predictor", config: ServeConfig) -> dict[str, Any]:
    """What /info reports (never the API key)."""
    from slimformer.cpu import default_threads

    return {
        "model_dir": str(model_dir),
        "backend": predictor.backend,
        "num_labels": len(predictor.labels),
        "max_length": predictor.max_length,
        "predictor": predictor.settings(),
        "process_cpus": default_threads(),
        "threads_choice": "set by the threads option"
        if config.threads
        else "(cores available - 1) / workers: one core stays with the event loop; one inference at a "
        "time per worker, so batches never compete with each other",
        "batching": {
            "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms,
            "max_pending_texts": config.max_pending_texts,
            "inline_lone_requests": config.inline_lone_requests,
        },
        "limits": {
            "max_texts_per_request": config.max_texts_per_request,
            "max_chars_per_text": config.max_chars_per_text,
            "max_body_bytes": config.max_body_bytes,
            "max_top_k": config.max_top_k,
        },
        "auth": {"api_key": config.api_key is not None, "open_metrics": config.open_metrics},
        "workers": config.workers,
    }


def _lifespan(model_dir: str | Path, config: ServeConfig, state: ServeState, metrics: ServeMetrics) -> Callable:
    from slimformer.predictor import load

    @asynccontextmanager
    async def lifespan(app: "fastapi.FastAPI") -> Any:
        # one thread owns the model: it loads it, warms it up and runs every batch
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slimformer-predict")

        def load_and_warm_up() -> "Predictor":
            predictor = load(model_dir, threads=config.predictor_threads(model_dir), max_length=config.max_length)
            predict_batch(predictor, ["warm up the model"] * min(4, config.max_batch_size), 1, config.max_batch_size)
            return predictor

        try:
            predictor = await asyncio.get_running_loop().run_in_executor(executor, load_and_warm_up)
            state.predictor, state.settings = predictor, _settings(model_dir, predictor, config)
            state.batcher = MicroBatcher(
                lambda texts, k: predict_batch(predictor, texts, k, config.max_batch_size),
                executor,
                config.max_batch_size,
                config.max_wait_ms,
                config.max_pending_texts,
                on_batch=metrics.observe_batch,
                inline_lone_requests=config.inline_lone_requests,
            )
            state.batcher.start()
            metrics.pending.set_function(lambda: state.batcher.pending_texts)  # read at scrape time
            state.ready = True
            yield
        finally:
            state.ready = False
            if state.batcher is not None:  # requests uvicorn let finish have been answered; drain what is left
                await state.batcher.stop(drain_timeout_s=config.graceful_timeout_s)
            executor.shutdown(wait=True)

    return lifespan


def _add_error_handlers(app: "fastapi.FastAPI") -> None:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> Any:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Any:
        return error_response(validation_error(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Any:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such path: {request.url.path} (see /openapi.json)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        error = ServeError(exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), message)
        error.headers = getattr(exc, "headers", None)
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Any:
        # a bug, not a user error: answer 500 with a message and keep serving
        return error_response(ServeError(500, "internal_error", f"internal error: {type(exc).__name__}"))


def _document_auth(app: "fastapi.FastAPI", protected: set[str]) -> None:
    """Declare the bearer scheme in /openapi.json for the protected paths (clients and fuzzers read it)."""
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()  # sets app.openapi_schema; the changes below stay in it
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer"}
            }
            for path in protected:
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = [{"bearerAuth": []}]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(model_dir: str | Path, config: ServeConfig | None = None) -> "fastapi.FastAPI":
    """A FastAPI app serving the classifier in `model_dir` (PyTorch checkpoint or ONNX folder).

    The model is loaded (and warmed up) in the lifespan, so use the app under uvicorn or as
    ``with TestClient(app)``. Limits, batching, threads and the API key come from `config`.
    """
    # long by design: the routes are closures over this app's state (predictor, batcher, limits), in one place
    from fastapi import FastAPI
    from fastapi.responses import Response

    config = config or ServeConfig()
    config.validate()
    models = build_models(config)
    ErrorResponse = models["ErrorResponse"]
    PredictRequest = models["PredictRequest"]
    state, metrics = ServeState(), ServeMetrics()
    auth = ApiKeyAuth(config.api_key) if config.api_key else None
    protected = {"/predict"} | (set() if config.open_metrics else {"/metrics"})

    def documented(*codes: tuple[int, str], path: str = "") -> dict[int, dict[str, Any]]:
        if auth is not None and path in protected:
            codes = (*codes, (401, "Missing or wrong API key"))
        return {code: {"model": ErrorResponse, "description": text} for code, text in codes}

    app = FastAPI(
        title="slimformer",
        summary="Text classification served from a slimformer model folder.",
        version=_package_version(),
        lifespan=_lifespan(model_dir, config, state, metrics),
        responses=documented((404, "No such path"), (405, "Method not allowed")),
    )
    app.router.route_class = guarded_route_class(auth, protected)
    app.state.serve, app.state.metrics, app.state.config = state, metrics, config
    _add_error_handlers(app)
    not_ready = (503, "Model not loaded yet, or the server is shutting down")

    @app.post(
        "/predict",
        response_model=models["PredictResponse"],
        responses=documented(
            (400, "Malformed JSON or a body that is not UTF-8"),
            (413, "Body over the size limit"),
            (415, "Body is not JSON"),
            (422, "Request does not match the schema"),
            (503, "Model not loaded yet, too many texts queued, or shutting down"),
            path="/predict",
        ),
        summary="Classify one text or a list of texts",
    )
    async def predict(body: PredictRequest) -> Response:  # type: ignore[valid-type]
        if not state.ready or state.batcher is None:
            raise ServeError(503, "not_ready", "the model is not loaded yet")
        top_k = config.top_k if body.top_k is None else body.top_k
        try:
            results = await state.batcher.submit(body.all_texts(), top_k)
        except ServeError:
            raise
        except Exception as exc:  # the model failed on this batch: a 500 for these requests, the server goes on
            logger.exception("prediction failed")
            raise ServeError(500, "internal_error", f"internal error: {type(exc).__name__}") from exc
        metrics.observe_texts(results)
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
        # plain JSON types already: the bytes directly rather than re-validating through the response model
        payload = {"predictions": predictions, "max_length": state.predictor.max_length}
        return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")

    @app.get("/healthz", response_model=models["Status"], summary="The process is up")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz", response_model=models["Status"], responses=documented(not_ready), summary="Model loaded")
    async def readyz() -> Any:
        if not state.ready or state.batcher is None or not state.batcher.running:
            raise ServeError(503, "not_ready", "the model is not loaded yet")
        return {"status": "ready"}

    @app.get("/info", responses=documented(not_ready), summary="Model, limits, batching and thread settings")
    async def info() -> dict[str, Any]:
        if not state.ready:
            raise ServeError(503, "not_ready", "the model is not loaded yet")
        return state.settings

    @app.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus metrics",
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **documented(path="/metrics"),
        },
    )
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if auth is not None:
        _document_auth(app, protected)
    # outermost first: metrics sees every response (413s included), the limit applies before any body is read
    app.add_middleware(BodyLimit, max_body_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slimformer")
    except PackageNotFoundError:
        return "0"
