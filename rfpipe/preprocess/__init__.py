"""`preprocess()`: the one entry from images to the network's float32 NCHW batch plus metadata.

Geometry is planned once per image (rfpipe.geometry); the input kind is looked at once, here:
float tensors go to their own kernel (`float_tensor`), uint8 frames to an implementation, which
only moves pixels: `reference` (the literal chain), `cpu` (exact, fast) and `cuda` (exact,
Triton) are siblings that share the geometry and tables and never import each other.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from rfpipe.config import ModelConfig
from rfpipe.devices import resolve_device
from rfpipe.geometry import (
    ImagePlan,
    Overrides,
    PreprocessMetadata,
    plan_image,
    resolve_target_size,
)
from rfpipe.preprocess import float_tensor
from rfpipe.preprocess.inputs import Frame, to_frames

logger = logging.getLogger("rfpipe")

# name -> module holding `run(frames, plans, config, device, color_format) -> Tensor` for uint8 frames
IMPLEMENTATIONS = {
    "reference": "rfpipe.preprocess.reference",
    "cpu": "rfpipe.preprocess.cpu",
    "cuda": "rfpipe.preprocess.cuda",
}


def _color_format(value: Any) -> str:
    if value is None:
        return "bgr"
    if value not in ("bgr", "rgb"):
        raise ValueError(f"input_color_format must be 'bgr', 'rgb' or None (meaning bgr), got {value!r}")
    return value


@functools.lru_cache(maxsize=1)
def _cpu_usable() -> bool:
    try:
        from rfpipe.preprocess import cpu
    except ImportError as error:  # the C kernels were not built
        logger.warning("rfpipe: exact CPU kernels unavailable (%s); using the reference implementation", error)
        return False
    return cpu.available()


def _cuda_usable(device: torch.device) -> bool:
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    from rfpipe.preprocess import cuda

    return cuda.available(device)


def resolve_implementation(implementation: str, device: torch.device) -> Callable[..., torch.Tensor]:
    """The `run` function for a name; `auto` is the fastest exact implementation for `device`."""
    if implementation == "auto":
        if _cuda_usable(device):
            implementation = "cuda"
        else:
            implementation = "cpu" if _cpu_usable() else "reference"
    if implementation not in IMPLEMENTATIONS:
        allowed = ", ".join(repr(n) for n in [*IMPLEMENTATIONS, "auto"])
        raise ValueError(f"unknown implementation {implementation!r} (expected one of {allowed})")
    if implementation == "cuda" and device.type != "cuda":
        raise ValueError(f"implementation 'cuda' needs a CUDA device, got device={str(device)!r}")
    return importlib.import_module(IMPLEMENTATIONS[implementation]).run


Run = Callable[[list[Frame], list[ImagePlan], ModelConfig, torch.device, str], torch.Tensor]


def run_by_kind(run: Run, frames: list[Frame], plans: list[ImagePlan], config: ModelConfig,
                device: torch.device, color_format: str) -> torch.Tensor:
    """The batch in input order: uint8 frames through `run`, float tensors through `float_tensor.run`.

    An implementation never sees a float tensor; a mixed batch is split by kind and put back
    together (on CUDA in the caller's stream order, so nothing waits on the host).
    """
    floats = [i for i, frame in enumerate(frames) if frame.is_float_tensor]
    if not floats:
        return run(frames, plans, config, device, color_format)
    if len(floats) == len(frames):
        return float_tensor.run(frames, plans, config, device, color_format)
    uint8 = [i for i, frame in enumerate(frames) if not frame.is_float_tensor]
    target = plans[0].target
    batch = torch.empty((len(frames), 3, target.height, target.width), dtype=torch.float32, device=device)
    for slots, kernel in ((uint8, run), (floats, float_tensor.run)):
        part = kernel([frames[i] for i in slots], [plans[i] for i in slots], config, device, color_format)
        for row, slot in enumerate(slots):  # copies on the current stream (no index upload, no sync)
            batch[slot].copy_(part[row])
    return batch


def preprocess(
    images: Any,
    config: ModelConfig,
    *,
    device: str | torch.device = "cpu",
    input_color_format: str | None = "bgr",
    image_size: int | tuple[int, int] | None = None,
    overrides: Overrides | None = None,
    implementation: str = "auto",
    synchronize: bool = True,
) -> tuple[torch.Tensor, list[PreprocessMetadata]]:
    """Preprocess images for the network: float32 contiguous NCHW on `device`, and per-image metadata.

    On CUDA the batch is ordered before later work on the caller's current stream; with
    `synchronize=False` the call returns without waiting for the GPU (no host synchronisation).

    >>> import numpy as np, rfpipe
    >>> config = rfpipe.ModelConfig.from_dict({"network_input": {"training_input_size": {"width": 560, "height": 560}}})
    >>> frame_bgr = np.zeros((1080, 1920, 3), np.uint8)
    >>> batch, meta = rfpipe.preprocess(frame_bgr, config, device="cpu")
    >>> batch.shape, meta[0].scale_width
    (torch.Size([1, 3, 560, 560]), 0.2916666666666667)
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be an rfpipe.ModelConfig, got {type(config).__name__}")
    color_format = _color_format(input_color_format)
    device = resolve_device(device)
    run = resolve_implementation(implementation, device)
    target = resolve_target_size(config, image_size)
    frames = to_frames(images)
    plans = [
        plan_image(config, f.size, target, overrides, color_format, stretch_only=f.is_float_tensor)
        for f in frames
    ]
    batch = run_by_kind(run, frames, plans, config, device, color_format)
    if synchronize and device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return batch, [p.metadata for p in plans]
