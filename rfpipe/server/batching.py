"""Dynamic batching: images from concurrent requests meet in one bounded queue and leave in batches.

One worker thread per detector (one detector per device, or several with --workers-per-device)
takes up to `max_batch` images, waiting at most `max_wait` after the oldest one arrived, and runs
preprocess -> forward -> postprocess on them as one batch. Requests may differ in overrides and
confidence: images are preprocessed per overrides group and concatenated into one forward pass,
then post-processed per confidence group. Every image carries its own future, so a result can
only reach the request that sent the image. A batch that fails is retried image by image, so one
bad image cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rfpipe.geometry import Overrides
from rfpipe.server.metrics import Metrics

logger = logging.getLogger("rfpipe.server")


@dataclass(eq=False)
class Job:
    """One image of one request, waiting for its detections."""

    frame: np.ndarray
    overrides: Overrides
    confidence: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # set by the request when it timed out: skip if not started


class QueueFull(Exception):
    """More images than the queue admits."""


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the request gave up (timeout, disconnect)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _deliver(job: Job, result: Any = None, error: BaseException | None = None) -> None:
    try:
        job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
    except RuntimeError:  # event loop closed: the server is shutting down
        pass


def _groups(keys: list[Any]) -> dict[Any, list[int]]:
    """Positions of each distinct key, in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key, []).append(position)
    return groups


def infer_batch(detector: Any, frames: list[np.ndarray], overrides: list[Overrides], confidences: list[float],
                metrics: Metrics | None = None) -> list[Any]:
    """Detections for each frame, run as one forward pass; frame i gets its own overrides and confidence.

    >>> infer_batch(detector, [a, b], [Overrides(), Overrides(disable_contrast=True)], [0.4, 0.5])  # doctest: +SKIP
    [Detections(...), Detections(...)]
    """
    started = time.perf_counter()
    order: list[int] = []
    parts, metadata = [], []
    for key, positions in _groups(overrides).items():
        batch, meta = detector.preprocess([frames[i] for i in positions], overrides=key)
        parts.append(batch)
        metadata.extend(meta)
        order.extend(positions)
    batch = parts[0] if len(parts) == 1 else torch.cat(parts)
    preprocessed = time.perf_counter()
    logits, boxes = detector.forward(batch)
    if batch.device.type == "cuda":  # so the forward time below is the GPU's, not the launch's
        torch.cuda.current_stream(batch.device).synchronize()
    forwarded = time.perf_counter()
    results: list[Any] = [None] * len(frames)
    for confidence, positions in _groups([confidences[i] for i in order]).items():
        if len(positions) == len(order):
            detections = detector.postprocess(logits, boxes, metadata, confidence=confidence)
        else:
            index = torch.tensor(positions, device=logits.device)
            detections = detector.postprocess(logits.index_select(0, index), boxes.index_select(0, index),
                                              [metadata[p] for p in positions], confidence=confidence)
        for position, detection in zip(positions, detections, strict=True):
            results[order[position]] = detection
    if metrics is not None:
        metrics.stage.labels("preprocess").observe(preprocessed - started)
        metrics.stage.labels("forward").observe(forwarded - preprocessed)
        metrics.stage.labels("postprocess").observe(time.perf_counter() - forwarded)
        metrics.batch_size.observe(len(frames))
    return results


