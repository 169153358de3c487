"""Ray Serve deployment of `rfpipe.Detector`: replicas across a cluster, Serve's own dynamic batching.

Each replica loads one detector (give it a GPU with `ray_actor_options={"num_gpus": 1}`) and answers
POST {route_prefix}/infer/object_detection with the same JSON body and response shape as
`rfpipe serve`; Serve's `@serve.batch` gathers concurrent images into one forward pass, and Serve
spreads requests over replicas. Decoding, limits, options and errors are the server's own code.

    from ray import serve
    from rfpipe.server.ray_serve import build_app
    serve.run(build_app("path/to/package", model_id="cars/3", device="cuda", num_replicas=4,
                        ray_actor_options={"num_gpus": 1}))
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import ValidationError
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from rfpipe.io.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from rfpipe.geometry import Overrides
from rfpipe.server.app import options_from_request, response_for
from rfpipe.server.batching import infer_batch
from rfpipe.server.errors import ApiError, from_decode_error
from rfpipe.server.images import payload_bytes
from rfpipe.server.schemas import ObjectDetectionRequest

MAX_BATCH = 8
MAX_WAIT_S = 0.005


def load_detector(path: str, device: str, backend: str) -> Any:
    """The default loader: `rfpipe.Detector.load` (imported in the replica, not the driver)."""
    from rfpipe import Detector

    return Detector.load(path, device=device, backend=backend)


@serve.deployment(max_ongoing_requests=64)
class DetectorDeployment:
    """One replica: a detector, batched by Serve, behind the inference-server JSON route."""

    def __init__(self, model_id: str, loader: Callable[[], Any], max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_images: int = 16, max_body_bytes: int = 32 << 20):
        self.model_id = model_id
        self.detector = loader()
        self.max_pixels = max_pixels
        self.max_images = max_images
        self.max_body_bytes = max_body_bytes

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=MAX_WAIT_S)
    async def _infer(self, items: list[tuple[np.ndarray, Overrides, float]]) -> list[Any]:
        frames, overrides, confidences = (list(x) for x in zip(*items, strict=True))
        # The forward pass blocks; a thread keeps the replica's event loop taking requests meanwhile.
        return await asyncio.to_thread(infer_batch, self.detector, frames, overrides, confidences)

    def _decode(self, payload: Any, where: str, auto_orient: bool) -> np.ndarray:
        data = payload_bytes(payload.type, payload.value, where, False, self.max_body_bytes, 0.0)
        try:
            return decode_image(data, auto_orient=auto_orient, max_pixels=self.max_pixels)
        except DecodeError as error:
            raise from_decode_error(error, where) from error

    async def __call__(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        try:
            if request.method != "POST" or not request.url.path.rstrip("/").endswith("/infer/object_detection"):
                raise ApiError(404, "not_found", f"no route {request.method} {request.url.path}")
            raw = await request.body()
            if len(raw) > self.max_body_bytes:
                raise ApiError(413, "body_too_large", f"request body exceeds the limit of {self.max_body_bytes} bytes")
            try:
                body = ObjectDetectionRequest.model_validate_json(raw)
            except ValidationError as error:
                raise ApiError(422, "invalid_parameters", f"invalid request: {error.errors()[0]['msg']}") from error
            if body.model_id != self.model_id:
                raise ApiError(404, "unknown_model", f"unknown model id {body.model_id!r}: this deployment serves {self.model_id!r}")
            payloads = body.image if isinstance(body.image, list) else [body.image]
            if not payloads or len(payloads) > self.max_images:
                raise ApiError(400, "invalid_parameters", f"send 1 to {self.max_images} images, got {len(payloads)}")
            options = options_from_request(body)
            names = ["image"] if len(payloads) == 1 else [f"image[{i}]" for i in range(len(payloads))]
            frames = [await asyncio.to_thread(self._decode, p, n, options.auto_orient) for p, n in zip(payloads, names, strict=True)]
            detections = await asyncio.gather(*(self._infer((f, options.overrides, options.confidence)) for f in frames))
        except ApiError as error:
            return JSONResponse({"message": error.message, "error_type": error.error_type, "request_id": request_id},
                                status_code=error.status, headers=error.headers)
        elapsed = time.perf_counter() - started
        results = [response_for(d, f, options, request_id, elapsed) for d, f in zip(detections, frames, strict=True)]
        return JSONResponse(results if isinstance(body.image, list) else results[0])


def build_app(model: str, model_id: str, device: str = "cpu", backend: str = "auto",
              loader: Callable[[], Any] | None = None, **deployment_options: Any) -> serve.Application:
    """A Serve application of `model` (num_replicas, ray_actor_options, ... go to `.options`).

    >>> serve.run(build_app("pkg", "cars/3", device="cuda", num_replicas=2, ray_actor_options={"num_gpus": 1}))  # doctest: +SKIP
    """
    if loader is None:
        def loader() -> Any:
            return load_detector(model, device, backend)
    return DetectorDeployment.options(**deployment_options).bind(model_id, loader)
