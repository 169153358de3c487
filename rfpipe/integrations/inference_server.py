"""The Roboflow inference server (PyPI `inference`) with rfpipe inside its RF-DETR models.

Installs `rfpipe.integrations.inference_models` before the server loads any model, then builds the
server's HTTP app from its own parts (model registry, model manager with its fixed-size cache,
`HttpInterface`), as its CPU/GPU container does, and serves it with uvicorn. Every environment
variable of the server applies unchanged (read by `inference.core.env`). To serve a local model
package offline, put a `model_config.json` in it, e.g.
`{"model_architecture": "rfdetr", "task_type": "object-detection", "backend_type": "onnx"}`, and
use the package's absolute path as the model id:

    ALLOW_INFERENCE_MODELS_DIRECTLY_ACCESS_LOCAL_PACKAGES=True OFFLINE_MODE=True \\
        python -m rfpipe.integrations.inference_server --host 127.0.0.1 --port 9001

Not started here (the container starts them beside the app): the stream manager process and
active learning. The app mounts the container's landing page from `./inference/landing/out`, which
the wheel does not ship; where the working directory has none, `main()` runs from a scratch
directory holding that tree empty (the landing page is then blank; the API is unchanged). If rfpipe's self-check refuses, the server does not start (exit status 1): asking
for rfpipe inside and silently getting the server without it would mislead.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from typing import Any

from rfpipe.integrations import inference_models

logger = logging.getLogger("rfpipe")


LANDING_DIRS = ("inference/landing/out/static", "inference/landing/out/_next/static")


def create_app(*, implementation: str = "auto", allow_untested_version: bool = False) -> Any:
    """The inference server's FastAPI app, its RF-DETR models preprocessing through rfpipe.

    Needs the working directory to hold LANDING_DIRS (the server mounts them); `main()` sees to it.

    >>> app = create_app()  # server  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=9001)  # server  # doctest: +SKIP
    """
    if not inference_models.install(implementation=implementation, allow_untested_version=allow_untested_version):
        raise RuntimeError("rfpipe's self-check against inference-models' base preprocessing failed (see the log)")
    from inference.core.env import MAX_ACTIVE_MODELS
    from inference.core.interfaces.http.http_api import HttpInterface
    from inference.core.managers.base import ModelManager
    from inference.core.managers.decorators.fixed_size_cache import WithFixedSizeCache
    from inference.core.registries.roboflow import RoboflowModelRegistry
    from inference.models.utils import ROBOFLOW_MODEL_TYPES

    manager = WithFixedSizeCache(ModelManager(model_registry=RoboflowModelRegistry(ROBOFLOW_MODEL_TYPES)),
                                 max_size=MAX_ACTIVE_MODELS)
    return HttpInterface(manager).app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rfpipe.integrations.inference_server",
        description="Run the Roboflow inference server with rfpipe's exact preprocessing inside its RF-DETR models.",
    )
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="address to bind (default: $HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9001")), help="port (default: $PORT or 9001)")
    parser.add_argument("--implementation", default="auto", choices=inference_models.IMPLEMENTATIONS,
                        help="rfpipe implementation inside the models (default: auto, the fastest exact one)")
    parser.add_argument("--allow-untested-version", action="store_true",
                        help="install into an inference-models version rfpipe was not verified with (the self-check still runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not all(os.path.isdir(d) for d in LANDING_DIRS):
        scratch = os.path.join(tempfile.gettempdir(), "rfpipe-inference-server")
        for d in LANDING_DIRS:
            os.makedirs(os.path.join(scratch, d), exist_ok=True)
        logger.info("rfpipe.integrations.inference_server: no landing page here; running from %s", scratch)
        os.chdir(scratch)
    try:
        app = create_app(implementation=args.implementation, allow_untested_version=args.allow_untested_version)
    except (RuntimeError, ValueError, ImportError) as error:
        logger.error("rfpipe.integrations.inference_server: %s", error)
        return 1
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
