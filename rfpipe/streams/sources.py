"""One thread per source: decode frames and hand them to the runner under the source's policy.

- Files and image folders (`live=False`): every frame, in order. The thread decodes ahead into a
  small bounded buffer and waits while it is full, so a file goes at the engine's pace and none of
  its frames is dropped.
- Cameras and network streams (`live=True`): the thread reads as fast as the source sends and
  keeps only the newest frame; a frame replaced before inference took it is counted as dropped.
  A stream that fails or ends is reopened with exponential back-off (`reconnect`), each failure
  reported as an error naming the source.
- `max_fps`: a file is paced to at most that rate; a live source skips frames that come sooner than
  1/max_fps after the last one kept (counted as skipped, not dropped).

All state a runner reads is guarded by the runner's one condition variable, which the thread
notifies when a frame is ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rfpipe.io.decode import DecodeError
from rfpipe.io.video import SourceError, SourceInfo, open_reader, source_kind

logger = logging.getLogger("rfpipe")

FILE_BUFFER = 4  # frames a file's thread decodes ahead of the engine
RECONNECT_FIRST_S = 0.5  # first wait before reopening a live source; doubles up to RECONNECT_MAX_S
RECONNECT_MAX_S = 10.0


@dataclass(eq=False)
class Frame:
    """One decoded frame of a source."""

    stream: int  # the source's position in `run(sources)`
    index: int  # frame number in the source, counting frames dropped or skipped
    image: np.ndarray  # BGR uint8 HWC
    timestamp: float  # wall-clock time it was decoded (seconds since the epoch)
    position: float | None  # seconds into a video file by its own clock; None for live sources
    decoded: float = field(default_factory=time.monotonic)  # for latency


class SourceThread:
    """Decodes one source on its own thread; the runner takes frames with `take()` under `cond`."""

    def __init__(self, stream: int, spec: Any, cond: threading.Condition, stop: threading.Event, *,
                 max_fps: float | None = None, reconnect: bool = True):
        if max_fps is not None and max_fps <= 0:
            raise ValueError(f"max_fps must be positive, got {max_fps}")
        self.stream = stream
        self.spec = spec
        self.name = str(spec)
        self.kind = source_kind(spec)
        self.live = self.kind in ("camera", "stream")
        self.max_fps = max_fps
        self.reconnect = reconnect
        self._cond = cond
        self._stop = stop
        self._buffer: deque[Frame] = deque()
        self.ended = False  # no more frames will come (file done, or a source that gave up)
        self.info: SourceInfo | None = None
        # counters (read by the runner and the view under `cond`, written by this thread)
        self.decoded = 0
        self.dropped = 0  # live: replaced by a newer frame before inference took them
        self.skipped = 0  # live: over max_fps
        self.bad_frames = 0  # folder images that did not decode
        self.connects = 0
        self.errors: list[str] = []
        self.decode_cpu_s = 0.0  # this thread's CPU time
        self._thread = threading.Thread(target=self._run, name=f"rfpipe-stream-source-{stream}")

    # -- the runner's side (call with `cond` held) ----------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def ready(self) -> bool:
        return bool(self._buffer)

    def take(self) -> Frame:
        frame = self._buffer.popleft()
        self._cond.notify_all()  # a file's thread may wait for room
        return frame

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the thread -------------------------------------------------------------------------------

    def _error(self, message: str) -> None:
        logger.error("rfpipe stream: %s", message)
        with self._cond:
            self.errors.append(message)
            if len(self.errors) > 100:  # a camera that stays down keeps the first and last ones
                del self.errors[1:51]

    def _run(self) -> None:
        start_cpu = time.thread_time()
        try:
            if self.live:
                self._run_live()
            else:
                self._run_file()
        except Exception as error:  # a bug or an unexpected reader error ends this source only
            self._error(f"{self.name}: stopped: {type(error).__name__}: {error}")
        finally:
            with self._cond:
                self.ended = True
                self.decode_cpu_s = time.thread_time() - start_cpu
                self._cond.notify_all()

    def _open(self):
        reader = open_reader(self.spec)
        info = reader.open()
        with self._cond:
            self.info = info
            self.connects += 1
        return reader

    def _frame(self, image: np.ndarray, position: float | None) -> Frame:
        frame = Frame(self.stream, self.decoded, image, time.time(), position)
        self.decoded += 1
        if self.info is not None and (self.info.width, self.info.height) != (image.shape[1], image.shape[0]):
            self.info = SourceInfo(self.info.fps, image.shape[1], image.shape[0], self.info.frames)
        return frame

    def _run_file(self) -> None:
        try:
            reader = self._open()
        except SourceError as error:
            self._error(str(error))
            return
        interval = 1.0 / self.max_fps if self.max_fps else 0.0
        next_time = time.monotonic()
        try:
            while not self._stop.is_set():
                cpu = time.thread_time()
                try:
                    got = reader.read()
                except DecodeError as error:
                    self._error(str(error))
                    with self._cond:
                        self.bad_frames += 1
                        self.decoded += 1
                    continue
                finally:
                    self.decode_cpu_s += time.thread_time() - cpu
                if got is None:
                    return
                if interval:
                    wait = next_time - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        return
                    next_time = max(next_time + interval, time.monotonic() - interval)
                with self._cond:
                    frame = self._frame(*got)
                    while len(self._buffer) >= FILE_BUFFER and not self._stop.is_set():
                        self._cond.wait(0.5)
                    if self._stop.is_set():
                        return
                    self._buffer.append(frame)
                    self._cond.notify_all()
        finally:
            reader.close()

    def _run_live(self) -> None:
        failures = 0
        interval = 1.0 / self.max_fps if self.max_fps else 0.0
        last_kept = -float("inf")
        while not self._stop.is_set():
            try:
                reader = self._open()
            except SourceError as error:
                self._error(str(error) + (f" (retrying in {self._backoff(failures):.1f} s)" if self.reconnect else ""))
                if not self.reconnect or self._stop.wait(self._backoff(failures)):
                    return
                failures += 1
                continue
            if self.connects > 1:
                logger.warning("rfpipe stream: %s: reconnected", self.name)
            failures = 0
            try:
                while not self._stop.is_set():
                    cpu = time.thread_time()
                    got = reader.read()
                    self.decode_cpu_s += time.thread_time() - cpu
                    if got is None:
                        break
                    now = time.monotonic()
                    with self._cond:
                        if now - last_kept < interval:
                            self.skipped += 1
                            self.decoded += 1
                            continue
                        last_kept = now
                        if self._buffer:
                            self._buffer.clear()
                            self.dropped += 1
                        self._buffer.append(self._frame(*got))
                        self._cond.notify_all()
            finally:
                reader.close()
            if self._stop.is_set():
                return
            message = f"{self.name}: the stream ended or failed"
            if not self.reconnect:
                self._error(message)
                return
            self._error(f"{message} (reconnecting in {self._backoff(failures):.1f} s)")
            if self._stop.wait(self._backoff(failures)):
                return
            failures += 1

    @staticmethod
    def _backoff(failures: int) -> float:
        return min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** failures)


__all__ = ["Frame", "SourceThread"]
