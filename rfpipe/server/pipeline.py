"""The request pipeline: image payloads -> admitted, decoded frames -> the engines -> one answer dict per image.

The FastAPI routes (`rfpipe.server.app`) and the Ray Serve deployment (`rfpipe.server.ray_serve`)
both answer through `Pipeline`, so limits, options, errors and answers are the same on every
route. Images are admitted before any work is done (a flood is refused with 503 + Retry-After);
base64 and image decoding run on decode threads, off the event loop; a request that times out or
whose client goes away takes its images that have not run out of the queue at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rfpipe.engine import EngineClosed
from rfpipe.geometry import Overrides
from rfpipe.io.decode import DecodeError, decode, read_header
from rfpipe.io.gpu import check_device_decoder, decode_for_device
from rfpipe.server.batching import Batcher, QueueFull
from rfpipe.server.errors import ApiError, from_decode_error
from rfpipe.server.metrics import Metrics
from rfpipe.server.payloads import payload_bytes
from rfpipe.server.schemas import ImagePayload, ObjectDetectionRequest
from rfpipe.server.settings import ServerSettings, decode_device
from rfpipe.server.visualize import draw_predictions

logger = logging.getLogger("rfpipe.server")


@dataclass
class Options:
    """Per-request inference options shared by every inference route."""

    confidence: float = 0.4
    overrides: Overrides = Overrides()
    auto_orient: bool = True
    class_filter: frozenset[str] | None = None
    max_detections: int | None = None
    visualize: bool = False
    labels: bool = True
    stroke: int = 2


def options_from_request(body: ObjectDetectionRequest) -> Options:
    """The options of a POST /infer/object_detection body."""
    return Options(
        confidence=body.confidence,
        overrides=Overrides(disable_static_crop=body.disable_preproc_static_crop,
                            disable_contrast=body.disable_preproc_contrast,
                            disable_grayscale=body.disable_preproc_grayscale),
        auto_orient=not body.disable_preproc_auto_orient,
        class_filter=frozenset(body.class_filter) if body.class_filter is not None else None,
        max_detections=body.max_detections,
        visualize=body.visualize_predictions,
        labels=body.visualization_labels if body.visualization_labels is not None else True,
        stroke=body.visualization_stroke_width or 2,
    )


def image_names(count: int) -> list[str]:
    """How errors name a request's images: `image` alone, `image[i]` in a list."""
    return ["image"] if count == 1 else [f"image[{i}]" for i in range(count)]


def response_for(detections: Any, frame: np.ndarray | torch.Tensor, options: Options, request_id: str,
                 elapsed: float) -> dict:
    """One image's answer in the inference server's shape, with the request's filters applied.

    `frame` is the decoded BGR frame; a device tensor (--gpu-decode) is copied to the host only to draw on.
    """
    predictions = detections.to_inference_json()
    if options.class_filter is not None:
        predictions = [p for p in predictions if p["class"] in options.class_filter]
    if options.max_detections is not None:
        predictions = predictions[: options.max_detections]
    visualization = None
    if options.visualize:
        pixels = frame.cpu().numpy() if isinstance(frame, torch.Tensor) else frame
        visualization = draw_predictions(pixels, predictions, options.labels, options.stroke)
    return {"inference_id": request_id, "time": elapsed,
            "image": {"width": int(frame.shape[1]), "height": int(frame.shape[0])},
            "predictions": predictions, "visualization": visualization}


def _pinned_copy(frame: np.ndarray) -> np.ndarray:
    """`frame` copied into page-locked memory, which the CUDA preprocessing uploads without staging.

    The copy runs on a decode thread, beside the batch in flight, instead of on the engine's
    critical path. Torch's caching host allocator reuses the buffer once the array is dropped, and
    the admission bound bounds how many are alive. When pinning is not possible the frame stays
    pageable (correct, only slower).
    """
    from rfpipe.preprocess.cuda import pinned_frame

    try:
        staged = pinned_frame(*frame.shape)
    except RuntimeError:
        return frame
    np.copyto(staged, frame)
    return staged


def _retrieve(task: asyncio.Future) -> None:
    """Marks a finished task's exception as retrieved (asyncio logs the ones nobody asked for)."""
    if not task.cancelled():
        task.exception()


