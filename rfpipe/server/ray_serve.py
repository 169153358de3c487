"""Ray Serve deployment of `rfpipe.Detector`: replicas across a cluster, each answering through the server's pipeline.

Each replica loads one detector (give it a GPU with `ray_actor_options={"num_gpus": 1}`) and answers
POST {route_prefix}/infer/object_detection with the same JSON body, limits, errors and response
shape as `rfpipe serve`: it runs the same `rfpipe.server.pipeline.Pipeline` (admission, decoding off
the event loop, the engine's batching), so the same limit gives the same answer on either server.
Serve spreads requests over replicas.

    from ray import serve
    from rfpipe.server.ray_serve import build_app
    serve.run(build_app("path/to/package", model_id="cars/3", device="cuda", num_replicas=4,
                        ray_actor_options={"num_gpus": 1}))
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from rfpipe.server.errors import ApiError, from_validation_errors
from rfpipe.server.pipeline import Pipeline, options_from_request
from rfpipe.server.schemas import ObjectDetectionRequest
from rfpipe.server.settings import ServerSettings


def load_detector(path: str, device: str, backend: str) -> Any:
    """The default loader: `rfpipe.Detector.load` (imported in the replica, not the driver)."""
    from rfpipe import Detector

    return Detector.load(path, device=device, backend=backend)


@serve.deployment(max_ongoing_requests=64)
class DetectorDeployment:
    """One replica: a detector behind the server's pipeline and the inference-server JSON route.

    `settings` are the replica's `ServerSettings` fields other than the model id (max_batch,
    max_images, max_pixels, queue_size, batch_policy, ...).
    """

    def __init__(self, model_id: str, loader: Callable[[], Any], **settings: Any):
        self.pipeline = Pipeline([loader()], ServerSettings(model_id=model_id, **settings))
        self.pipeline.start()
        if not self.pipeline.batcher.wait_warm(600.0):
            raise RuntimeError(f"the replica's detector did not warm up: {self.pipeline.batcher.failure}")

    async def __call__(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        pipeline = self.pipeline
        try:
            if request.method != "POST" or not request.url.path.rstrip("/").endswith("/infer/object_detection"):
                raise ApiError(404, "not_found", f"no route {request.method} {request.url.path}")
            raw = await request.body()
            if len(raw) > pipeline.settings.max_body_bytes:
                raise ApiError(413, "body_too_large",
                               f"request body exceeds the limit of {pipeline.settings.max_body_bytes} bytes")
            try:
                body = ObjectDetectionRequest.model_validate_json(raw)
            except ValidationError as error:
                raise from_validation_errors(error.errors()) from error
            pipeline.check_model(body.model_id)
            sources = pipeline.sources(body.image if isinstance(body.image, list) else [body.image])
            results = await pipeline.infer(sources, options_from_request(body), request_id, started)
        except ApiError as error:
            return JSONResponse({"message": error.message, "error_type": error.error_type, "request_id": request_id},
                                status_code=error.status, headers=error.headers)
        return JSONResponse(results if isinstance(body.image, list) else results[0])


def build_app(model: str, model_id: str, device: str = "cpu", backend: str = "auto",
              loader: Callable[[], Any] | None = None, settings: dict[str, Any] | None = None,
              **deployment_options: Any) -> serve.Application:
    """A Serve application of `model` (num_replicas, ray_actor_options, ... go to `.options`).

    `settings` are `ServerSettings` fields for every replica (max_batch, max_images, batch_policy, ...).

    >>> serve.run(build_app("pkg", "cars/3", device="cuda", num_replicas=2, ray_actor_options={"num_gpus": 1}))  # doctest: +SKIP
    """
    if loader is None:
        def loader() -> Any:
            return load_detector(model, device, backend)
    return DetectorDeployment.options(**deployment_options).bind(model_id, loader, **(settings or {}))
