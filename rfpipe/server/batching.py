"""The server's batching: admission before decoding, then one `rfpipe.engine.Engine` per detector.

Images are admitted (counted against `capacity`) before they are decoded, so a flood is refused
with 503 before any work is done and the admitted count bounds the memory held by decoded frames.
Decoded frames go to the engine with the fewest pending images (one engine per detector: one per
device, or several with --workers-per-device); the engine batches them (`batch_policy` "dynamic"
or "fixed", see `rfpipe.engine`), retries a failing batch image by image, and answers every image
on its own future. An image's admission is given back when its future is done, or at once when
the request gives up on it before it ran (timeout, client gone).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from rfpipe.engine import Engine
from rfpipe.geometry import Overrides
from rfpipe.server.metrics import Metrics

logger = logging.getLogger("rfpipe.server")


class QueueFull(Exception):
    """More images than the server admits."""


class _Timed:
    """The engine's view of a detector: the same calls, timed into the server's metrics once `live` (after warm-up)."""

    def __init__(self, detector: Any, metrics: Metrics):
        self._detector = detector
        self._metrics = metrics
        device = str(getattr(detector, "device", "cpu"))
        self._images = metrics.images.labels(device)
        self._gpu = device if device.startswith("cuda") else None
        self.live = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)

    def preprocess(self, images: Any, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._detector.preprocess(images, **options)
        finally:
            if self.live:
                self._metrics.stage.labels("preprocess").observe(time.perf_counter() - started)

    def forward(self, batch: torch.Tensor) -> Any:
        started = time.perf_counter()
        try:
            return self._detector.forward(batch)
        finally:
            if self.live:
                self._metrics.stage.labels("forward").observe(time.perf_counter() - started)
                self._metrics.batch_size.observe(batch.shape[0])

    def postprocess(self, logits: torch.Tensor, boxes: torch.Tensor, metadata: Sequence[Any], **options: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._detector.postprocess(logits, boxes, metadata, **options)
        finally:
            if self.live:
                self._metrics.stage.labels("postprocess").observe(time.perf_counter() - started)
                self._images.inc(len(metadata))
                if self._gpu is not None:
                    self._metrics.gpu_peak.labels(self._gpu).set(torch.cuda.max_memory_allocated(self._gpu))


def warmup_sizes(detector: Any, max_batch: int, batch_policy: str) -> list[int]:
    """The batch sizes a warm-up runs: the detector's compiled buckets when it has them, else what the policy runs.

    >>> warmup_sizes(object(), 8, "fixed"), warmup_sizes(object(), 8, "dynamic")
    ([8], [1, 8])
    """
    buckets = getattr(detector, "buckets", None)
    if buckets:
        return sorted({min(int(b), max_batch) for b in buckets})
    return [max_batch] if batch_policy == "fixed" else sorted({1, max_batch})


class Batcher:
    """Admits images up to `capacity` and runs them through one engine per detector.

    >>> batcher = Batcher([detector], max_batch=8, max_wait_ms=5.0, capacity=256, metrics=Metrics())  # doctest: +SKIP
    >>> batcher.start(); batcher.wait_warm(600); batcher.admit(1)  # doctest: +SKIP
    >>> detections = await batcher.submit(frame, confidence=0.5)  # doctest: +SKIP
    """

    def __init__(self, detectors: list[Any], *, max_batch: int, max_wait_ms: float, capacity: int,
                 metrics: Metrics, batch_policy: str = "dynamic"):
        if not detectors:
            raise ValueError("a Batcher needs at least one detector")
        self._detectors = detectors
        self.max_batch = max_batch
        self.batch_policy = batch_policy
        self._capacity = capacity
        self._metrics = metrics
        self._timed = [_Timed(d, metrics) for d in detectors]
        self._engines = [Engine(timed, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                queue_size=max(capacity, max_batch), batch_policy=batch_policy)
                         for timed in self._timed]
        self._admitted = 0  # images admitted and not yet answered (decoding, queued or running)
        self._lock = threading.Lock()
        self._warm = [False] * len(detectors)
        self._settled = threading.Semaphore(0)  # one release per engine when its warm-up ends, either way
        self._threads: list[threading.Thread] = []
        self.failure: str | None = None  # why an engine could not start, for /readyz
        self.warmup_s: float | None = None  # how long the slowest warm-up took

    @property
    def ready(self) -> bool:
        return bool(self._threads) and all(self._warm) and all(e.alive for e in self._engines)

    @property
    def admitted(self) -> int:
        return self._admitted

    def start(self) -> None:
        """Warm every engine up on its own thread: every batch size it will run, once (compiles them)."""
        started = time.perf_counter()
        for index, (engine, detector) in enumerate(zip(self._engines, self._detectors, strict=True)):
            thread = threading.Thread(target=self._warm_up, args=(index, engine, detector, started),
                                      name=f"rfpipe-warmup-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _warm_up(self, index: int, engine: Engine, detector: Any, started: float) -> None:
        device = str(getattr(detector, "device", "cpu"))
        frame = np.zeros((64, 64, 3), np.uint8)
        try:
            for size in warmup_sizes(detector, self.max_batch, self.batch_policy):
                for future in [engine.submit(frame, confidence=0.5) for _ in range(size)]:
                    future.result()
        except Exception as error:
            self.failure = f"worker {index} ({device}) failed its warm-up batch: {error!r}"
            logger.exception("worker %d (%s) failed its warm-up batch; it will not serve", index, device)
        else:
            self._timed[index].live = True
            self._warm[index] = True
            elapsed = time.perf_counter() - started
            self.warmup_s = max(self.warmup_s or 0.0, elapsed)
        self._settled.release()

    def wait_warm(self, timeout_s: float) -> bool:
        """Block until every engine finished its warm-up (or `timeout_s` passed); True when ready."""
        deadline = time.monotonic() + timeout_s
        for _ in self._threads:
            if not self._settled.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
        return self.ready

    def stop(self, timeout_s: float | None = 10.0) -> None:
        """Finish what was admitted (up to `timeout_s` in all), then stop the engines."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for engine in self._engines:
            engine.close(drain=True, timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))

    def admit(self, count: int) -> None:
        """Reserve room for `count` images (before decoding them); QueueFull when there is none."""
        with self._lock:
            if self._admitted + count > self._capacity:
                raise QueueFull(f"the queue holds {self._admitted} of {self._capacity} images")
            self._admitted += count
            self._metrics.queue_depth.set(self._admitted)

    def withdraw(self, count: int = 1) -> None:
        """Give back room admitted for images that will not run (or have finished)."""
        with self._lock:
            self._admitted -= count
            self._metrics.queue_depth.set(self._admitted)

    def submit(self, frame: Any, *, confidence: float, overrides: Overrides) -> asyncio.Future:
        """Hand one admitted, decoded frame to the least busy engine; await the result for its Detections.

        Cancelling the result before the image ran takes it out of the engine and gives its room back.
        """
        engine = min(self._engines, key=lambda e: e.pending)
        queued = time.perf_counter()
        future: Future = engine.submit(frame, confidence=confidence, overrides=overrides, block=False)

        def finished(_: Future) -> None:
            self._metrics.stage.labels("queue").observe(time.perf_counter() - queued)
            self.withdraw()

        future.add_done_callback(finished)
        return asyncio.wrap_future(future)
