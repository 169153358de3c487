"""Where stream results go: JSON lines, an annotated video per source, a Python callback.

A sink is any object with `write(result)` and `close()` (and optionally `queue_size`). The runner
feeds each sink through its own bounded queue and thread (`SinkWorker`), so a slow sink never holds up inference: when its queue is
full the result is dropped for that sink and counted (`SinkWorker.dropped`). `close()` runs after the
last result, on the sink's thread: it flushes files.

>>> rfpipe.streams.run(["cam.mp4"], model, sink=[JsonLines("out.jsonl"), AnnotatedVideo("out/")])  # model  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rfpipe.detections import Detections

logger = logging.getLogger("rfpipe")

JSONL_FLUSH_S = 1.0  # a JSON-lines file is flushed at least this often (and at the end)


@dataclass(eq=False)
class FrameResult:
    """One frame's detections, with where and when the frame came from."""

    source: str  # the source as given to `run` (path, URL or camera index)
    stream: int  # the source's position in `run(sources)`: keeps two sources of one name apart
    frame: int  # frame number in the source, counting frames dropped or skipped
    timestamp: float  # wall-clock time the frame was decoded (seconds since the epoch)
    position: float | None  # seconds into a video file by its own clock; None for live sources
    image: np.ndarray  # the BGR frame
    detections: Detections
    latency: float  # seconds from decoding to detections
    source_fps: float | None = None  # the frame rate the source declares

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines record: the inference server's response shape plus where the frame came from."""
        return {
            "source": self.source,
            "stream": self.stream,
            "frame": self.frame,
            "timestamp": self.timestamp,
            "position": self.position,
            "latency": self.latency,
            "image": {"width": int(self.image.shape[1]), "height": int(self.image.shape[0])},
            "predictions": self.detections.to_inference_json(),
        }


class Sink(Protocol):
    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


class JsonLines:
    """One JSON object per frame (`FrameResult.to_json`) to a file, or to stdout with path "-".

    >>> sink = JsonLines("detections.jsonl")  # model  # doctest: +SKIP
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._file = None
        self._flushed = time.monotonic()

    def write(self, result: FrameResult) -> None:
        if self._file is None:
            self._file = sys.stdout if self.path == "-" else open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self._file.write(json.dumps(result.to_json()) + "\n")
        if time.monotonic() - self._flushed > JSONL_FLUSH_S:
            self._file.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        if self._file is None and self.path != "-":
            open(self.path, "w", encoding="utf-8").close()  # an empty run still leaves its (empty) file
        elif self._file is not None:
            self._file.flush()
            if self._file is not sys.stdout:
                self._file.close()
        self._file = None


def annotate(image: np.ndarray, detections: Detections) -> np.ndarray:
    """A copy of the BGR frame with boxes and 'class confidence' labels drawn by supervision.

    >>> annotate(frame, detections).shape == frame.shape  # model  # doctest: +SKIP
    True
    """
    import supervision as sv

    sv_detections = detections.to_supervision()
    labels = [f"{name} {score:.2f}" for name, score in
              zip(detections.class_name, detections.confidence.tolist(), strict=True)]
    scene = sv.BoxAnnotator().annotate(image.copy(), sv_detections)
    return sv.LabelAnnotator().annotate(scene, sv_detections, labels=labels)


def file_stem(source: str, stream: int) -> str:
    """A file name for a source's outputs: '<stream>-<name>' with the name made of safe characters.

    >>> file_stem("rtsp://10.0.0.2:554/live/main", 1), file_stem("/videos/door.mp4", 0)
    ('1-10.0.0.2_554_live_main', '0-door')
    """
    text = source.split("://", 1)[1] if "://" in source else Path(source).stem or source
    return f"{stream}-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "camera")


class AnnotatedVideo:
    """An annotated video per source, `<folder>/<stream>-<name>.mp4`, at the source's frame rate.

    Boxes and labels are drawn with supervision's annotators (the `cli` extra). A source whose frame
    size changes (a camera that reconnects at another resolution) has its frames resized to the first size.

    >>> sink = AnnotatedVideo("annotated/", fps=25)  # model  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path, *, fps: float | None = None, codec: str = "mp4v"):
        self.folder = Path(folder)
        self.fps = fps
        self.codec = codec
        self._writers: dict[int, tuple[Any, tuple[int, int]]] = {}  # stream -> (writer, its frame size)

    def write(self, result: FrameResult) -> None:
        import cv2

        height, width = result.image.shape[:2]
        if result.stream not in self._writers:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{file_stem(result.source, result.stream)}.mp4"
            fps = self.fps or result.source_fps or 25.0
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*self.codec), fps, (width, height))
            if not writer.isOpened():
                raise OSError(f"{path}: cannot write a video here (codec {self.codec})")
            self._writers[result.stream] = (writer, (width, height))
        writer, size = self._writers[result.stream]
        image = annotate(result.image, result.detections)
        if (width, height) != size:
            image = cv2.resize(image, size)
        writer.write(image)

    def close(self) -> None:
        for writer, _ in self._writers.values():
            writer.release()
        self._writers.clear()


class Callback:
    """Calls `function(result)` for each frame, on the sink's own thread.

    `queue_size` bounds the results waiting for a slow function (default: `run`'s `sink_queue`);
    results that find it full are dropped for this sink and counted.

    >>> sink = Callback(lambda r: print(r.source, r.frame, len(r.detections)))  # model  # doctest: +SKIP
    """

    def __init__(self, function: Callable[[FrameResult], Any], *, queue_size: int | None = None):
        self.function = function
        self.queue_size = queue_size

    def write(self, result: FrameResult) -> None:
        self.function(result)

    def close(self) -> None:
        pass


class SinkWorker:
    """Feeds one sink from a bounded queue on its own thread; never blocks the caller of `put`."""

    def __init__(self, sink: Sink, index: int, *, queue_size: int = 256):
        self.sink = sink
        self.name = type(sink).__name__
        self.dropped = 0  # results this sink never saw because its queue was full
        self.errors = 0  # results whose write raised
        self._queue: queue.Queue = queue.Queue(getattr(sink, "queue_size", None) or queue_size)
        self._thread = threading.Thread(target=self._run, name=f"rfpipe-stream-sink-{index}")
        self._thread.start()

    def put(self, result: FrameResult) -> None:
        try:
            self._queue.put_nowait(result)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float | None = None) -> bool:
        """Write what is queued, close the sink, stop the thread; False if it did not stop in time."""
        self._queue.put(None)  # blocks only while the sink drains a full queue
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (result := self._queue.get()) is not None:
            try:
                self.sink.write(result)
            except Exception as error:  # one bad write costs that result for this sink, not the stream
                self.errors += 1
                if self.errors <= 3:
                    logger.error("rfpipe stream: sink %s: %s: %s", self.name, type(error).__name__, error)
        try:
            self.sink.close()
        except Exception as error:
            logger.error("rfpipe stream: sink %s: closing: %s: %s", self.name, type(error).__name__, error)


__all__ = ["AnnotatedVideo", "Callback", "FrameResult", "JsonLines", "Sink", "SinkWorker", "annotate", "file_stem"]
