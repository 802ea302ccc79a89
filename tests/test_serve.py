"""The HTTP server: every endpoint, every bad input (4xx with a clear message, never 5xx, and the server keeps
serving), micro-batching, metrics, and the `slimformer serve` command against a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slimformer.serve import MicroBatcher, ServeConfig, ServeError, TextResult, create_app

fastapi_testclient = pytest.importorskip("fastapi.testclient")
TestClient = fastapi_testclient.TestClient

GOOD = {"text": "what is the weather like in paris"}
LIMITS = ServeConfig(max_texts_per_request=4, max_chars_per_text=300, max_body_bytes=4096, max_top_k=5)


@pytest.fixture(scope="module")
def client(tiny_classifier_dir: Path):
    """One app (model loaded once in its lifespan) for the module's tests."""
    with TestClient(create_app(tiny_classifier_dir, LIMITS)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def direct_predictor(client):
    """The predictor the app itself loaded (same thread settings and max_length)."""
    return client.app.state.serve.predictor


def assert_still_serving(client) -> None:
    response = client.post("/predict", json=GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] in client.app.state.serve.predictor.labels


def assert_error(response, status: int, error: str, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert payload["error"] == error
    for fragment in fragments:
        assert fragment in payload["message"], payload["message"]
    return payload


# --- endpoints -------------------------------------------------------------------------------------------------


def test_predict_single_text_matches_the_predictor(client, direct_predictor) -> None:
    response = client.post("/predict", json=GOOD)
    assert response.status_code == 200
    payload = response.json()
    (prediction,) = payload["predictions"]
    labels, scores = direct_predictor.predict([GOOD["text"]])
    assert prediction["label"] == labels[0]
    assert prediction["score"] == pytest.approx(scores[0], abs=1e-5)
    assert prediction["truncated"] is False
    assert prediction["top_k"] is None
    assert prediction["num_tokens"] == len(direct_predictor.tokenizer(GOOD["text"])["input_ids"])
    assert payload["max_length"] == direct_predictor.max_length


def test_predict_many_texts_keeps_order_and_gives_top_k(client, direct_predictor) -> None:
    texts = ["book a flight to rome", "what is my balance", "set an alarm for 7", "translate hello"]
    response = client.post("/predict", json={"texts": texts, "top_k": 3})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    expected = direct_predictor.predict_top_k(texts, 3)
    assert len(predictions) == len(texts)
    for prediction, ranked in zip(predictions, expected, strict=True):
        assert [item["label"] for item in prediction["top_k"]] == [label for label, _ in ranked]
        assert prediction["label"] == ranked[0][0]
        scores = [item["score"] for item in prediction["top_k"]]
        assert scores == sorted(scores, reverse=True)


def test_top_k_is_capped_at_the_number_of_labels(tiny_classifier_dir: Path) -> None:
    config = ServeConfig(max_top_k=20)
    with TestClient(create_app(tiny_classifier_dir, config)) as client:
        response = client.post("/predict", json={"text": "hello", "top_k": 20})
        num_labels = len(client.app.state.serve.predictor.labels)
    assert response.status_code == 200
    top = response.json()["predictions"][0]["top_k"]
    assert len(top) == num_labels
    assert sum(item["score"] for item in top) == pytest.approx(1.0, abs=1e-4)


def test_text_longer_than_max_tokens_is_truncated_and_says_so(client, direct_predictor) -> None:
    # 300 characters (the request limit) but ~65 words: more tokens than the tiny model's 64
    long_text = ("book a flight " * 60)[: LIMITS.max_chars_per_text]
    response = client.post("/predict", json={"texts": [long_text, "short one"]})
    assert response.status_code == 200
    long_prediction, short_prediction = response.json()["predictions"]
    assert long_prediction["truncated"] is True
    assert long_prediction["num_tokens"] > direct_predictor.max_length
    assert short_prediction["truncated"] is False
    metrics = client.get("/metrics").text
    assert "slimformer_truncated_texts_total" in metrics


def test_health_ready_and_info(client, direct_predictor) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/info").json()
    assert info["backend"] == "pytorch"
    assert info["num_labels"] == len(direct_predictor.labels)
    # torch's thread count is per process (other apps in this test process change it): compare the rest
    for key in ("backend", "threads", "max_length"):
        assert info["predictor"][key] == direct_predictor.settings()[key]
    assert info["predictor"]["threads"] == LIMITS.predictor_threads()
    assert info["batching"]["max_batch_size"] == LIMITS.max_batch_size
    assert info["limits"]["max_texts_per_request"] == LIMITS.max_texts_per_request


def test_readyz_is_503_before_startup(tiny_classifier_dir: Path) -> None:
    client = TestClient(create_app(tiny_classifier_dir))  # not entered: the lifespan has not run
    assert_error(client.get("/readyz"), 503, "not_ready", "not loaded")
    assert_error(client.post("/predict", json=GOOD), 503, "not_ready")
    assert client.get("/healthz").status_code == 200


def test_openapi_schema_states_the_limits(client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/healthz", "/readyz", "/metrics", "/info"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["PredictRequest"]
    assert request["additionalProperties"] is False
    assert request["properties"]["text"]["maxLength"] == LIMITS.max_chars_per_text
    assert request["properties"]["text"]["minLength"] == 1
    assert request["properties"]["texts"]["maxItems"] == LIMITS.max_texts_per_request
    assert request["oneOf"] == [{"required": ["text"]}, {"required": ["texts"]}]
    responses = schema["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422"} <= set(responses)
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_metrics_count_statuses_latency_and_batches(tiny_classifier_dir: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with TestClient(create_app(tiny_classifier_dir, LIMITS)) as client:
        for _ in range(3):
            client.post("/predict", json=GOOD)
        client.post("/predict", json={"text": ""})
        client.post("/predict", json={"texts": ["a", "b"]})
        client.get("/no-such-path")
        text = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    counts = {labels: value for (name, labels), value in samples.items() if name == "slimformer_requests_total"}
    assert counts[(("method", "POST"), ("path", "/predict"), ("status", "200"))] == 4
    assert counts[(("method", "POST"), ("path", "/predict"), ("status", "422"))] == 1
    assert counts[(("method", "GET"), ("path", "other"), ("status", "404"))] == 1
    assert samples[("slimformer_request_latency_seconds_count", (("method", "POST"), ("path", "/predict")))] == 5
    # warm-up is not served through HTTP: 4 good requests, 5 texts, one batch per request here
    assert samples[("slimformer_batch_size_count", ())] == 4
    assert samples[("slimformer_batch_size_sum", ())] == 5
    assert samples[("slimformer_texts_total", ())] == 5


def test_two_apps_in_one_process_have_separate_metrics(tiny_classifier_dir: Path) -> None:
    first, second = create_app(tiny_classifier_dir), create_app(tiny_classifier_dir)
    assert first.state.metrics.registry is not second.state.metrics.registry
    with TestClient(first) as client:
        client.get("/healthz")
        assert 'path="/healthz"' in client.get("/metrics").text
    assert 'path="/healthz"' not in second.state.metrics.render().decode()


# --- bad input: 4xx, a clear message, and the server keeps serving --------------------------------------------

BAD_JSON_BODIES = [
    # (body, status, error code, message fragment)
    ({"text": ""}, 422, "validation_error", "text: must not be empty"),
    ({"text": "   \n\t"}, 422, "validation_error", "other than spaces, tabs and line breaks"),
    ({"texts": []}, 422, "validation_error", "texts: must hold at least one text"),
    ({"texts": ["fine", ""]}, 422, "validation_error", "texts[1]: must not be empty"),
    ({"texts": ["a", "b", "c", "d", "e"]}, 422, "validation_error", "holds 5 items; the limit is 4"),
    ({"text": "x" * 301}, 422, "validation_error", "has 301 characters; the limit is 300"),
    ({"text": 42}, 422, "validation_error", "text: must be a string, not a number"),
    ({"text": None}, 422, "validation_error", "text: must be a string, not null"),
    ({"texts": "not a list"}, 422, "validation_error", "texts: must be a list of strings, not a string"),
    ({"texts": ["ok", 7]}, 422, "validation_error", "texts[1]: must be a string, not a number"),
    ({"text": "a", "texts": ["b"]}, 422, "validation_error", "exactly one of 'text'"),
    ({}, 422, "validation_error", "exactly one of 'text'"),
    ({"query": "hi"}, 422, "validation_error", "query: is not a known field"),
    ({"text": "hi", "top_k": -1}, 422, "validation_error", "top_k: must be >= 0"),
    ({"text": "hi", "top_k": 6}, 422, "validation_error", "top_k: must be <= 5"),
    ({"text": "hi", "top_k": "3"}, 422, "validation_error", "top_k: must be an integer, not a string"),
    ({"text": "hi", "top_k": True}, 422, "validation_error", "top_k: must be an integer, not a boolean"),
    ({"text": "hi", "top_k": 1.5}, 422, "validation_error", "top_k: must be a whole number"),
    (["a list", "not an object"], 422, "validation_error", "must be a JSON object"),
    ("just a string", 422, "validation_error", "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "status", "error", "fragment"), BAD_JSON_BODIES)
def test_bad_json_bodies_are_4xx_with_a_clear_message(client, body, status, error, fragment) -> None:
    payload = assert_error(client.post("/predict", json=body), status, error, fragment)
    assert payload["details"], "validation errors name where they are"
    assert_still_serving(client)


RAW_BODIES = [
    # (raw body, headers, status, error code, message fragment)
    (b'{"text": "unterminated', {"content-type": "application/json"}, 400, "malformed_json", "not valid JSON"),
    (b"{'text': 'single quotes'}", {"content-type": "application/json"}, 400, "malformed_json", "not valid JSON"),
    (b"", {"content-type": "application/json"}, 422, "validation_error", "is required"),
    (b'{"text": "caf\xe9"}', {"content-type": "application/json"}, 400, "invalid_encoding", "not valid UTF-8"),
    (b"\xff\xfe\x00\x01", {"content-type": "application/json"}, 400, "invalid_encoding", "not valid UTF-8"),
    (b'{"text": "\\ud800"}', {"content-type": "application/json"}, 422, "validation_error", "lone surrogate"),
    (b'{"text": "hi"}', {"content-type": "text/plain"}, 415, "unsupported_media_type", "application/json"),
    (b'{"text": "hi"}', {}, 415, "unsupported_media_type", "got none"),
]


@pytest.mark.parametrize(("body", "headers", "status", "error", "fragment"), RAW_BODIES)
def test_malformed_bodies_are_4xx_with_a_clear_message(client, body, headers, status, error, fragment) -> None:
    assert_error(client.post("/predict", content=body, headers=headers), status, error, fragment)
    assert_still_serving(client)


def test_ten_megabyte_body_is_refused_from_its_content_length(client) -> None:
    body = json.dumps({"text": "a" * (10 * 1024 * 1024)}).encode()
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert_error(response, 413, "body_too_large", f"{len(body)} bytes", f"limit is {LIMITS.max_body_bytes} bytes")
    assert_still_serving(client)


def test_streamed_body_without_content_length_is_refused(client) -> None:
    def chunks():
        for _ in range(1000):  # 10 MB, chunked: no Content-Length to refuse it by
            yield b"a" * 10_240

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "body_too_large", f"over the limit of {LIMITS.max_body_bytes} bytes")
    assert_still_serving(client)


def test_body_limit_stops_the_route_reading_a_stream_at_the_limit() -> None:
    from slimformer.serve import BodyLimit

    received, sent, read_by_app = [], [], []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"a" * 1000, "more_body": len(received) < 10_000}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):  # reads like Starlette's request.body(): until the body ends
        with pytest.raises(ServeError) as refused:
            while (await receive()).get("more_body"):
                read_by_app.append(1)
        assert refused.value.status_code == 413 and "over the limit of 4096 bytes" in refused.value.message

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-type", b"application/json")]}
    asyncio.run(BodyLimit(app, max_body_bytes=4096)(scope, receive, send))
    assert len(received) == 5, "reads only until the body passes the limit"
    assert len(read_by_app) == 4


def test_body_limit_refuses_a_declared_length_before_reading() -> None:
    from slimformer.serve import BodyLimit

    received, sent = [], []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        raise AssertionError("the app must not be called")

    for length, status, fragment in (("5000", 413, b"5000 bytes; the limit is 4096"), ("many", 400, b"not a number")):
        sent.clear()
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/predict",
            "headers": [(b"content-length", length.encode())],
        }
        asyncio.run(BodyLimit(app, max_body_bytes=4096)(scope, receive, send))
        assert sent[0]["status"] == status and fragment in sent[1]["body"]
    assert not received


def test_a_failing_model_is_a_json_500_and_the_server_keeps_serving(tiny_classifier_dir: Path) -> None:
    with TestClient(create_app(tiny_classifier_dir, LIMITS)) as client:
        predictor = client.app.state.serve.predictor
        original = predictor.logits_from_inputs

        def fail_on_boom(inputs):
            if inputs["input_ids"].shape[1] > 40:
                raise RuntimeError("model failed")
            return original(inputs)

        predictor.logits_from_inputs = fail_on_boom
        failed = client.post("/predict", json={"text": "boom " * 50})
        assert_still_serving(client)
    assert_error(failed, 500, "internal_error", "internal error: RuntimeError")


def test_bad_content_length_is_400(client) -> None:
    response = client.post(
        "/predict", content=b'{"text": "hi"}', headers={"content-type": "application/json", "content-length": "many"}
    )
    assert response.status_code in (400, 413)  # the transport may refuse it first; never a 5xx
    assert_still_serving(client)


def test_unknown_path_and_wrong_method_are_json_errors(client) -> None:
    assert_error(client.get("/nope"), 404, "not_found", "/nope")
    response = client.get("/predict")
    assert_error(response, 405, "method_not_allowed", "GET is not allowed on /predict")
    assert "POST" in response.headers["allow"]
    assert_still_serving(client)


def test_many_concurrent_bad_and_good_requests_never_5xx(client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bodies = [body for body, *_ in BAD_JSON_BODIES] + [GOOD] * 20

    def send(body):
        return client.post("/predict", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, bodies))
    assert statuses.count(200) == 20
    assert all(400 <= status < 500 for status in statuses if status != 200)


# --- micro-batching --------------------------------------------------------------------------------------------


def _fake_batch(calls: list[list[str]], delay: float = 0.02):
    def run_batch(texts: list[str], top_k: int) -> list[TextResult]:
        calls.append(list(texts))
        time.sleep(delay)
        return [
            TextResult(label=text.upper(), score=1.0, truncated=False, num_tokens=len(text), top_k=None)
            for text in texts
        ]

    return run_batch


def _run_batcher(batcher_kwargs: dict, requests: list[list[str]], calls: list[list[str]], stagger: float = 0.0):
    from concurrent.futures import ThreadPoolExecutor

    async def main():
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(_fake_batch(calls), executor, **batcher_kwargs)
            batcher.start()
            tasks = []
            for texts in requests:
                tasks.append(asyncio.create_task(batcher.submit(texts, 0)))
                if stagger:
                    await asyncio.sleep(stagger)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            await batcher.stop()
            return results

    return asyncio.run(main())


def test_requests_arriving_together_share_a_predictor_call() -> None:
    calls: list[list[str]] = []
    requests = [[f"t{i}"] for i in range(20)]
    results = _run_batcher({"max_batch_size": 8, "max_wait_ms": 5, "max_pending_texts": 100}, requests, calls)
    # every request gets its own answers, in order
    assert [[r.label for r in result] for result in results] == [[f"T{i}"] for i in range(20)]
    assert sorted(text for call in calls for text in call) == sorted(f"t{i}" for i in range(20))
    assert max(len(call) for call in calls) == 8  # batches are formed, never larger than the limit
    assert len(calls) <= 4


def test_a_request_larger_than_a_batch_goes_alone_and_whole() -> None:
    calls: list[list[str]] = []
    results = _run_batcher(
        {"max_batch_size": 2, "max_wait_ms": 1, "max_pending_texts": 100}, [["a"], ["b", "c", "d"], ["e"]], calls
    )
    assert [[r.label for r in result] for result in results] == [["A"], ["B", "C", "D"], ["E"]]
    assert ["b", "c", "d"] in calls


def test_a_lone_request_does_not_wait_for_company() -> None:
    calls: list[list[str]] = []
    started = time.perf_counter()
    _run_batcher({"max_batch_size": 8, "max_wait_ms": 2000, "max_pending_texts": 100}, [["alone"]], calls)
    assert time.perf_counter() - started < 1.0  # a 2 s max wait would show
    assert calls == [["alone"]]


def test_a_lone_request_can_skip_the_thread_hop_but_batches_never_do() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    threads_used: list[tuple[int, str]] = []

    def run_batch(texts, top_k):
        threads_used.append((len(texts), threading.current_thread().name))
        time.sleep(0.01)
        return [TextResult(t, 1.0, False, 1, None) for t in texts]

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="predict") as executor:
            batcher = MicroBatcher(
                run_batch, executor, max_batch_size=8, max_wait_ms=5, max_pending_texts=100, inline_lone_requests=True
            )
            batcher.start()
            await batcher.submit(["alone"], 0)
            await asyncio.gather(*(batcher.submit([f"t{i}"], 0) for i in range(6)))
            await batcher.stop()

    asyncio.run(main())
    assert threads_used[0] == (1, "MainThread")  # the idle server answered on the event loop
    assert all(name.startswith("predict") for size, name in threads_used[1:] if size > 1)
    assert any(size > 1 for size, _ in threads_used[1:])


def test_a_lone_request_on_an_idle_server_bypasses_the_batching_task() -> None:
    from concurrent.futures import ThreadPoolExecutor

    taken: list[int] = []
    batches: list[int] = []

    class CountingBatcher(MicroBatcher):
        def _take_batch(self):
            jobs = super()._take_batch()
            taken.append(len(jobs))
            return jobs

    async def main():
        with ThreadPoolExecutor(1) as executor:
            batcher = CountingBatcher(
                _fake_batch([], 0), executor, max_batch_size=8, max_wait_ms=5, max_pending_texts=100,
                on_batch=lambda size, seconds: batches.append(size), inline_lone_requests=True,
            )  # fmt: skip
            batcher.start()
            lone = [await batcher.submit([f"a{i}"], 0) for i in range(3)]
            together = await asyncio.gather(*(batcher.submit([f"t{i}"], 0) for i in range(4)))
            await batcher.stop()
            return lone, together

    lone, together = asyncio.run(main())
    assert [r[0].label for r in lone] == ["A0", "A1", "A2"] and [r[0].label for r in together] == [
        "T0",
        "T1",
        "T2",
        "T3",
    ]
    assert batches[:3] == [1, 1, 1]  # counted as batches of one on /metrics
    assert sum(taken) == 4 and max(taken) > 1  # only the requests that came together went through the queue


def test_queue_limit_answers_503_and_a_failing_batch_fails_only_its_requests() -> None:
    calls: list[list[str]] = []
    results = _run_batcher(
        {"max_batch_size": 4, "max_wait_ms": 0, "max_pending_texts": 3},
        [["a"], ["b", "c"], ["d", "e", "f", "g"]],
        calls,
    )
    assert isinstance(results[2], ServeError) and results[2].status_code == 503
    assert [r.label for r in results[0]] == ["A"]

    async def main():
        from concurrent.futures import ThreadPoolExecutor

        def flaky(texts, top_k):
            if "boom" in texts:
                raise RuntimeError("model failed")
            return _fake_batch([], 0)(texts, top_k)

        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(flaky, executor, max_batch_size=1, max_wait_ms=0, max_pending_texts=10)
            batcher.start()
            with pytest.raises(RuntimeError, match="model failed"):
                await batcher.submit(["boom"], 0)
            after = await batcher.submit(["fine"], 0)
            await batcher.stop()
            return after

    assert [r.label for r in asyncio.run(main())] == ["FINE"]


def test_concurrent_http_requests_are_batched(tiny_classifier_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    config = ServeConfig(max_batch_size=16, max_wait_ms=20)
    with TestClient(create_app(tiny_classifier_dir, config)) as client:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(
                pool.map(lambda i: client.post("/predict", json={"text": f"query {i}"}).status_code, range(64))
            )
        histogram = client.app.state.metrics.batch_size
        batches = histogram.collect()[0].samples
    assert statuses == [200] * 64
    count = next(s.value for s in batches if s.name.endswith("_count"))
    total = next(s.value for s in batches if s.name.endswith("_sum"))
    assert total == 64
    assert count < 64, "some requests shared a predictor call"


# --- config and the command --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("max_batch_size", 0, "max batch size"),
        ("port", 70000, "port"),
        ("max_wait_ms", -1, "max wait"),
        ("api_key", "  ", "API key is empty"),
        ("graceful_timeout_s", 0, "graceful timeout"),
        ("threads", 0, "threads"),
        ("top_k", 50, "top k"),
        ("log_level", "loud", "log level"),
    ],
)
def test_config_is_validated(field: str, value, fragment: str) -> None:
    from slimformer.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        ServeConfig(**{field: value}).validate()


