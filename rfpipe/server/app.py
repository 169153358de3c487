"""The HTTP app: inference-server-compatible routes over a Batcher of detectors.

Routes: POST /infer/object_detection (JSON), POST /{dataset_id}/{version_id} (legacy: base64 body,
raw image body or multipart upload, options as query parameters), GET /model/registry,
POST /model/add, GET /info, GET /healthz, GET /readyz, GET /metrics, OpenAPI at /openapi.json and /docs.
Every error is JSON `{message, error_type, request_id}`: 4xx for what the client sent, 503/504 for
capacity, 500 only for real faults (logged with the request id).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

import rfpipe
from rfpipe.io.decode import DecodeError, decode_image, read_header
from rfpipe.geometry import Overrides
from rfpipe.io.gpu import check_device_decoder, decode_for_device
from rfpipe.server.batching import Batcher, Job, QueueFull
from rfpipe.server.errors import ApiError, from_decode_error
from rfpipe.server.images import decode_base64, payload_bytes
from rfpipe.server.metrics import Metrics
from rfpipe.server.schemas import (
    AddModelRequest,
    ErrorResponse,
    ImagePayload,
    ObjectDetectionRequest,
    ObjectDetectionResponse,
    RegisteredModels,
)
from rfpipe.server.settings import ServerSettings, decode_device
from rfpipe.server.visualize import draw_predictions

logger = logging.getLogger("rfpipe.server")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 403, 404, 413, 415, 422, 500, 503, 504)
}


@dataclass
class Options:
    """Per-request inference options shared by both inference routes."""

    confidence: float = 0.4
    overrides: Overrides = Overrides()
    auto_orient: bool = True
    class_filter: frozenset[str] | None = None
    max_detections: int | None = None
    visualize: bool = False
    labels: bool = True
    stroke: int = 2


@dataclass
class _Staged:
    frame: np.ndarray | torch.Tensor  # what the detector gets (a pinned copy on GPU serving; a GPU tensor with --gpu-decode)
    original: np.ndarray | torch.Tensor  # the decoded frame (kept for visualization and the answer's size)


def _pinned_copy(frame: np.ndarray) -> np.ndarray:
    """`frame` copied into page-locked memory, which the CUDA preprocessing uploads without staging.

    The copy runs on a decode thread, beside the batch in flight, instead of on the GPU worker's
    critical path. Torch's caching host allocator reuses the buffer once the array is dropped, and
    the admission bound on queued images bounds how many are alive. When pinning is not possible
    the frame stays pageable (correct, only slower).
    """
    from rfpipe.preprocess.cuda import pinned_frame

    try:
        staged = pinned_frame(*frame.shape)
    except RuntimeError:
        return frame
    np.copyto(staged, frame)
    return staged


class ServerState:
    """What the routes share: settings, the served model's description, the batcher, metrics, thread pools."""

    def __init__(self, detectors: list[Any], settings: ServerSettings):
        first = detectors[0]
        self.settings = settings
        self.config = first.config
        self.class_names = tuple(first.class_names)
        self.devices = sorted({str(d.device) for d in detectors})
        self.decode_device = decode_device(settings, self.devices)  # None: OpenCV decodes everything
        if self.decode_device is not None:
            check_device_decoder(self.decode_device)  # fails at start-up, not on the first JPEG
        self.backend = getattr(first, "backend_name", "unknown")
        self.metrics = Metrics()
        limit = first.config.max_dynamic_batch_size
        self.max_batch = min(settings.max_batch, limit) if limit else settings.max_batch
        self.batcher = Batcher(detectors, self.max_batch, settings.max_wait_ms / 1000.0, settings.queue_size, self.metrics)
        self.decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="rfpipe-decode")
        self.pin_frames = any(str(d.device).startswith("cuda") for d in detectors)

    def describe(self) -> dict[str, Any]:
        size = self.config.training_size
        return {"models": [{"model_id": self.settings.model_id, "task_type": "object-detection",
                            "batch_size": self.max_batch, "input_height": size.height, "input_width": size.width}]}

    def check_model(self, model_id: str) -> None:
        if model_id != self.settings.model_id:
            raise ApiError(404, "unknown_model",
                           f"unknown model id {model_id!r}: this server serves {self.settings.model_id!r}")

    # -- the inference pipeline shared by both routes --------------------------------------------

    def _decode(self, source: Any, where: str, auto_orient: bool) -> _Staged:
        s = self.settings
        data = source() if callable(source) else source
        try:
            if self.decode_device is not None:  # a GPU tensor for JPEG the device decoder takes, else OpenCV's frame
                frame = decode_for_device(data, self.decode_device, auto_orient, s.max_pixels)
            else:
                frame = decode_image(data, auto_orient=auto_orient, max_pixels=s.max_pixels)
        except DecodeError as error:
            raise from_decode_error(error, where) from error
        on_device = isinstance(frame, torch.Tensor)
        self.metrics.decodes.labels("torchvision" if on_device else "opencv", read_header(data).format).inc()
        if on_device or not self.pin_frames:
            return _Staged(frame, frame)
        return _Staged(_pinned_copy(frame), frame)

    async def infer(self, sources: list[Any], options: Options, request_id: str, started: float) -> list[dict]:
        """Decode, batch and infer `sources` (bytes, or callables giving bytes); one response dict per image."""
        if not self.batcher.ready:
            reason = self.batcher.failure or "the model is still loading"
            raise ApiError(503, "not_ready", f"not ready: {reason}", {"Retry-After": str(self.settings.retry_after_s)})
        try:
            self.batcher.admit(len(sources))
        except QueueFull as error:
            raise ApiError(503, "queue_full", f"server busy: {error}; retry later",
                           {"Retry-After": str(self.settings.retry_after_s)}) from error
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout_s
        decoding = asyncio.ensure_future(self._decode_all(sources, options, loop))
        try:
            staged = await asyncio.wait_for(asyncio.shield(decoding), self.settings.request_timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as error:
            self.batcher.withdraw(len(sources))
            if isinstance(error, asyncio.CancelledError):
                raise
            raise _timeout(self.settings.request_timeout_s) from None
        except Exception:  # a decode error
            self.batcher.withdraw(len(sources))
            raise
        jobs = [Job(s.frame, options.overrides, options.confidence, loop, loop.create_future()) for s in staged]
        self.batcher.submit(jobs)
        try:
            detections = await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)),
                                                max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            for job in jobs:
                job.abandoned = True
            raise _timeout(self.settings.request_timeout_s) from None
        except BaseException:
            for job in jobs:
                job.abandoned = True
            raise
        elapsed = time.perf_counter() - started
        return [self._response(d, s.original, options, request_id, elapsed) for d, s in zip(detections, staged, strict=True)]

    async def _decode_all(self, sources: list[Any], options: Options, loop: asyncio.AbstractEventLoop) -> list[_Staged]:
        started = time.perf_counter()
        names = ["image"] if len(sources) == 1 else [f"image[{i}]" for i in range(len(sources))]
        outcomes = await asyncio.gather(
            *(loop.run_in_executor(self.decoders, self._decode, src, name, options.auto_orient)
              for src, name in zip(sources, names, strict=True)),
            return_exceptions=True,
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            raise failures[0]
        self.metrics.stage.labels("decode").observe((time.perf_counter() - started) / len(sources))
        return outcomes

    def _response(self, detections: Any, frame: np.ndarray | torch.Tensor, options: Options, request_id: str,
                  elapsed: float) -> dict:
        return response_for(detections, frame, options, request_id, elapsed)


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


def _timeout(seconds: float) -> ApiError:
    return ApiError(504, "timeout", f"inference did not finish within the request timeout ({seconds:g} s); retry later",
                    {"Retry-After": "1"})


def _error_json(status: int, error_type: str, message: str, request_id: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"message": message, "error_type": error_type, "request_id": request_id},
                        status_code=status, headers=headers)


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "-")


