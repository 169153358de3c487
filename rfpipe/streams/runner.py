"""`run(sources, detector, sink=...)`: many sources through one engine into sinks, until they end or are stopped.

One dispatcher loop (on the caller's thread) takes frames from the source threads, submits them to
the engine and hands finished frames, in each source's order, to the sinks' queues. A file keeps up
to `2 * max_batch` frames in the engine (read ahead, none dropped). Live sources go in rounds: when
the previous round of live frames has finished, the newest frame of every live source that has one
is submitted at once, so they land in one engine batch (up to `max_batch`) and N cameras cost one
batch per round, not N calls; while a round runs, each camera's newer frames replace each other
(counted as dropped). When inference is faster than the cameras, a round holds whatever frames
arrived, so nothing waits for a slow camera.

Stopping: when every source has ended, when `duration` seconds have passed, when the `stop` event
is set, or on Ctrl-C / SIGTERM (handled while `run` runs on the main thread). The sources stop
first, the frames already in the engine finish and reach the sinks, the sinks flush and close,
and every thread `run` started has stopped when it returns its `Summary`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rfpipe.engine import Engine, EngineClosed, QueueFull
from rfpipe.io.video import OPEN_TIMEOUT_MS, READ_TIMEOUT_MS
from rfpipe.streams.sinks import FrameResult, Sink, SinkWorker
from rfpipe.streams.sources import Frame, SourceThread

logger = logging.getLogger("rfpipe")

LATENCY_WINDOW = 10_000  # latencies kept per source for the p99 (the most recent ones)
RATE_WINDOW_S = 2.0  # the live frame rate is measured over this many recent seconds
DRAIN_TIMEOUT_S = 60.0  # frames still in the engine at stop get this long to finish
JOIN_TIMEOUT_S = (max(OPEN_TIMEOUT_MS, READ_TIMEOUT_MS) / 1000.0) + 2.0  # a source thread blocked in FFmpeg


@dataclass
class SourceSummary:
    """One source's numbers: frames that reached the sinks, what was dropped, latency, decode CPU."""

    source: str
    stream: int
    kind: str  # file | folder | stream | camera
    width: int | None
    height: int | None
    source_fps: float | None  # as the source declares it
    frames: int  # frames with detections handed to the sinks
    decoded: int
    dropped: int  # live: replaced by a newer frame before inference took them
    skipped: int  # live: over max_fps
    failed: int  # frames whose inference (or decoding, in a folder) failed
    connects: int
    fps: float  # frames per second over the run (recent rate while running, in the live view)
    latency_mean_ms: float | None
    latency_p99_ms: float | None
    decode_cpu_percent: float  # this source's thread, 100 = one core
    errors: list[str] = field(default_factory=list)
    ended: bool = False


@dataclass
class Summary:
    """What `run` returns: per-source numbers and the totals (CPU % of this process, 100 = one core)."""

    sources: list[SourceSummary]
    seconds: float
    frames: int
    fps: float
    latency_mean_ms: float | None
    latency_p99_ms: float | None
    cpu_percent: float
    sink_dropped: dict[str, int]
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Tally:
    """Per-source counters the dispatcher keeps."""

    def __init__(self) -> None:
        self.frames = 0
        self.failed = 0
        self.latency_sum = 0.0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.done_at: deque[float] = deque(maxlen=4096)


def _percentile_ms(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q) * 1000.0) if len(values) else None


