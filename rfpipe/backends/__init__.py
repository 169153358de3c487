"""Forward-only backends: a float32 NCHW batch on the device in, (logits, boxes) on the device out.

Each module holds one runtime (`torch`, `onnx`, `tensorrt`) and a `load_*` function returning a
callable with `name`, `device` and `__call__(batch) -> (logits [B, Q, C], boxes [B, Q, 4])`, both
float32. Backends know nothing about preprocessing or post-processing.
"""

from __future__ import annotations

from typing import Protocol

# Aliased: importing the submodule rfpipe.backends.torch rebinds the name `torch` in this package.
import torch as _torch

# backend name -> module; imported lazily so a missing optional runtime only matters when chosen.
BACKENDS = {
    "torch": "rfpipe.backends.torch",
    "onnx": "rfpipe.backends.onnx",
    "tensorrt": "rfpipe.backends.tensorrt",
}


class Backend(Protocol):
    name: str
    device: _torch.device

    def __call__(self, batch: _torch.Tensor) -> tuple[_torch.Tensor, _torch.Tensor]: ...


class BackendUnavailable(RuntimeError):
    """The runtime a backend needs is not installed or cannot run on the requested device."""