def _note_error(request: Request, error_type: str) -> None:
    request.scope.setdefault("state", {})["error_type"] = error_type


class _Guard:
    """Outermost ASGI layer: request ids, the body-size limit, metrics, and a last-resort 500 that logs."""

    def __init__(self, app: Any, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["started"] = request_id, started
        status = [500]
        started_response = [False]

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                started_response[0] = True
                status[0] = message["status"]
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        try:
            body_receive = await self._bounded_body(scope, receive, headers)
            if isinstance(body_receive, JSONResponse):
                return await body_receive(scope, receive, send_with_id)
            await self.app(scope, body_receive, send_with_id)
        except Exception:
            logger.exception("request %s: unhandled error on %s %s", request_id, scope.get("method"), scope.get("path"))
            state["error_type"] = "internal_error"
            if started_response[0]:
                raise
            await _error_json(500, "internal_error", f"internal server error (request id {request_id})",
                              request_id)(scope, receive, send_with_id)
        finally:
            self._observe(scope, status[0], time.perf_counter() - started)

    async def _bounded_body(self, scope: dict, receive: Any, headers: dict) -> Any:
        """A `receive` that replays the whole body, read up to the limit; or the 413/400 answer."""
        limit = self.state.settings.max_body_bytes
        request_id = scope["state"]["request_id"]
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                scope["state"]["error_type"] = "invalid_request"
                return _error_json(400, "invalid_request", "invalid Content-Length header", request_id)
            if length > limit:
                scope["state"]["error_type"] = "body_too_large"
                return _error_json(413, "body_too_large", f"request body of {length} bytes exceeds the limit of {limit}",
                                   request_id)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return receive
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                scope["state"]["error_type"] = "body_too_large"
                return _error_json(413, "body_too_large", f"request body exceeds the limit of {limit} bytes", request_id)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = [False]

        async def replay() -> dict:
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _observe(self, scope: dict, status: int, seconds: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        m = self.state.metrics
        m.requests.labels(path, scope.get("method", "-"), str(status)).inc()
        m.latency.labels(path).observe(seconds)
        if status >= 400:
            m.errors.labels(path, str(status), scope["state"].get("error_type", "http_error")).inc()


def _validation_message(error: RequestValidationError) -> tuple[int, str, str]:
    problems = []
    for item in error.errors():
        if item.get("type") == "json_invalid":
            return 400, "invalid_json", f"the body is not valid JSON: {item.get('ctx', {}).get('error', 'parse error')}"
        location = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        problems.append(f"{location or 'body'}: {item.get('msg')}")
    return 422, "invalid_parameters", "invalid request: " + "; ".join(problems[:10])


def options_from_request(body: ObjectDetectionRequest) -> Options:
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


def create_app(detectors: list[Any], settings: ServerSettings) -> FastAPI:
    """The FastAPI app serving `detectors` (same model; one worker thread each) under `settings`.

    >>> app = create_app([rfpipe.Detector.load("pkg", device="cuda:0")], ServerSettings(model_id="cars/3"))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=9001)  # doctest: +SKIP
    """
    if not detectors:
        raise ValueError("create_app needs at least one detector")
    state = ServerState(detectors, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        state.batcher.start()
        # Accept connections once the workers are warm: the first requests then meet a ready model.
        await asyncio.get_running_loop().run_in_executor(None, state.batcher.wait_warm, 600.0)
        try:
            yield
        finally:
            state.batcher.stop()
            state.decoders.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="rfpipe", version=rfpipe.__version__, lifespan=lifespan,
                  description="RF-DETR object detection, compatible with the Roboflow inference server API.")
    app.state.server = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        _note_error(request, error.error_type)
        if error.status >= 500:
            logger.warning("request %s: %d %s: %s", _request_id(request), error.status, error.error_type, error.message)
        return _error_json(error.status, error.error_type, error.message, _request_id(request), error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        status, kind, message = _validation_message(error)
        _note_error(request, kind)
        return _error_json(status, kind, message, _request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        _note_error(request, kind)
        message = f"no route {request.method} {request.url.path}" if error.status_code == 404 else str(error.detail)
        return _error_json(error.status_code, kind, message, _request_id(request), getattr(error, "headers", None))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request) -> Any:
        """Readiness: every worker has loaded its model and run a warm-up batch.

        Under `rfpipe serve --processes N` the answer is the receiving process's own. A process accepts
        connections only after its warm-up has settled (or 600 s passed), so a probe meets a process
        that is ready or has failed (503), not one still loading.
        """
        if state.batcher.ready:
            return {"status": "ready", "workers": len(detectors), "devices": state.devices}
        _note_error(request, "not_ready")
        reason = state.batcher.failure or "the model is still loading"
        return _error_json(503, "not_ready", f"not ready: {reason}", _request_id(request),
                           {"Retry-After": str(settings.retry_after_s)})

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/info", tags=["models"])
    async def info() -> dict:
        """The server's name and version (inference-sdk reads these), and which process answered on which devices.

        Under `rfpipe serve --processes N` each process answers for itself: `pid` and `devices` tell them apart.
        """
        return {"name": "rfpipe", "version": rfpipe.__version__, "uuid": settings.model_id,
                "pid": os.getpid(), "devices": state.devices}

    @app.get("/model/registry", response_model=RegisteredModels, tags=["models"])
    async def registry() -> dict:
        """The one model this server serves (inference-sdk reads its task type and input size here)."""
        return state.describe()

    @app.post("/model/add", response_model=RegisteredModels, tags=["models"], responses=_ERROR_RESPONSES)
    async def add_model(body: AddModelRequest) -> dict:
        """Succeeds for the served model id (inference-sdk calls it before inferring); models are not loaded at run time."""
        state.check_model(body.model_id)
        return state.describe()

    @app.post("/infer/object_detection", tags=["inference"], responses=_ERROR_RESPONSES,
              response_model=ObjectDetectionResponse | list[ObjectDetectionResponse])
    async def infer_object_detection(request: Request, body: ObjectDetectionRequest) -> Any:
        """Detect objects in one image (answer: one object) or a list of images (answer: a list)."""
        state.check_model(body.model_id)
        payloads = body.image if isinstance(body.image, list) else [body.image]
        if not payloads:
            raise ApiError(400, "no_images", "the request has an empty image list")
        if len(payloads) > settings.max_images:
            raise ApiError(413, "too_many_images",
                           f"the request has {len(payloads)} images, the limit is {settings.max_images}")
        names = ["image"] if len(payloads) == 1 else [f"image[{i}]" for i in range(len(payloads))]
        sources = [_payload_source(p, name, settings) for p, name in zip(payloads, names, strict=True)]
        results = await state.infer(sources, options_from_request(body), _request_id(request),
                                    request.scope["state"]["started"])
        return JSONResponse(results if isinstance(body.image, list) else results[0])

    @app.post("/{dataset_id}/{version_id}", tags=["inference"], responses=_ERROR_RESPONSES,
              response_model=ObjectDetectionResponse,
              openapi_extra={"requestBody": {"content": {
                  "application/x-www-form-urlencoded": {"schema": {"type": "string", "description": "base64 image"}},
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "file": {"type": "string", "format": "binary"}}}}}}})
    async def infer_legacy(
        request: Request, dataset_id: str, version_id: str,
        api_key: str | None = None,
        confidence: float = Query(0.4, ge=0.0, le=1.0),
        image: str | None = Query(None, description="image URL (when the server allows URLs)"),
        format: str = Query("json", description="'json' or 'image' (the visualization as JPEG)"),
        labels: bool = True,
        stroke: int = Query(2, ge=1, le=32),
        max_detections: int | None = Query(None, ge=1),
        disable_preproc_auto_orient: bool = False,
        disable_preproc_contrast: bool = False,
        disable_preproc_grayscale: bool = False,
        disable_preproc_static_crop: bool = False,
    ) -> Any:
        """Legacy route: the body is base64 text, raw image bytes, or a multipart upload (field `file`)."""
        state.check_model(f"{dataset_id}/{version_id}")
        if format not in ("json", "image"):
            raise ApiError(400, "invalid_parameters", f"format must be 'json' or 'image', got {format!r}")
        if image is not None:
            source = _payload_source(ImagePayload(type="url", value=image), "image", settings)
        else:
            source = await _legacy_body(request)
        options = Options(
            confidence=confidence,
            overrides=Overrides(disable_static_crop=disable_preproc_static_crop,
                                disable_contrast=disable_preproc_contrast, disable_grayscale=disable_preproc_grayscale),
            auto_orient=not disable_preproc_auto_orient, max_detections=max_detections,
            visualize=format == "image", labels=labels, stroke=stroke,
        )
        (result,) = await state.infer([source], options, _request_id(request), request.scope["state"]["started"])
        if format == "image":
            return Response(base64.b64decode(result["visualization"]), media_type="image/jpeg")
        return JSONResponse(result)

    app.add_middleware(_Guard, state=state)
    return app


