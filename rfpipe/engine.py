"""The engine: one bounded queue of images in, batches through a detector, one future per image out.

`Detector.stream`, the HTTP server and the video streams all submit here. An item is a decoded
frame (uint8 HWC numpy array or tensor, as `rfpipe.preprocess` takes) or encoded image bytes,
which a thread pool decodes exactly as `rfpipe.io.decode.decode_image` does (OpenCV, EXIF
orientation, pixel limits) before the item joins a batch. A worker thread takes up to `max_batch`
items, waiting at most `max_wait_ms` after the oldest, and runs preprocess -> forward ->
postprocess on them as one batch; items may differ in overrides, colour format and confidence.

Batch policies:
- ``"dynamic"``: a batch runs at the size that arrived (a compiled forward pads it up to its batch
  bucket, the next power of two). Fastest at low load, but on GPUs the network's kernels change
  with the batch size, so an image's raw outputs may differ in the last bits by what else was in
  its batch.
- ``"fixed"``: every batch is padded to `max_batch` rows (the padding's outputs are dropped). RF-DETR's
  rows do not interact at inference, so an image's answer is computed by the same kernels at the
  same shape whatever else arrived: answers do not depend on the batch's composition.

Stages are pipelined: one thread takes a batch, preprocesses it and queues its forward pass (on a
GPU this returns at once), then hands it to a second thread that post-processes it (the one
device-to-host copy, where the host waits for the GPU) and completes the futures. Up to `inflight`
batches are between the two, so batch N+1 is decoded, staged and queued while batch N runs. Encoded
bytes bound for a GPU are decoded into pinned host memory by the decode threads
(`rfpipe.io.pool.decode_staged`); `gpu_decode=True` decodes JPEG with nvJPEG instead, a batch at a
time on a stage thread of its own ahead of the launching thread, so batch N+1 is decoded on the
GPU while batch N is preprocessed and launched (not exact: see `rfpipe.io.gpu`).

An item that fails (bytes that do not decode, a frame preprocessing refuses, a batch whose forward
raises) gets its own exception on its own future; the other items of its batch are retried alone,
so one bad image cannot fail its neighbours.

>>> engine = Engine(detector, max_batch=8)  # model  # doctest: +SKIP
>>> engine.submit(frame_bgr, confidence=0.5).result()  # model  # doctest: +SKIP
Detections(...)
>>> engine.close()  # model  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from rfpipe.geometry import Overrides

logger = logging.getLogger("rfpipe")

BATCH_POLICIES = ("dynamic", "fixed")
ENCODED = (bytes, bytearray, memoryview)


class QueueFull(RuntimeError):
    """The engine's bounded queue has no room for another item (submit with block=False)."""


class EngineClosed(RuntimeError):
    """The engine was closed: it takes no new items, and items it dropped get this error."""


@dataclass(eq=False)
class _Item:
    frame: Any
    confidence: Any
    overrides: Overrides
    color: str | None
    image_size: Any
    future: Future
    enqueued: float = field(default_factory=time.monotonic)

    def group(self) -> tuple:
        size = tuple(self.image_size) if isinstance(self.image_size, (list, tuple)) else self.image_size
        return (self.overrides, self.color, size)


