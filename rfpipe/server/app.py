"""The HTTP app: inference-server-compatible routes over the request pipeline (`rfpipe.server.pipeline`).

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
import gc
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

try:
    import orjson
except ImportError:  # optional: the standard library's json answers the same text, slower
    orjson = None
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

import rfpipe
from rfpipe.geometry import Overrides
from rfpipe.server.errors import ApiError, from_validation_errors
from rfpipe.server.payloads import decode_base64
from rfpipe.server.pipeline import Options, Pipeline, options_from_request
from rfpipe.server.schemas import (
    AddModelRequest,
    ErrorResponse,
    ImagePayload,
    ObjectDetectionRequest,
    ObjectDetectionResponse,
    RegisteredModels,
)
from rfpipe.server.settings import ServerSettings

logger = logging.getLogger("rfpipe.server")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 403, 404, 408, 413, 415, 422, 500, 503, 504)
}


def _error_json(status: int, error_type: str, message: str, request_id: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"message": message, "error_type": error_type, "request_id": request_id},
                        status_code=status, headers=headers)


def json_response(content: Any) -> Response:
    """An answer's JSON (orjson when installed: measured faster for detection lists, benchmarks/RESULTS.md)."""
    if orjson is None:
        return JSONResponse(content)
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "-")


def _note_error(request: Request, error_type: str) -> None:
    request.scope.setdefault("state", {})["error_type"] = error_type


class _Guard:
    """Outermost ASGI layer: request ids, the body-size limit, metrics, and a last-resort 500 that logs."""

    def __init__(self, app: Any, pipeline: Pipeline):
        self.app = app
        self.pipeline = pipeline

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
        limit = self.pipeline.settings.max_body_bytes
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
        timeout = self.pipeline.settings.body_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            try:  # a client dripping its body (slowloris) is cut off; waiting here holds no thread
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                scope["state"]["error_type"] = "body_timeout"
                return _error_json(408, "body_timeout", f"the request body did not arrive within {timeout:g} s",
                                   request_id, {"Connection": "close"})
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
        m = self.pipeline.metrics
        m.requests.labels(path, scope.get("method", "-"), str(status)).inc()
        m.latency.labels(path).observe(seconds)
        if status >= 400:
            m.errors.labels(path, str(status), scope["state"].get("error_type", "http_error")).inc()


