"""Video and camera streams: sources (files, folders, rtsp/http streams, cameras) -> one engine -> sinks.

>>> import rfpipe, rfpipe.streams
>>> model = rfpipe.Detector.load("path/to/package", device="cuda")  # model  # doctest: +SKIP
>>> summary = rfpipe.streams.run(["door.mp4", "rtsp://10.0.0.2/live", 0], model,
...                              sink=[rfpipe.streams.JsonLines("out.jsonl"),
...                                    rfpipe.streams.AnnotatedVideo("annotated/")])  # model  # doctest: +SKIP
"""

from rfpipe.io.video import SourceError, SourceInfo, source_kind
from rfpipe.streams.runner import SourceSummary, Summary, run
from rfpipe.streams.sinks import (
    AnnotatedVideo,
    Callback,
    FrameResult,
    JsonLines,
    Sink,
    annotate,
)
from rfpipe.streams.view import TerminalView

__all__ = [
    "AnnotatedVideo",
    "Callback",
    "FrameResult",
    "JsonLines",
    "Sink",
    "SourceError",
    "SourceInfo",
    "SourceSummary",
    "Summary",
    "TerminalView",
    "annotate",
    "run",
    "source_kind",
]
