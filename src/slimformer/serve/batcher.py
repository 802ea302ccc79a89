"""Micro-batching: the texts of requests that arrive together go to the predictor in one call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimformer.serve.schema import ServeError

if TYPE_CHECKING:
    from slimformer.predictor import Predictor


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
    only while load shows they arrive together (the previous batch held more than one request, or several
    are queued), so a lone request pays no waiting time. With `inline_lone_requests`, a one-text request on
    an idle server runs on the event loop itself: with nothing else queued the loop has nothing to do
    meanwhile, and the hand-over to the thread and back costs as much as a small model's call.
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
        self._busy = False  # a batch is running
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="slimformer-batcher")

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Refuse new requests, answer the queued ones (for up to `drain_timeout_s`), then stop."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        while (self._pending or self._busy) and self.running and loop.time() < deadline:
            await asyncio.sleep(0.005)
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
        if not self.running or self._closing:
            raise ServeError(503, "not_ready", "the model is not loaded, or the server is shutting down")
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
            started = time.perf_counter()
            self._busy = True
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, texts, max(j.top_k for j in jobs))
            except Exception as exc:  # a failing batch fails its requests, never the batcher
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._busy = False
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
        return results

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


def predict_batch(predictor: Predictor, texts: list[str], top_k: int, max_batch_size: int) -> list[TextResult]:
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