def test_predictor_threads_are_shared_between_workers() -> None:
    from slimformer.predictor import default_threads

    assert ServeConfig(threads=3).predictor_threads() == 3
    assert ServeConfig(workers=default_threads()).predictor_threads() == 1
    # one core is left to the event loop
    assert ServeConfig().predictor_threads() == max(1, default_threads() - 1)


def test_predictor_threads_follow_a_thread_sweep(tmp_path: Path) -> None:
    from slimformer.predictor import default_threads

    (tmp_path / "session.json").write_text(json.dumps({"threads": 1, "thread_sweep": {"best": {"threads": 1}}}))
    assert ServeConfig().predictor_threads(tmp_path) == 1
    (tmp_path / "session.json").write_text(json.dumps({"threads": 64, "thread_sweep": {"best": {"threads": 64}}}))
    assert ServeConfig().predictor_threads(tmp_path) == default_threads()  # capped at the worker's share
    assert ServeConfig(threads=3).predictor_threads(tmp_path) == 3  # --threads wins
    (tmp_path / "session.json").write_text(json.dumps({"threads": 1}))  # not tuned: the serving default
    assert ServeConfig().predictor_threads(tmp_path) == max(1, default_threads() - 1)


def test_serve_command_rejects_a_missing_model_folder(tmp_path: Path, capsys) -> None:
    from slimformer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(tmp_path / "missing"), "--port", "8123"])
    assert exit_info.value.code == 2
    assert "model folder not found" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(model_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`slimformer serve` in a subprocess on a free loopback port; returns it and its base URL once ready."""
    import os

    import httpx

    port = _free_port()
    command = [sys.executable, "-m", "slimformer.cli", "serve", str(model_dir), "--port", str(port), *args]
    environment = {key: value for key, value in os.environ.items() if key != "SLIMFORMER_API_KEY"}
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**environment, **(env or {})}
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, server.stdout.read().decode()
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return server, base
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.2)


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def test_serve_command_runs_a_real_server_that_survives_bad_input(tiny_classifier_dir: Path) -> None:
    import httpx

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slimformer.cli",
            "serve",
            str(tiny_classifier_dir),
            "--port",
            str(port),
            "--max-body-bytes",
            "65536",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            deadline = time.monotonic() + 120
            while True:
                assert server.poll() is None, server.stdout.read().decode()
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.2)
            assert http.post("/predict", json=GOOD).status_code == 200
            huge = http.post(
                "/predict", content=b"a" * (10 * 1024 * 1024), headers={"content-type": "application/json"}
            )
            assert huge.status_code == 413
            assert "limit is 65536 bytes" in huge.json()["message"]
            assert (
                http.post("/predict", content=b"\xff\xfe", headers={"content-type": "application/json"}).status_code
                == 400
            )
            assert http.post("/predict", json=GOOD).status_code == 200
            assert 'status="413"' in http.get("/metrics").text
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
    assert server.returncode == 0  # SIGTERM after all that bad input: a clean shutdown, not a crash or a kill


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(tiny_classifier_dir: Path) -> None:
    import signal
    import threading

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    # a long batching wait holds requests that arrive together in the queue: they are in flight at SIGTERM.
    # They arrive together behind a slow request (64 long texts): while it runs they queue, then wait for company.
    server, base = _start_server(tiny_classifier_dir, "--max-wait-ms", "3000", "--max-batch-size", "64")
    answers: list[tuple[int, float, int]] = []
    slow = {"texts": ["book a flight " * 700] * 64}

    refused: list[dict] = []  # sent after the server stopped listening: refused, as they should be

    def send(body: dict) -> None:
        try:
            response = httpx.post(f"{base}/predict", json=body, timeout=60)
        except httpx.ConnectError:
            refused.append(body)
            return
        answers.append((response.status_code, time.monotonic(), len(response.json()["predictions"])))

    try:
        senders = [threading.Thread(target=send, args=(body,)) for body in [slow] + [GOOD] * 7]
        senders[0].start()
        time.sleep(0.05)
        for sender in senders[1:]:
            sender.start()
        deadline, pending = time.monotonic() + 10, 0.0
        while pending < 3 and time.monotonic() < deadline:
            families = text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
            pending = next(s.value for f in families for s in f.samples if s.name == "slimformer_pending_texts")
        assert pending >= 3, "requests should be waiting in the batcher"
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        for sender in senders:
            sender.join(timeout=60)
        code = server.wait(timeout=60)
    finally:
        _stop(server)
    output = server.stdout.read().decode()
    assert code == 0, output
    # every request the server took was answered, the slow one and at least the queued ones among them; a sender
    # that had not connected by SIGTERM (on a loaded machine) found the port closed
    assert sorted((status, count) for status, _, count in answers) == [(200, 1)] * (7 - len(refused)) + [(200, 64)]
    assert len(answers) >= 1 + pending and slow not in refused
    assert sum(finished > signalled for _, finished, _ in answers) >= 3, "the queued requests were answered after it"
    assert "Traceback" not in output


# --- authentication ------------------------------------------------------------------------------------------

KEY = "s3cret-key-\u00e9"  # a non-ASCII character too: compared as the bytes the client sends
AUTH = {"authorization": f"Bearer {KEY}".encode()}  # sent as its UTF-8 bytes


@pytest.fixture(scope="module")
def keyed_client(tiny_classifier_dir: Path):
    config = ServeConfig(max_texts_per_request=4, max_chars_per_text=300, max_body_bytes=4096, api_key=KEY)
    with TestClient(create_app(tiny_classifier_dir, config)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "needs an API key"),
        ({"authorization": "Bearer wrong-key"}, "not valid"),
        ({"authorization": f"Bearer {KEY[:-1]}"}, "not valid"),  # a prefix of the key is not the key
        ({"authorization": "Basic dXNlcjpwYXNz"}, "needs an API key"),
        ({"authorization": "Bearer "}, "needs an API key"),
    ],
)
def test_predict_without_the_right_key_is_401(keyed_client, headers, fragment) -> None:
    response = keyed_client.post("/predict", json=GOOD, headers=headers)
    payload = assert_error(response, 401, "unauthorized", fragment)
    assert payload == {"error": "unauthorized", "message": payload["message"], "details": None}
    assert response.headers["www-authenticate"] == "Bearer"
    # the key is checked before the body: an unauthenticated client learns nothing from validation errors
    assert_error(keyed_client.post("/predict", content=b"{", headers=headers), 401, "unauthorized")


def test_the_right_key_is_served_and_health_stays_open(keyed_client) -> None:
    response = keyed_client.post("/predict", json={"texts": ["book a flight", "what is my balance"]}, headers=AUTH)
    assert response.status_code == 200
    labels, _ = keyed_client.app.state.serve.predictor.predict(["book a flight", "what is my balance"])
    assert [p["label"] for p in response.json()["predictions"]] == labels
    assert_error(keyed_client.post("/predict", json={"text": ""}, headers=AUTH), 422, "validation_error")
    assert keyed_client.get("/healthz").json() == {"status": "ok"}
    assert keyed_client.get("/readyz").json() == {"status": "ready"}
    assert_error(keyed_client.get("/metrics"), 401, "unauthorized")
    assert 'status="401"' in keyed_client.get("/metrics", headers=AUTH).text
    info = keyed_client.get("/info").json()
    assert info["auth"] == {"api_key": True, "open_metrics": False} and KEY not in json.dumps(info)


def test_open_metrics_leaves_only_predict_behind_the_key(tiny_classifier_dir: Path) -> None:
    with TestClient(create_app(tiny_classifier_dir, ServeConfig(api_key=KEY, open_metrics=True))) as client:
        assert client.get("/metrics").status_code == 200
        assert_error(client.post("/predict", json=GOOD), 401, "unauthorized")
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    assert schema["paths"]["/predict"]["post"]["security"] == [{"bearerAuth": []}]
    assert "401" in schema["paths"]["/predict"]["post"]["responses"]
    assert "security" not in schema["paths"]["/metrics"]["get"]


def test_api_key_comes_from_a_file_or_the_environment(tmp_path: Path, monkeypatch) -> None:
    from slimformer.errors import ConfigError
    from slimformer.serve import load_api_key

    monkeypatch.delenv("SLIMFORMER_API_KEY", raising=False)
    assert load_api_key(None) is None
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert load_api_key(key_file) == "from-file"
    monkeypatch.setenv("SLIMFORMER_API_KEY", " from-env ")
    assert load_api_key(None) == "from-env"
    assert load_api_key(key_file) == "from-file"  # the file wins
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ConfigError, match="API key file .*empty is empty"):
        load_api_key(tmp_path / "empty")
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        load_api_key(tmp_path / "missing")
    monkeypatch.setenv("SLIMFORMER_API_KEY", "")
    with pytest.raises(ConfigError, match="set but empty"):
        load_api_key(None)


@pytest.mark.parametrize(
    ("host", "key", "insecure", "refused"),
    [
        ("127.0.0.1", None, False, False),
        ("localhost", None, False, False),
        ("::1", None, False, False),
        ("0.0.0.0", None, False, True),
        ("192.168.1.5", None, False, True),
        ("my-host.example", None, False, True),
        ("0.0.0.0", "k", False, False),
        ("0.0.0.0", None, True, False),
    ],
)
def test_a_non_loopback_bind_needs_a_key_or_insecure(host, key, insecure, refused) -> None:
    from slimformer.errors import ConfigError
    from slimformer.serve import check_bind

    if refused:
        with pytest.raises(ConfigError, match=f"refusing to serve on {host} without an API key"):
            check_bind(host, key, insecure)
    else:
        check_bind(host, key, insecure)


def test_serve_command_refuses_a_public_bind_without_a_key_and_an_empty_key_file(
    tiny_classifier_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from slimformer.cli import main

    monkeypatch.delenv("SLIMFORMER_API_KEY", raising=False)
    (tmp_path / "empty").write_text("")
    for args, message in (
        (["--host", "0.0.0.0"], "error: refusing to serve on 0.0.0.0 without an API key"),
        (["--api-key-file", str(tmp_path / "empty")], "is empty"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", str(tiny_classifier_dir), "--port", "8123", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_serve_command_with_a_key_file_on_all_interfaces(tiny_classifier_dir: Path, tmp_path: Path) -> None:
    import httpx

    (tmp_path / "key").write_text("file-key\n")
    server, base = _start_server(tiny_classifier_dir, "--host", "0.0.0.0", "--api-key-file", str(tmp_path / "key"))
    try:
        assert httpx.post(f"{base}/predict", json=GOOD).status_code == 401
        assert httpx.post(f"{base}/predict", json=GOOD, headers={"authorization": "Bearer nope"}).status_code == 401
        response = httpx.post(f"{base}/predict", json=GOOD, headers={"authorization": "Bearer file-key"})
        assert response.status_code == 200 and response.json()["predictions"][0]["num_tokens"] > 2
    finally:
        _stop(server)


def test_serve_command_insecure_serves_openly_on_all_interfaces(tiny_classifier_dir: Path) -> None:
    import httpx

    server, base = _start_server(tiny_classifier_dir, "--host", "0.0.0.0", "--insecure")
    try:
        assert httpx.post(f"{base}/predict", json=GOOD).status_code == 200
    finally:
        _stop(server)