def create_app(detectors: list[Any], settings: ServerSettings) -> FastAPI:
    """The FastAPI app serving `detectors` (same model; one worker thread each) under `settings`.

    >>> app = create_app([rfpipe.Detector.load("pkg", device="cuda:0")], ServerSettings(model_id="cars/3"))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=9001)  # doctest: +SKIP
    """
    pipeline = Pipeline(detectors, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        started = time.perf_counter()
        pipeline.start()
        # Accept connections once every engine is warm (every batch size compiled and run once):
        # the first requests then meet a ready model.
        await asyncio.get_running_loop().run_in_executor(None, pipeline.batcher.wait_warm, 600.0)
        if pipeline.batcher.ready:
            logger.info("ready: %d worker(s) warm in %.1f s (batch policy %s, max batch %d)", len(detectors),
                        time.perf_counter() - started, settings.batch_policy, pipeline.max_batch)
        # What start-up built (modules, the model, the app) lives as long as the process: moved out of the
        # collector's generations, the full collections that request garbage triggers no longer walk it.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:  # uvicorn has finished the in-flight requests (or its graceful-shutdown timeout passed)
            await asyncio.get_running_loop().run_in_executor(None, pipeline.close, settings.request_timeout_s)

    app = FastAPI(title="rfpipe", version=rfpipe.__version__, lifespan=lifespan,
                  description="RF-DETR object detection, compatible with the Roboflow inference server API.")
    app.state.pipeline = pipeline

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        _note_error(request, error.error_type)
        if error.status >= 500:
            logger.warning("request %s: %d %s: %s", _request_id(request), error.status, error.error_type, error.message)
        return _error_json(error.status, error.error_type, error.message, _request_id(request), error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        refusal = from_validation_errors(error.errors())
        _note_error(request, refusal.error_type)
        return _error_json(refusal.status, refusal.error_type, refusal.message, _request_id(request))

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
        refusal = pipeline.not_ready()
        if refusal is None:
            return {"status": "ready", "workers": len(detectors), "devices": pipeline.devices}
        _note_error(request, refusal.error_type)
        return _error_json(refusal.status, refusal.error_type, refusal.message, _request_id(request), refusal.headers)

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(pipeline.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/info", tags=["models"])
    async def info() -> dict:
        """The server's name and version (inference-sdk reads these), and which process answered on which devices.

        Under `rfpipe serve --processes N` each process answers for itself: `pid` and `devices` tell them apart.
        """
        return {"name": "rfpipe", "version": rfpipe.__version__, "uuid": settings.model_id,
                "pid": os.getpid(), "devices": pipeline.devices}

    @app.get("/model/registry", response_model=RegisteredModels, tags=["models"])
    async def registry() -> dict:
        """The one model this server serves (inference-sdk reads its task type and input size here)."""
        return pipeline.describe()

    @app.post("/model/add", response_model=RegisteredModels, tags=["models"], responses=_ERROR_RESPONSES)
    async def add_model(body: AddModelRequest) -> dict:
        """Succeeds for the served model id (inference-sdk calls it before inferring); models are not loaded at run time."""
        pipeline.check_model(body.model_id)
        return pipeline.describe()

    @app.post("/infer/object_detection", tags=["inference"], responses=_ERROR_RESPONSES,
              response_model=ObjectDetectionResponse | list[ObjectDetectionResponse])
    async def infer_object_detection(request: Request, body: ObjectDetectionRequest) -> Any:
        """Detect objects in one image (answer: one object) or a list of images (answer: a list)."""
        pipeline.check_model(body.model_id)
        sources = pipeline.sources(body.image if isinstance(body.image, list) else [body.image])
        results = await pipeline.infer(sources, options_from_request(body), _request_id(request),
                                       request.scope["state"]["started"], _client_gone(request))
        return json_response(results if isinstance(body.image, list) else results[0])

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
        pipeline.check_model(f"{dataset_id}/{version_id}")
        if format not in ("json", "image"):
            raise ApiError(400, "invalid_parameters", f"format must be 'json' or 'image', got {format!r}")
        if image is not None:
            source = pipeline.source(ImagePayload(type="url", value=image), "image")
        else:
            source = await _legacy_body(request)
        options = Options(
            confidence=confidence,
            overrides=Overrides(disable_static_crop=disable_preproc_static_crop,
                                disable_contrast=disable_preproc_contrast, disable_grayscale=disable_preproc_grayscale),
            auto_orient=not disable_preproc_auto_orient, max_detections=max_detections,
            visualize=format == "image", labels=labels, stroke=stroke,
        )
        (result,) = await pipeline.infer([source], options, _request_id(request), request.scope["state"]["started"],
                                         _client_gone(request))
        if format == "image":
            return Response(base64.b64decode(result["visualization"]), media_type="image/jpeg")
        return json_response(result)

    app.add_middleware(_Guard, pipeline=pipeline)
    return app


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _client_gone(request: Request) -> Callable[[], Awaitable[None]]:
    """Returns once the client has disconnected (the body was read already: the next message is the disconnect)."""
    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait


def _legacy_bytes(body: bytes) -> bytes:
    if body.startswith(_IMAGE_MAGIC):
        try:  # raw image bytes, unless the whole body is valid base64 that happens to start like one
            return decode_base64(body, "image")
        except ApiError:
            return body
    return decode_base64(body, "image")


async def _legacy_body(request: Request) -> bytes | Callable[[], bytes]:
    """The image bytes of a legacy body; base64 (or raw bytes) are told apart on a decode thread."""
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
    return lambda: _legacy_bytes(body)