def _payload_source(payload: ImagePayload, where: str, settings: ServerSettings) -> Any:
    """Bytes now for base64 (cheap, and its errors come first), a deferred fetch for URLs (run on a decode thread)."""
    kind = payload.type.lower()
    if kind == "url":
        if not settings.allow_url_input:
            payload_bytes(kind, payload.value, where, False, 0, 0.0)  # raises the 'disabled' error

        def fetch() -> bytes:
            return payload_bytes(kind, payload.value, where, True, settings.max_body_bytes, settings.url_timeout_s)

        return fetch
    return payload_bytes(kind, payload.value, where, settings.allow_url_input, settings.max_body_bytes,
                         settings.url_timeout_s)


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


async def _legacy_body(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as error:  # the multipart parser's errors are all the sender's
            raise ApiError(400, "invalid_multipart", f"invalid multipart body: {error}") from error
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "no_images", "the multipart body has no file field named 'file'")
        return await upload.read()
    body = await request.body()
    if not body:
        raise ApiError(400, "no_images", "empty body: send the image as base64 text, raw bytes or a multipart upload")
    if body.startswith(_IMAGE_MAGIC):
        try:  # raw image bytes, unless the whole body is valid base64 that happens to start like one
            return decode_base64(body, "image")
        except ApiError:
            return body
    return decode_base64(body, "image")