class Batcher:
    """Admits images up to `capacity`, runs them through the detectors in batches, one thread per detector.

    >>> batcher = Batcher([detector], max_batch=8, max_wait_s=0.005, capacity=256, metrics=Metrics())  # doctest: +SKIP
    >>> batcher.start(); batcher.admit(1); batcher.submit([job]); await job.future  # doctest: +SKIP
    """

    def __init__(self, detectors: list[Any], max_batch: int, max_wait_s: float, capacity: int, metrics: Metrics):
        if not detectors:
            raise ValueError("a Batcher needs at least one detector")
        self._detectors = detectors
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._capacity = capacity
        self._metrics = metrics
        self._queue: deque[Job] = deque()
        self._admitted = 0  # images admitted and not yet taken by a worker (decoding or queued)
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._warm: list[bool] = [False] * len(detectors)
        self._settled = threading.Semaphore(0)  # one release per worker when its warm-up ends, either way
        self.failure: str | None = None  # why a worker could not start, for /readyz

    @property
    def ready(self) -> bool:
        return bool(self._threads) and all(self._warm) and all(t.is_alive() for t in self._threads)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        for index, detector in enumerate(self._detectors):
            thread = threading.Thread(target=self._work, args=(index, detector), name=f"rfpipe-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_warm(self, timeout_s: float) -> bool:
        """Block until every worker finished its warm-up batch (or `timeout_s` passed); True when ready."""
        deadline = time.monotonic() + timeout_s
        for _ in self._threads:
            if not self._settled.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
        return self.ready

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)

    def admit(self, count: int) -> None:
        """Reserve room for `count` images (before decoding them); QueueFull when there is none."""
        with self._cond:
            if self._admitted + count > self._capacity:
                raise QueueFull(f"the queue holds {self._admitted} of {self._capacity} images")
            self._admitted += count

    def withdraw(self, count: int) -> None:
        """Give back room admitted for images that will not be submitted."""
        with self._cond:
            self._admitted -= count

    def submit(self, jobs: list[Job]) -> None:
        """Queue admitted jobs; their futures get Detections or the exception that stopped them."""
        with self._cond:
            self._queue.extend(jobs)
            self._metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()

    def _take(self) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    jobs = list(self._queue)
                    self._queue.clear()
                    self._admitted -= len(jobs)
                    for job in jobs:
                        _deliver(job, error=RuntimeError("the server is shutting down"))
                    return None
                deadline = self._queue[0].enqueued + self._max_wait
                while self._queue and len(self._queue) < self._max_batch and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stopping:
                    continue
                jobs = []
                while self._queue and len(jobs) < self._max_batch:
                    job = self._queue.popleft()
                    self._admitted -= 1
                    if not job.abandoned:
                        jobs.append(job)
                self._metrics.queue_depth.set(len(self._queue))
                if jobs:
                    return jobs

    def _work(self, index: int, detector: Any) -> None:
        device = str(getattr(detector, "device", "cpu"))
        with torch.inference_mode():
            try:  # a first batch loads kernels and allocators, so the first request is not the slow one
                infer_batch(detector, [np.zeros((64, 64, 3), np.uint8)], [Overrides()], [0.5])
            except Exception as error:
                self.failure = f"worker {index} ({device}) failed its warm-up batch: {error!r}"
                logger.exception("worker %d (%s) failed its warm-up batch; it will not serve", index, device)
                self._settled.release()
                return
            self._warm[index] = True
            self._settled.release()
            while (jobs := self._take()) is not None:
                self._run(detector, device, jobs)

    def _run(self, detector: Any, device: str, jobs: list[Job]) -> None:
        now = time.monotonic()
        for job in jobs:
            self._metrics.stage.labels("queue").observe(now - job.enqueued)
        try:
            results = infer_batch(detector, [j.frame for j in jobs], [j.overrides for j in jobs],
                                  [j.confidence for j in jobs], self._metrics)
        except Exception as error:
            if len(jobs) > 1:  # find the image that fails; the others still get their answers
                logger.warning("a batch of %d failed (%r); retrying its images one by one", len(jobs), error)
                for job in jobs:
                    self._run(detector, device, [job])
                return
            _deliver(jobs[0], error=error)
            return
        self._metrics.images.labels(device).inc(len(jobs))
        if device.startswith("cuda"):
            self._metrics.gpu_peak.labels(device).set(torch.cuda.max_memory_allocated(device))
        for job, result in zip(jobs, results, strict=True):
            _deliver(job, result)