def timeout_error(seconds: float) -> ApiError:
    return ApiError(504, "timeout", f"inference did not finish within the request timeout ({seconds:g} s); retry later",
                    {"Retry-After": "1"})


class Pipeline:
    """What every inference route shares: settings, the served model's description, the batcher, metrics, decode threads.

    >>> pipeline = Pipeline([detector], ServerSettings(model_id="cars/3"))  # doctest: +SKIP
    >>> pipeline.start(); pipeline.batcher.wait_warm(600)  # doctest: +SKIP
    >>> answers = await pipeline.infer(pipeline.sources(payloads), Options(), "req-1")  # doctest: +SKIP
    """

    def __init__(self, detectors: list[Any], settings: ServerSettings, metrics: Metrics | None = None):
        if not detectors:
            raise ValueError("a server needs at least one detector")
        first = detectors[0]
        self.settings = settings
        self.config = first.config
        self.class_names = tuple(first.class_names)
        self.devices = sorted({str(d.device) for d in detectors})
        self.decode_device = decode_device(settings, self.devices)  # None: OpenCV decodes everything
        if self.decode_device is not None:
            check_device_decoder(self.decode_device)  # fails at start-up, not on the first JPEG
        self.metrics = metrics or Metrics()
        limit = first.config.max_dynamic_batch_size
        self.max_batch = min(settings.max_batch, limit) if limit else settings.max_batch
        self.batcher = Batcher(detectors, max_batch=self.max_batch, max_wait_ms=settings.max_wait_ms,
                               capacity=settings.queue_size, metrics=self.metrics, batch_policy=settings.batch_policy)
        self.decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="rfpipe-decode")
        self.pin_frames = any(str(d.device).startswith("cuda") for d in detectors)

    def start(self) -> None:
        self.batcher.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Answer what was admitted (up to `timeout_s`), then stop the engines and decode threads."""
        self.batcher.stop(timeout_s)
        self.decoders.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        size = self.config.training_size
        return {"models": [{"model_id": self.settings.model_id, "task_type": "object-detection",
                            "batch_size": self.max_batch, "input_height": size.height, "input_width": size.width}]}

    def check_model(self, model_id: str) -> None:
        if model_id != self.settings.model_id:
            raise ApiError(404, "unknown_model",
                           f"unknown model id {model_id!r}: this server serves {self.settings.model_id!r}")

    def not_ready(self) -> ApiError | None:
        """The 503 to answer while the engines are not all warm (or one failed), else None."""
        if self.batcher.ready:
            return None
        reason = self.batcher.failure or "the model is still loading"
        return ApiError(503, "not_ready", f"not ready: {reason}", {"Retry-After": str(self.settings.retry_after_s)})

    # -- payloads -> bytes (run on a decode thread) ------------------------------------------------

    def sources(self, payloads: list[ImagePayload]) -> list[Callable[[], bytes]]:
        """Checks the image count (400 `no_images`, 413 `too_many_images`); one deferred byte source per image.

        Base64 is decoded and URLs fetched on a decode thread; only the 'URLs disabled' refusal and the
        refused payload types are answered here, before admission.
        """
        if not payloads:
            raise ApiError(400, "no_images", "the request has an empty image list")
        if len(payloads) > self.settings.max_images:
            raise ApiError(413, "too_many_images",
                           f"the request has {len(payloads)} images, the limit is {self.settings.max_images}")
        return [self.source(p, name) for p, name in zip(payloads, image_names(len(payloads)), strict=True)]

    def source(self, payload: ImagePayload, where: str) -> Callable[[], bytes]:
        s = self.settings
        kind = payload.type.lower()
        if kind != "base64" and not (kind == "url" and s.allow_url_input):
            payload_bytes(kind, payload.value, where, s.allow_url_input, 0, 0.0)  # raises the refusal

        def fetch() -> bytes:
            return payload_bytes(kind, payload.value, where, s.allow_url_input, s.max_body_bytes, s.url_timeout_s)

        return fetch

    # -- decode -> engine -> answers ---------------------------------------------------------------

    def _decode(self, source: Any, where: str, auto_orient: bool) -> tuple[Any, Any]:
        """(what the engine gets, the decoded frame): a pinned copy on GPU serving, a GPU tensor with --gpu-decode."""
        s = self.settings
        started = time.perf_counter()
        data = source() if callable(source) else source
        try:
            if self.decode_device is not None:  # a GPU tensor for JPEG the device decoder takes, else OpenCV's frame
                frame = decode_for_device(data, self.decode_device, auto_orient, s.max_pixels)
                image_format = read_header(data).format  # decode_for_device does not hand its header back
            else:  # the header decode() checked names the format (no second header parse under the GIL)
                frame, header = decode(data, auto_orient=auto_orient, max_pixels=s.max_pixels)
                image_format = header.format
        except DecodeError as error:
            raise from_decode_error(error, where) from error
        on_device = isinstance(frame, torch.Tensor)
        self.metrics.decodes.labels("torchvision" if on_device else "opencv", image_format).inc()
        self.metrics.stage.labels("decode").observe(time.perf_counter() - started)
        if on_device or not self.pin_frames:
            return frame, frame
        return _pinned_copy(frame), frame

    async def infer(self, sources: list[Any], options: Options, request_id: str, started: float | None = None,
                    disconnected: Callable[[], Awaitable[Any]] | None = None) -> list[dict]:
        """Admit, decode, batch and infer `sources` (bytes, or callables giving bytes); one answer dict per image.

        `disconnected` is awaited beside the work: when it returns (the client went away) the images
        that have not run leave the queue and the request ends with 499.
        """
        started = time.perf_counter() if started is None else started
        if (refusal := self.not_ready()) is not None:
            raise refusal
        try:
            self.batcher.admit(len(sources))
        except QueueFull as error:
            raise ApiError(503, "queue_full", f"server busy: {error}; retry later",
                           {"Retry-After": str(self.settings.retry_after_s)}) from error
        handed: list[asyncio.Future] = []  # images given to an engine: their futures give their room back
        tasks = [asyncio.ensure_future(self._one(src, name, options, request_id, handed))
                 for src, name in zip(sources, image_names(len(sources)), strict=True)]
        for task in tasks:  # a second failure (or one after a timeout) is not logged as "never retrieved"
            task.add_done_callback(_retrieve)
        # One image is awaited as its own task; several through one gather (its first failure is the answer).
        work = tasks[0] if len(tasks) == 1 else asyncio.gather(*tasks)
        # A cancelled request leaves its images' CancelledError on the gather: retrieved, so asyncio does
        # not log "_GatheringFuture exception was never retrieved" for it.
        work.add_done_callback(_retrieve)
        watcher = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:  # one wait covers the work, the client's disconnect and the request timeout
            done, _ = await asyncio.wait({work} if watcher is None else {work, watcher},
                                         timeout=self.settings.request_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                if not done:
                    raise timeout_error(self.settings.request_timeout_s)
                raise ApiError(499, "client_closed_request", "the client closed the connection before the answer")
            outcomes = work.result() if len(tasks) > 1 else [work.result()]
        finally:
            work.cancel()
            for task in tasks:
                task.cancel()
            for future in handed:
                future.cancel()  # an image that has not run leaves the engine now (running ones finish)
            if watcher is not None:
                watcher.cancel()
            self.batcher.withdraw(len(sources) - len(handed))
        elapsed = time.perf_counter() - started
        return [response_for(d, frame, options, request_id, elapsed) for frame, d in outcomes]

    async def _one(self, source: Any, where: str, options: Options, request_id: str,
                   handed: list[asyncio.Future]) -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        staged, frame = await loop.run_in_executor(self.decoders, self._decode, source, where, options.auto_orient)
        future = self.batcher.submit(staged, confidence=options.confidence, overrides=options.overrides)
        handed.append(future)
        try:
            return frame, await future
        except (asyncio.CancelledError, ApiError):
            raise
        except EngineClosed as error:
            raise ApiError(503, "shutting_down", f"{where}: the server is shutting down; retry on another replica",
                           {"Retry-After": str(self.settings.retry_after_s)}) from error
        except torch.cuda.OutOfMemoryError as error:
            logger.error("request %s: %s: the device ran out of memory: %s", request_id, where, error)
            raise ApiError(503, "out_of_memory", f"{where}: the device ran out of memory running this image "
                           f"(request id {request_id}); retry later",
                           {"Retry-After": str(self.settings.retry_after_s)}) from error
        except Exception as error:
            logger.error("request %s: %s: inference failed", request_id, where, exc_info=error)
            raise ApiError(500, "internal_error", f"{where}: inference failed (request id {request_id})") from error
