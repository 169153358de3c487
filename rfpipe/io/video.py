"""Video sources -> BGR uint8 frames: video files, rtsp:// and http(s):// streams, cameras, image folders.

`open_reader(spec)` names the kind of a source from how it is written (`source_kind`) and returns a
reader: `open()` connects (or raises `SourceError` naming the source), `read()` gives the next
`(frame, position_s)` or None at the end (or when a live stream fails), `close()` releases it.
Videos, streams and cameras decode with OpenCV's FFmpeg backend (V4L2 for camera indices); the
images of a folder decode exactly as the server decodes request bytes (`rfpipe.io.decode`).

>>> reader = open_reader("clip.mp4")  # file  # doctest: +SKIP
>>> info = reader.open(); frame, position = reader.read()  # file  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rfpipe.io.decode import OPENCV_MAX_PIXELS, DecodeError, decode_image

IMAGE_SUFFIXES = frozenset((".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"))
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
# FFmpeg gives up on a connection or a read after this long, so a dead camera cannot hang a thread.
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message names it."""


@dataclass(frozen=True)
class SourceInfo:
    """What a source says about itself once open: frame rate (None when unknown) and frame size."""

    fps: float | None
    width: int
    height: int
    frames: int | None = None  # frame count of a file or folder, when known


def source_kind(spec: str | int | Path) -> str:
    """'camera' (an index such as 0 or "0"), 'stream' (a URL), 'folder' (of images) or 'file'.

    >>> source_kind(0), source_kind("rtsp://10.0.0.2/live"), source_kind("clip.mp4")
    ('camera', 'stream', 'file')
    """
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return "camera"
    text = str(spec)
    if text.lower().startswith(LIVE_SCHEMES):
        return "stream"
    if Path(text).is_dir():
        return "folder"
    return "file"


class CaptureReader:
    """A video file, network stream or camera through `cv2.VideoCapture`."""

    def __init__(self, spec: str | int, kind: str):
        self.spec = spec
        self.kind = kind
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> SourceInfo:
        if self.kind == "file" and not Path(str(self.spec)).is_file():
            raise SourceError(f"{self.spec}: no such video file")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        if self.kind == "camera":
            capture = cv2.VideoCapture(int(self.spec))
        else:
            capture = cv2.VideoCapture(str(self.spec), cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            what = {"camera": "cannot open camera", "stream": "cannot connect to this stream",
                    "file": "cannot open this file as a video"}[self.kind]
            raise SourceError(f"{self.spec}: {what}")
        self._capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if self.kind == "file" else 0
        return SourceInfo(fps=fps if fps and 0 < fps < 1000 else None,
                          width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                          height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), frames=count if count > 0 else None)

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self._capture is None:
            return None
        ok, frame = self._capture.read()
        if not ok or frame is None:
            return None
        # live streams report no meaningful position (FFmpeg gives garbage for MJPEG over HTTP)
        position = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self.kind == "file" else None
        return frame, position

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FolderReader:
    """The images of a folder (its direct files with image suffixes, sorted by name), one frame each.

    A file that does not decode raises `DecodeError` from `read()` naming it; the next `read()` goes on.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._files: list[Path] = []
        self._next = 0

    def open(self) -> SourceInfo:
        if not self.path.is_dir():
            raise SourceError(f"{self.path}: no such folder")
        self._files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"{self.path}: no images in this folder (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
        self._next = 0
        first = cv2.imread(str(self._files[0]), cv2.IMREAD_UNCHANGED)
        height, width = (0, 0) if first is None else first.shape[:2]
        return SourceInfo(fps=None, width=width, height=height, frames=len(self._files))

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self._next >= len(self._files):
            return None
        path = self._files[self._next]
        self._next += 1
        try:
            return decode_image(path.read_bytes(), max_pixels=OPENCV_MAX_PIXELS), None
        except (OSError, DecodeError) as error:
            raise DecodeError(f"{path}: {error}") from error

    def close(self) -> None:
        self._files = []


def open_reader(spec: str | int | Path) -> CaptureReader | FolderReader:
    """The reader for `spec` (not yet opened): see `source_kind`."""
    kind = source_kind(spec)
    if kind == "folder":
        return FolderReader(spec)
    return CaptureReader(spec if kind != "file" else str(spec), kind)


__all__ = ["IMAGE_SUFFIXES", "CaptureReader", "FolderReader", "SourceError", "SourceInfo", "open_reader",
           "source_kind"]
