"""Serve a classifier folder (PyTorch checkpoint or ONNX) over HTTP with FastAPI + uvicorn.

``create_app(model_dir, config)`` builds the app: the model is loaded once in the lifespan, requests that
arrive together are micro-batched (one asyncio batching task feeds the predictor, which runs in a single
dedicated thread), and every bad input ends as a 4xx JSON error ``{"error", "message", "details"}``.

Endpoints: ``POST /predict``, ``GET /healthz`` (process alive), ``GET /readyz`` (model loaded),
``GET /info`` (model, limits, batching and thread settings), ``GET /metrics`` (Prometheus text),
``GET /openapi.json``. ``serve(model_dir, config)`` runs it under uvicorn. With an API key (a file or
$SLIMFORMER_API_KEY), /predict and /metrics need ``Authorization: Bearer <key>``.

Modules: ``config`` (ServeConfig), ``schema`` (request/response models, the error shape), ``batcher``
(micro-batching), ``metrics`` (Prometheus), ``auth`` (API key), ``app`` (routes), ``server`` (uvicorn).
"""

from slimformer.serve.app import BodyLimit, create_app
from slimformer.serve.auth import API_KEY_ENV, ApiKeyAuth, check_bind, load_api_key
from slimformer.serve.batcher import MicroBatcher, TextResult, predict_batch
from slimformer.serve.config import ServeConfig
from slimformer.serve.metrics import ServeMetrics
from slimformer.serve.schema import ServeError, build_models, validation_error
from slimformer.serve.server import create_app_from_env, serve

__all__ = [
    "API_KEY_ENV",
    "ApiKeyAuth",
    "BodyLimit",
    "MicroBatcher",
    "ServeConfig",
    "ServeError",
    "ServeMetrics",
    "TextResult",
    "build_models",
    "check_bind",
    "create_app",
    "create_app_from_env",
    "load_api_key",
    "predict_batch",
    "serve",
    "validation_error",
]
