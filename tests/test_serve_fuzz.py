"""Property-based fuzz of the server's own OpenAPI schema (schemathesis + hypothesis): no input gets a 5xx.

Positive cases (bodies that fit the schema) must be answered and conform to the documented responses;
negative cases (bodies that break it) must be refused with a 4xx. Over 500 cases run in all, on the tiny
model, in well under a minute.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from slimformer.serve import ServeConfig, create_app  # noqa: E402

POSITIVE_CASES = 350
NEGATIVE_CASES = 250


@pytest.fixture(scope="module")
def fuzz_schema(tiny_classifier_dir: Path):
    # small text limits, so the fuzz reaches them often; a body limit above the largest schema-valid body
    # (4 texts x 200 astral characters x 12 bytes of JSON escapes), so valid bodies are never refused by size
    config = ServeConfig(max_texts_per_request=4, max_chars_per_text=200, max_body_bytes=65_536, max_top_k=10)
    app = create_app(tiny_classifier_dir, config)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    yield schema
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # stop the model's batcher and thread; later apps start their own


def _fuzz(schema, mode: GenerationMode, cases: int) -> Counter:
    """Run `cases` generated requests of `mode` over every operation; count (operation, status) pairs."""
    seen: Counter = Counter()

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call(timeout=30)  # a hang fails the case instead of the whole run
        seen[(f"{case.method} {case.path}", response.status_code)] += 1
        assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text}"
        case.validate_response(response)

    run()
    return seen


def test_positive_fuzz_gets_no_server_errors(fuzz_schema) -> None:
    seen = _fuzz(fuzz_schema, GenerationMode.POSITIVE, POSITIVE_CASES)
    assert sum(seen.values()) >= POSITIVE_CASES
    assert not [key for key in seen if key[1] >= 500]
    # schema-valid bodies are answered, not refused
    assert seen[("POST /predict", 200)] >= 50, seen


def test_negative_fuzz_is_refused_with_4xx(fuzz_schema) -> None:
    seen = _fuzz(fuzz_schema, GenerationMode.NEGATIVE, NEGATIVE_CASES)
    assert sum(seen.values()) >= NEGATIVE_CASES
    assert not [key for key in seen if key[1] >= 500]
    refused = sum(
        count for (operation, status), count in seen.items() if operation == "POST /predict" and 400 <= status < 500
    )
    assert refused >= 50, seen
