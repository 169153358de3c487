"""The untrained RF-DETR Nano test packages as a session fixture (built once, cached on disk).

Import the fixture into a test module: `from model_packages import packages  # noqa: F401`.
Where RFPIPE_REQUIRE_MODELS=1 (CI), a missing rfdetr or onnxruntime fails instead of skipping.
Resolution 320 (rfpipe.testing.untrained.RESOLUTION); the cache lives in $RFPIPE_CACHE or ~/.cache/rfpipe.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest


def require(module: str, why: str, flag: str):
    """Import `module`; skip without it, except where the environment variable `flag` is 1 (CI): fail."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if os.environ.get(flag) == "1":
            raise RuntimeError(f"{module} does not import ({error}); {why}") from error
        pytest.skip(f"{module} is not installed ({why})")


@pytest.fixture(scope="session")
def packages() -> dict[str, Path]:
    require("rfdetr", "needed to build the untrained test model", "RFPIPE_REQUIRE_MODELS")
    require("onnxruntime", "the ONNX backend runs the test packages", "RFPIPE_REQUIRE_MODELS")
    from rfpipe.testing.untrained import cached_packages

    return cached_packages()
