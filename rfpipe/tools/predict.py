"""`rfpipe predict`: run a Detector over image files, folders and videos; write JSON and annotated output.

JSON follows the inference server's object-detection response (`image` size, `predictions` with
centre x/y, width, height, confidence, class, class_id, detection_id; `time` in seconds).
Annotated images are drawn with supervision's box and label annotators; a video input becomes an
annotated video plus one JSON line per frame.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from rfpipe.detections import Detections
from rfpipe.detector import Detector
from rfpipe.io.decode import OPENCV_MAX_PIXELS, DecodeError, decode_image
from rfpipe.io.gpu import decode_for_device
from rfpipe.io.video import IMAGE_SUFFIXES
from rfpipe.streams.sinks import annotate

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def find_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Image and video files from paths and folders (folders: their direct files, sorted)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                raise ValueError(f"{path}: not an image or video file (by its suffix)")
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def read_image(path: Path, gpu_decode_device: str | torch.device | None = None) -> np.ndarray | torch.Tensor:
    """BGR uint8 frame decoded as the server decodes it (rfpipe.io.decode: OpenCV, colour, EXIF orientation).

    With `gpu_decode_device`, decoded as `rfpipe serve --gpu-decode` decodes it: JPEG by torchvision
    into a tensor on that device (not bit-exact), other formats by OpenCV (rfpipe.io.gpu).
    """
    data = Path(path).read_bytes()
    try:
        if gpu_decode_device is not None:
            return decode_for_device(data, gpu_decode_device, max_pixels=OPENCV_MAX_PIXELS)
        return decode_image(data, max_pixels=OPENCV_MAX_PIXELS)
    except DecodeError as error:
        raise ValueError(f"{path}: cannot decode this file as an image ({error})") from error


def describe_model(path: str | Path, detector: Detector) -> str:
    """One line naming the model that ran, saying plainly when it is rfpipe's untrained Nano.

    >>> describe_model("my-package", Detector.load("my-package"))  # model  # doctest: +SKIP
    "model: my-package (Detector(backend='onnx', ...)); classes: a, b"
    """
    from rfpipe.testing.untrained import default_cache_dir

    resolved = Path(path).resolve()
    cache = default_cache_dir().resolve()
    untrained = resolved.is_relative_to(cache) and resolved.relative_to(cache).parts[0].startswith("untrained-nano-")
    what = "the UNTRAINED RF-DETR Nano (random weights: arbitrary boxes)" if untrained else "as given"
    return f"model: {path}, {what} ({detector!r}); classes: {', '.join(detector.class_names)}"


def inference_response(detections: Detections, image: np.ndarray, seconds: float) -> dict[str, Any]:
    """The inference server's response body for one image."""
    return {
        "time": seconds,
        "image": {"width": int(image.shape[1]), "height": int(image.shape[0])},
        "predictions": detections.to_inference_json(),
    }


def _frames(video: Path) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ValueError(f"{video}: cannot open this video")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def predict_video(detector: Detector, video: Path, out_dir: Path | None, emit, batch: int = 4, **call) -> int:
    """Annotated `<out>/<stem>.mp4` and `<out>/<stem>.jsonl` (one response per frame); returns frames."""
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    capture.release()
    writer = lines = None
    count = 0
    pending: list[np.ndarray] = []

    def flush() -> None:
        nonlocal writer, lines, count
        start = time.perf_counter()
        results = detector(pending, **call)
        seconds = (time.perf_counter() - start) / len(pending)
        for frame, dets in zip(pending, results, strict=True):
            response = dict(inference_response(dets, frame, seconds), frame=count)
            emit(video, response)
            if out_dir is not None:
                if writer is None:
                    height, width = frame.shape[:2]
                    writer = cv2.VideoWriter(str(out_dir / f"{video.stem}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                    lines = open(out_dir / f"{video.stem}.jsonl", "w", encoding="utf-8")
                writer.write(annotate(frame, dets))
                lines.write(json.dumps(response) + "\n")
            count += 1
        pending.clear()

    try:
        for frame in _frames(video):
            pending.append(frame)
            if len(pending) == batch:
                flush()
        if pending:
            flush()
    finally:
        if writer is not None:
            writer.release()
            lines.close()
    return count


def run_predict(detector: Detector, inputs: list[Path], out_dir: Path | None, print_json: bool,
                progress: bool = True, **call) -> int:
    """Predict every input; returns the number of images and video frames processed."""
    from tqdm import tqdm

    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    def emit(path: Path, response: dict) -> None:
        if print_json:
            sys.stdout.write(json.dumps({"path": str(path), **response}) + "\n")

    total = 0
    for path in tqdm(inputs, desc="predict", unit="file", disable=not progress or len(inputs) < 2, file=sys.stderr):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            total += predict_video(detector, path, out_dir, emit, **call)
            continue
        image = read_image(path)
        start = time.perf_counter()
        (dets,) = detector(image, **call)
        response = inference_response(dets, image, time.perf_counter() - start)
        emit(path, response)
        if out_dir is not None:
            (out_dir / f"{path.stem}.json").write_text(json.dumps(response, indent=1) + "\n")
            cv2.imwrite(str(out_dir / f"{path.stem}{path.suffix if path.suffix.lower() in {'.jpg', '.jpeg', '.png'} else '.png'}"),
                        annotate(image, dets))
        total += 1
    return total