def default_decode_threads(cpus: int | None = None) -> int:
    """Decode threads for a machine of `cpus` cores: at most 16, leaving four cores (half of a small
    machine's) to the engine's own threads. Measured on a 16-core H100 host (benchmarks/RESULTS.md,
    2026-12-06): 12 decode threads gave 1,686 frames/s end to end where 16, every core, gave 1,343.

    >>> default_decode_threads(16), default_decode_threads(8), default_decode_threads(2), default_decode_threads(64)
    (12, 4, 1, 16)
    """
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(16, max(cpus // 2, cpus - 4)))


def _groups(keys: Sequence[Any]) -> dict[Any, list[int]]:
    """Positions of each distinct key, in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key, []).append(position)
    return groups


def _confidence_key(confidence: Any) -> Any:
    return tuple(sorted(confidence.items())) if isinstance(confidence, dict) else confidence


class Engine:
    """Batches submitted images through `detector` on a worker thread; `submit` returns a future.

    `detector` is an `rfpipe.Detector` (anything with its `preprocess`, `forward` and `postprocess`).
    `queue_size` bounds the items admitted and not yet finished (decoding, queued or running).

    >>> with Engine(detector, max_batch=4, batch_policy="fixed") as engine:  # model  # doctest: +SKIP
    ...     futures = [engine.submit(f) for f in frames]
    ...     detections = [f.result() for f in futures]
    """

    def __init__(
        self,
        detector: Any,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 2.0,
        queue_size: int = 256,
        batch_policy: str = "dynamic",
        decode_threads: int | None = None,
        max_pixels: int | None = None,
        implementation: str = "auto",
        inflight: int = 2,
        pin_frames: bool | None = None,
        gpu_decode: bool = False,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if queue_size < max_batch:
            raise ValueError(f"queue_size ({queue_size}) must be at least max_batch ({max_batch})")
        if batch_policy not in BATCH_POLICIES:
            raise ValueError(f"batch_policy must be one of {BATCH_POLICIES}, got {batch_policy!r}")
        if inflight < 1:
            raise ValueError(f"inflight must be at least 1, got {inflight}")
        on_gpu = getattr(getattr(detector, "device", None), "type", "cpu") == "cuda"
        if gpu_decode and not on_gpu:
            raise ValueError("gpu_decode=True needs a detector on a CUDA device")
        self.detector = detector
        self.pin_frames = on_gpu if pin_frames is None else pin_frames
        self.gpu_decode = gpu_decode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.batch_policy = batch_policy
        self.implementation = implementation
        self._max_pixels = max_pixels
        self._decode_threads = decode_threads or default_decode_threads()
        self._decoder: ThreadPoolExecutor | None = None
        self._queue: deque[_Item] = deque()
        self._admitted = 0  # items admitted and not finished
        # One lock, two conditions: `_cond` wakes the batching thread (an item to start a batch, a full
        # batch, stopping), `_room` wakes submitters waiting for room and a draining close(). Finished
        # items and items that do not complete a batch wake nobody who cannot act on them.
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._room = threading.Condition(lock)
        self._closed = False
        self._stopping = False
        self.decode_device = getattr(detector, "device", None)  # where gpu_decode decodes
        self.batches = 0  # batches launched, and the images in them (`mean_batch`)
        self.batched_items = 0
        self._launched: queue.Queue = queue.Queue(maxsize=inflight)
        # gpu_decode: one decoded batch waits for the launching thread while the next is decoded (decoded
        # frames are full-size on the device, so no more are held)
        self._decoded: queue.Queue = queue.Queue(maxsize=1)
        self._threads = [threading.Thread(target=self._finish_loop, name="rfpipe-engine-post", daemon=True),
                         threading.Thread(target=self._work, name="rfpipe-engine", daemon=True)]
        if gpu_decode:
            self._threads.append(threading.Thread(target=self._decode_loop, name="rfpipe-engine-decode", daemon=True))
        for thread in self._threads:
            thread.start()

    # -- submitting -------------------------------------------------------------------------------

    def submit(
        self,
        item: Any,
        *,
        confidence: Any = None,
        overrides: Overrides | None = None,
        input_color_format: str | None = "bgr",
        image_size: int | tuple[int, int] | None = None,
        block: bool = True,
        timeout: float | None = None,
    ) -> Future:
        """Queue one image (a frame, or encoded bytes); the future gets its `Detections` or its error.

        With the queue full, `block=True` waits for room (up to `timeout` seconds, then `QueueFull`);
        `block=False` raises `QueueFull` at once. A closed engine raises `EngineClosed`.
        """
        future: Future = Future()
        entry = _Item(item, confidence, overrides or Overrides(), input_color_format, image_size, future)
        self._admit(block, timeout)
        future.add_done_callback(self._finished)
        if isinstance(item, ENCODED) and not self.gpu_decode:
            try:
                self._pool().submit(self._decode_then_queue, entry)
            except RuntimeError as error:  # the pool shut down under us: the engine is closing
                future.set_exception(EngineClosed(f"the engine is closed ({error})"))
        else:
            self._enqueue(entry)
        return future

    def _admit(self, block: bool, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise EngineClosed("the engine is closed and takes no new items")
                if self._admitted < self.queue_size:
                    self._admitted += 1
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if not block or (remaining is not None and remaining <= 0):
                    raise QueueFull(f"the engine's queue holds {self._admitted} of {self.queue_size} images")
                self._room.wait(remaining)

    def _finished(self, _future: Future) -> None:
        with self._room:
            self._admitted -= 1
            self._room.notify_all()

    def _pool(self) -> ThreadPoolExecutor:
        with self._cond:
            if self._decoder is None:
                self._decoder = ThreadPoolExecutor(self._decode_threads, thread_name_prefix="rfpipe-decode")
            return self._decoder

    def _decode_then_queue(self, entry: _Item) -> None:
        from rfpipe.io.pool import decode_staged

        try:
            options = {} if self._max_pixels is None else {"max_pixels": self._max_pixels}
            entry.frame = decode_staged(entry.frame, pinned=self.pin_frames, **options)
        except Exception as error:
            entry.future.set_exception(error)
            return
        self._enqueue(entry)

    def _enqueue(self, entry: _Item) -> None:
        with self._cond:
            if not self._stopping:
                self._queue.append(entry)
                if len(self._queue) == 1 or len(self._queue) >= self.max_batch:  # a batch can start, or is full
                    self._cond.notify()
                return
        # Outside the lock: the future's done-callback (`_finished`) takes it.
        entry.future.set_exception(EngineClosed("the engine closed before this image ran"))

    # -- state ------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Items admitted and not yet finished."""
        return self._admitted

    @property
    def mean_batch(self) -> float:
        """Mean number of images in the batches launched so far (retries of single images not counted)."""
        return self.batched_items / self.batches if self.batches else 0.0

    @property
    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Take no new items; with `drain`, finish every admitted item first (up to `timeout` s).

        Items still waiting when the engine stops get `EngineClosed`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closed = True
            while drain and self._admitted > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._room.wait(remaining)
            self._stopping = True
            self._cond.notify_all()
            self._room.notify_all()
        if self._decoder is not None:
            self._decoder.shutdown(wait=True, cancel_futures=True)
        for thread in reversed(self._threads):  # upstream stages first: each tells the next to stop
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for entry in left:
            if not entry.future.done():
                entry.future.set_exception(EngineClosed("the engine closed before this image ran"))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the worker -------------------------------------------------------------------------------

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while True:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._queue:
                    return None
                deadline = self._queue[0].enqueued + self.max_wait_s
                while len(self._queue) < self.max_batch and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = []
                while self._queue and len(batch) < self.max_batch:
                    entry = self._queue.popleft()
                    if entry.future.set_running_or_notify_cancel():
                        batch.append(entry)
                if batch:
                    return batch

    def _work(self) -> None:
        next_batch = self._decoded.get if self.gpu_decode else self._take
        try:
            with torch.inference_mode():
                while (batch := next_batch()) is not None:
                    launched = self._launch_or_retry(batch)
                    if launched is not None:
                        self._launched.put(launched)
        finally:
            self._launched.put(None)  # tells the post-processing thread to stop

    def _decode_loop(self) -> None:
        """gpu_decode's stage: take a batch, decode its encoded items on the device, hand it on."""
        try:
            with torch.inference_mode():
                while (batch := self._take()) is not None:
                    batch = self._decode_on_device(batch)
                    if batch:
                        self._decoded.put(batch)
        finally:
            self._decoded.put(None)  # tells the launching thread to stop

    def _finish_loop(self) -> None:
        with torch.inference_mode():
            while (launched := self._launched.get()) is not None:
                batch, state = launched
                try:
                    self._complete(batch, self.finish(state))
                except Exception as error:
                    self._retry(batch, error)

    @staticmethod
    def _complete(batch: list[_Item], results: list[Any]) -> None:
        for entry, result in zip(batch, results, strict=True):  # `finish` gives one result per image
            entry.future.set_result(result)

    def _decode_on_device(self, batch: list[_Item]) -> list[_Item]:
        """nvJPEG for the batch's encoded items (gpu_decode=True); items that do not decode fail alone,
        and a failure of the decoder itself fails the encoded items only, not the frames beside them."""
        from rfpipe.io import pool

        encoded = [e for e in batch if isinstance(e.frame, ENCODED)]
        if not encoded:
            return batch
        options = {} if self._max_pixels is None else {"max_pixels": self._max_pixels}
        try:
            frames = pool.decode_batch_on_device([e.frame for e in encoded], self.decode_device, **options)
        except Exception as error:
            logger.warning("rfpipe engine: device decode of %d images failed (%r)", len(encoded), error)
            frames = [error] * len(encoded)
        for entry, frame in zip(encoded, frames, strict=True):
            if isinstance(frame, BaseException):
                entry.future.set_exception(frame)
            else:
                entry.frame = frame
        return [e for e in batch if not e.future.done()]

    def _launch_or_retry(self, batch: list[_Item]) -> tuple[list[_Item], Any] | None:
        self.batches += 1  # only this thread writes them
        self.batched_items += len(batch)
        try:
            return batch, self.launch([e.frame for e in batch], [e.group() for e in batch],
                                      [e.confidence for e in batch])
        except Exception as error:
            self._retry(batch, error)
            return None

    def _retry(self, batch: list[_Item], error: Exception) -> None:
        if len(batch) > 1:  # find the image that fails; the others still get their answers
            logger.warning("rfpipe engine: a batch of %d failed (%r); retrying its images alone", len(batch), error)
            for entry in batch:
                self._run([entry])
            return
        batch[0].future.set_exception(error)

    def _run(self, batch: list[_Item]) -> None:
        """The batch start to finish on the calling thread (retries)."""
        try:
            self._complete(batch, self.infer([e.frame for e in batch], [e.group() for e in batch],
                                             [e.confidence for e in batch]))
        except Exception as error:
            self._retry(batch, error)

    def infer(self, frames: list[Any], groups: list[tuple], confidences: list[Any]) -> list[Any]:
        """Detections for each frame as one forward pass; `groups[i]` = (overrides, colour, image_size)."""
        return self.finish(self.launch(frames, groups, confidences))

    def launch(self, frames: list[Any], groups: list[tuple], confidences: list[Any]) -> tuple:
        """Preprocess and queue the forward pass of one batch; `finish` turns the result into detections."""
        detector = self.detector
        order: list[int] = []
        parts, metadata = [], []
        for (overrides, color, size), positions in _groups(groups).items():
            batch, meta = detector.preprocess([frames[i] for i in positions], input_color_format=color,
                                              overrides=overrides, image_size=size,
                                              implementation=self.implementation, synchronize=False)
            parts.append(batch)
            metadata.extend(meta)
            order.extend(positions)
        batch = parts[0] if len(parts) == 1 else torch.cat(parts)
        rows = batch.shape[0]
        if self.batch_policy == "fixed" and rows < self.max_batch:
            padding = batch.new_zeros((self.max_batch - rows, *batch.shape[1:]))
            batch = torch.cat([batch, padding])
        logits, boxes = detector.forward(batch)
        return logits[:rows], boxes[:rows], metadata, order, confidences

    def finish(self, state: tuple) -> list[Any]:
        """Post-process a launched batch: one `Detections` per frame, in the frames' order."""
        logits, boxes, metadata, order, confidences = state
        detector = self.detector
        rows = logits.shape[0]
        results: list[Any] = [None] * len(order)
        ordered = [confidences[i] for i in order]
        for positions in _groups([_confidence_key(c) for c in ordered]).values():
            confidence = ordered[positions[0]]
            options = {} if confidence is None else {"confidence": confidence}
            if len(positions) == rows:
                detections = detector.postprocess(logits, boxes, metadata, **options)
            else:
                index = torch.tensor(positions, device=logits.device)
                detections = detector.postprocess(logits.index_select(0, index), boxes.index_select(0, index),
                                                  [metadata[p] for p in positions], **options)
            if len(detections) != len(positions):
                raise RuntimeError(f"the detector answered {len(detections)} images for a batch of {len(positions)}")
            for position, detection in zip(positions, detections, strict=True):
                results[order[position]] = detection
        return results


class ItemError(Exception):
    """The error of one item of `Detector.stream`: which item (its index) and what went wrong."""

    def __init__(self, index: int, cause: BaseException):
        super().__init__(f"item {index}: {type(cause).__name__}: {cause}")
        self.index = index
        self.cause = cause


def stream(
    engine: Engine,
    items: Any,
    *,
    errors: str = "yield",
    window: int | None = None,
    **options: Any,
):
    """Yield each item's result in input order while keeping up to `window` items in the engine.

    `errors="yield"` yields an `ItemError` in place of a failed item's detections and goes on;
    `errors="raise"` raises it. `options` go to `Engine.submit` (confidence, overrides, ...).
    """
    if errors not in ("yield", "raise"):
        raise ValueError(f"errors must be 'yield' or 'raise', got {errors!r}")
    window = window or 4 * engine.max_batch
    pending: deque[tuple[int, Future]] = deque()

    def result(index: int, future: Future) -> Any:
        try:
            return future.result()
        except Exception as error:
            wrapped = ItemError(index, error)
            if errors == "raise":
                raise wrapped from error
            return wrapped

    for index, item in enumerate(items):
        if len(pending) >= window:
            yield result(*pending.popleft())
        pending.append((index, engine.submit(item, **options)))
    while pending:
        yield result(*pending.popleft())


__all__: list[str] = ["BATCH_POLICIES", "Engine", "EngineClosed", "ItemError", "QueueFull", "default_decode_threads",
                      "stream"]
