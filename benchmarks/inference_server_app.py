"""The Roboflow inference server's HTTP app (PyPI `inference`), for serving a local package beside rfpipe.

What its CPU docker image serves, built from the installed package, for benchmarks/server_load.py's
peer comparison (docs: benchmarks/RESULTS.md). Run in an environment with `inference[http]` installed,
from a directory holding `inference/landing/out/static` and `inference/landing/out/_next/static`
(empty will do: the app mounts its landing page from there, relative to the working directory):

    ALLOW_INFERENCE_MODELS_DIRECTLY_ACCESS_LOCAL_PACKAGES=True OFFLINE_MODE=True \\
        python -m uvicorn --app-dir RFPIPE/benchmarks inference_server_app:app --host 127.0.0.1 --port 9002

The package directory needs a `model_config.json` ({"model_architecture": "rfdetr", "task_type":
"object-detection", "backend_type": "onnx"}); requests name it by its absolute path as model id
(inference/core/registries/roboflow.py, `_get_local_model_type`).
"""

from inference.core.env import MAX_ACTIVE_MODELS
from inference.core.interfaces.http.http_api import HttpInterface
from inference.core.managers.base import ModelManager
from inference.core.managers.decorators.fixed_size_cache import WithFixedSizeCache
from inference.core.registries.roboflow import RoboflowModelRegistry
from inference.models.utils import ROBOFLOW_MODEL_TYPES

model_manager = WithFixedSizeCache(ModelManager(model_registry=RoboflowModelRegistry(ROBOFLOW_MODEL_TYPES)),
                                   max_size=MAX_ACTIVE_MODELS)
app = HttpInterface(model_manager).app