class _Run:
    def __init__(self, specs: Sequence[Any], engine: Engine, sinks: Sequence[Sink], *, confidence: Any,
                 max_fps: Any, reconnect: bool, sink_queue: int):
        if isinstance(max_fps, (list, tuple)):
            if len(max_fps) != len(specs):
                raise ValueError(f"max_fps has {len(max_fps)} values for {len(specs)} sources")
            rates = list(max_fps)
        else:
            rates = [max_fps] * len(specs)
        self.engine = engine
        self.confidence = confidence
        self.cond = threading.Condition()
        self.halt = threading.Event()
        self.sources = [SourceThread(i, spec, self.cond, self.halt, max_fps=rate, reconnect=reconnect)
                        for i, (spec, rate) in enumerate(zip(specs, rates, strict=True))]
        self.file_window = 2 * engine.max_batch
        self.in_flight: list[deque[tuple[Frame, Future]]] = [deque() for _ in self.sources]
        self.tallies = [_Tally() for _ in self.sources]
        self.sinks = [SinkWorker(sink, i, queue_size=sink_queue) for i, sink in enumerate(sinks)]
        self.started = time.monotonic()
        self.cpu_started = time.process_time()
        self.interrupted = False

    # -- the loop ---------------------------------------------------------------------------------

    def _wake(self, _future: Future) -> None:
        with self.cond:
            self.cond.notify_all()

    def loop(self, deadline: float | None, stop: threading.Event | None) -> None:
        for source in self.sources:
            source.start()
        while True:
            if not self.halt.is_set() and ((stop is not None and stop.is_set())
                                           or (deadline is not None and time.monotonic() >= deadline)):
                self.halt.set()
            halting = self.halt.is_set()
            with self.cond:
                done = self._completed()
                todo = [] if halting else self._submittable()
                idle = not any(self.in_flight)
                finished = idle and (halting or all(s.ended and not s.ready() for s in self.sources))
                if not done and not todo and not finished:
                    self.cond.wait(0.1)
                    continue
            for frame, future in done:
                self._deliver(frame, future)
            for frame in todo:
                self._submit(frame)
            if finished and not done and not todo:
                return

    def _completed(self) -> list[tuple[Frame, Future]]:
        done = []
        for flight in self.in_flight:
            while flight and flight[0][1].done():
                done.append(flight.popleft())
        return done

    def _submittable(self) -> list[Frame]:
        frames = []
        round_done = not any(flight for source, flight in zip(self.sources, self.in_flight, strict=True)
                             if source.live)
        for source, flight in zip(self.sources, self.in_flight, strict=True):
            if source.live:
                if round_done and source.ready():
                    frames.append(source.take())
                continue
            taken = 0  # in_flight grows only after submit: count frames taken in this pass too
            while source.ready() and len(flight) + taken < self.file_window:
                frames.append(source.take())
                taken += 1
        return frames

    def _submit(self, frame: Frame) -> None:
        while True:
            try:
                future = self.engine.submit(frame.image, confidence=self.confidence, block=True, timeout=0.5)
                break
            except QueueFull:  # a shared engine is busy: wait for room unless stopping
                if self.halt.is_set():
                    return
            except EngineClosed:
                self.halt.set()
                return
        self.in_flight[frame.stream].append((frame, future))
        future.add_done_callback(self._wake)

    def _deliver(self, frame: Frame, future: Future) -> None:
        source = self.sources[frame.stream]
        tally = self.tallies[frame.stream]
        try:
            detections = future.result()
        except Exception as error:
            tally.failed += 1
            if tally.failed <= 3 or tally.failed % 1000 == 0:
                source._error(f"{source.name}: frame {frame.index}: {type(error).__name__}: {error}")
            return
        now = time.monotonic()
        latency = now - frame.decoded
        tally.frames += 1
        tally.latency_sum += latency
        tally.latencies.append(latency)
        tally.done_at.append(now)
        result = FrameResult(source.name, frame.stream, frame.index, frame.timestamp, frame.position, frame.image,
                             detections, latency, source.info.fps if source.info else None)
        for sink in self.sinks:
            sink.put(result)

    # -- stopping and numbers -----------------------------------------------------------------------

    def shutdown(self) -> None:
        self.halt.set()
        with self.cond:
            self.cond.notify_all()
        for source in self.sources:
            if not source.join(JOIN_TIMEOUT_S):
                source._error(f"{source.name}: its thread did not stop within {JOIN_TIMEOUT_S:.0f} s")
        for sink in self.sinks:
            if not sink.close(DRAIN_TIMEOUT_S):
                logger.error("rfpipe stream: sink %s did not finish within %.0f s", sink.name, DRAIN_TIMEOUT_S)

    def drain(self) -> None:
        """Deliver the frames still in the engine (after a stop)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for flight in self.in_flight:
            while flight:
                frame, future = flight.popleft()
                try:
                    future.result(timeout=max(0.0, deadline - time.monotonic()))
                except Exception:  # noqa: S110 (counted by _deliver)
                    pass
                self._deliver(frame, future)

    def summary(self, *, live: bool = False) -> Summary:
        """The numbers so far; `live` gives each source's recent frame rate instead of the run's mean."""
        now = time.monotonic()
        seconds = max(now - self.started, 1e-9)
        rows = []
        with self.cond:
            for source, tally in zip(self.sources, self.tallies, strict=True):
                if live:
                    recent = [t for t in tally.done_at if now - t <= RATE_WINDOW_S]
                    fps = len(recent) / min(RATE_WINDOW_S, seconds)
                else:
                    fps = tally.frames / seconds
                info = source.info
                rows.append(SourceSummary(
                    source=source.name, stream=source.stream, kind=source.kind,
                    width=info.width if info else None, height=info.height if info else None,
                    source_fps=info.fps if info else None, frames=tally.frames, decoded=source.decoded,
                    dropped=source.dropped, skipped=source.skipped, failed=tally.failed + source.bad_frames,
                    connects=source.connects, fps=fps,
                    latency_mean_ms=tally.latency_sum / tally.frames * 1000.0 if tally.frames else None,
                    latency_p99_ms=_percentile_ms(tally.latencies, 99),
                    decode_cpu_percent=100.0 * source.decode_cpu_s / seconds, errors=list(source.errors),
                    ended=source.ended))
        frames = sum(r.frames for r in rows)
        latencies = [v for t in self.tallies for v in t.latencies]
        total = sum(t.latency_sum for t in self.tallies)
        return Summary(
            sources=rows, seconds=seconds, frames=frames, fps=sum(r.fps for r in rows) if live else frames / seconds,
            latency_mean_ms=total / frames * 1000.0 if frames else None,
            latency_p99_ms=_percentile_ms(latencies, 99),
            cpu_percent=100.0 * (time.process_time() - self.cpu_started) / seconds,
            sink_dropped={f"{i}-{s.name}": s.dropped for i, s in enumerate(self.sinks)},
            interrupted=self.interrupted)


def _signals(run: _Run) -> dict[int, Any]:
    """Ctrl-C and SIGTERM stop the run (only the main thread may install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: Any) -> None:
        if run.halt.is_set():
            return
        logger.warning("rfpipe stream: %s: stopping (frames in flight finish, sinks flush)",
                       signal.Signals(signum).name)
        run.interrupted = True
        run.halt.set()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def run(
    sources: Sequence[str | int] | str | int,
    detector: Any,
    *,
    sink: Sink | Sequence[Sink] | None = None,
    confidence: Any = None,
    max_fps: float | Sequence[float | None] | None = None,
    reconnect: bool = True,
    duration: float | None = None,
    stop: threading.Event | None = None,
    max_batch: int = 8,
    max_wait_ms: float = 2.0,
    batch_policy: str = "dynamic",
    engine: Engine | None = None,
    sink_queue: int = 256,
) -> Summary:
    """Run `detector` on every source until all end (or `duration`, `stop`, Ctrl-C, SIGTERM); return a Summary.

    `sources`: video files, image folders, `rtsp://` / `http(s)://` stream URLs, camera indices.
    `detector`: an `rfpipe.Detector`; frames go through one `Engine` (`max_batch`, `max_wait_ms`,
    `batch_policy`), or through `engine` when given (left open). `sink`: one sink or a list
    (`JsonLines`, `AnnotatedVideo`, `Callback`, `TerminalView`, or any object with `write` and
    `close`). `max_fps`: one rate for all sources or one per source. A source that cannot be opened
    is an error in its summary (and the log) while the others run; a live source keeps retrying
    unless `reconnect=False`.

    >>> summary = rfpipe.streams.run(["door.mp4", "rtsp://10.0.0.2/live"], model,
    ...                              sink=rfpipe.streams.JsonLines("out.jsonl"), duration=60)  # model  # doctest: +SKIP
    >>> summary.sources[0].frames, summary.fps  # model  # doctest: +SKIP
    """
    specs = [sources] if isinstance(sources, (str, int)) else list(sources)
    if not specs:
        raise ValueError("no sources")
    if duration is not None and duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    sinks = [] if sink is None else [sink] if hasattr(sink, "write") else list(sink)
    own_engine = engine is None
    if engine is None:
        engine = Engine(detector, max_batch=max_batch, max_wait_ms=max_wait_ms, batch_policy=batch_policy,
                        queue_size=max(256, (2 * max_batch + 1) * len(specs)))
    state = None
    previous: dict[int, Any] = {}
    try:
        state = _Run(specs, engine, sinks, confidence=confidence, max_fps=max_fps, reconnect=reconnect,
                     sink_queue=sink_queue)
        for s in sinks:
            if hasattr(s, "attach"):
                s.attach(lambda: state.summary(live=True))
        previous = _signals(state)
        deadline = None if duration is None else time.monotonic() + duration
        try:
            state.loop(deadline, stop)
        except KeyboardInterrupt:  # a Ctrl-C outside the handler's reach (not on the main thread)
            state.interrupted = True
        state.halt.set()
        state.drain()
    finally:
        if state is not None:
            state.shutdown()
        if own_engine:
            engine.close(drain=True, timeout=DRAIN_TIMEOUT_S)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return state.summary()


__all__ = ["SourceSummary", "Summary", "run"]
