"""The untrained RF-DETR Nano test packages as a session fixture (built once, cached on disk).

Import the fixture into a test module: `from model_packages import packages  # noqa: F401`.
Resolution 320 (rfpipe.untrained.RESOLUTION); the cache lives in $RFPIPE_CACHE or ~/.cache/rfpipe.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def packages() -> dict[str, Path]:
    pytest.importorskip("rfdetr", reason="rfdetr is not installed (needed to build the test model)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from rfpipe.untrained import cached_packages

    return cached_packages()
