"""Property-based fuzz of the server's own OpenAPI schema (schemathesis + hypothesis): no input gets a 5xx.

Positive cases (bodies that fit the schema) must be answered and conform to the documented responses;
negative cases (bodies that break it) must be refused with a 4xx in the app's one error shape. The app runs
with an API key (sent with every case), so the fuzz covers the authenticated path. Over 500 cases run in all,
on the tiny model, in well under a minute.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from slimformer.serve import ServeConfig, create_app  # noqa: E402

API_KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
POSITIVE_CASES = 350
NEGATIVE_CASES = 250


@pytest.fixture(scope="module")
def fuzz_schema(tiny_classifier_dir: Path):
    # small text limits, so the fuzz reaches them often; a body limit above the largest schema-valid body
    # (4 texts x 200 astral characters x 12 bytes of JSON escapes), so valid bodies are never refused by size
    config = ServeConfig(
        max_texts_per_request=4, max_chars_per_text=200, max_body_bytes=65_536, max_top_k=10, api_key=API_KEY
    )
    app = create_app(tiny_classifier_dir, config)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield schema, app
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # stop the model's batcher and thread; later apps start their own


def _check_answer(case, response, labels: list[str]) -> None:
    """A 200 from /predict answers every text of the request with a known label; any error has the one shape."""
    if response.status_code >= 400:
        payload = response.json()
        assert set(payload) == {"error", "message", "details"} and payload["message"], payload
    elif case.method == "POST" and case.path == "/predict":
        body = case.body
        texts = [body["text"]] if "text" in body else body["texts"]
        predictions = response.json()["predictions"]
        assert len(predictions) == len(texts)
        for prediction in predictions:
            assert prediction["label"] in labels and 0.0 <= prediction["score"] <= 1.0
            if body.get("top_k"):
                assert len(prediction["top_k"]) == min(body["top_k"], len(labels))
                assert prediction["top_k"][0]["label"] == prediction["label"]


def _fuzz(fuzz_schema, mode: GenerationMode, cases: int) -> Counter:
    """Run `cases` generated requests of `mode` over every operation; count (operation, status) pairs."""
    schema, app = fuzz_schema
    seen: Counter = Counter()

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call(timeout=30, headers=AUTH)  # a hang fails the case instead of the whole run
        seen[(f"{case.method} {case.path}", response.status_code)] += 1
        assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text}"
        case.validate_response(response)
        _check_answer(case, response, app.state.serve.predictor.labels)

    run()
    return seen


def test_positive_fuzz_gets_no_server_errors(fuzz_schema) -> None:
    seen = _fuzz(fuzz_schema, GenerationMode.POSITIVE, POSITIVE_CASES)
    assert sum(seen.values()) >= POSITIVE_CASES
    # schema-valid bodies with the key are answered, not refused (neither 4xx nor 401)
    assert seen[("POST /predict", 200)] >= 50, seen
    assert not [key for key in seen if key[0] == "POST /predict" and key[1] != 200], seen


def test_negative_fuzz_is_refused_with_4xx(fuzz_schema) -> None:
    seen = _fuzz(fuzz_schema, GenerationMode.NEGATIVE, NEGATIVE_CASES)
    assert sum(seen.values()) >= NEGATIVE_CASES
    refused = sum(
        count for (operation, status), count in seen.items() if operation == "POST /predict" and 400 <= status < 500
    )
    assert refused >= 50, seen
