"""Host-side preparation of one GPU batch: CPU contrast, the batch signature and the upload sources.

Shared by the CUDA runtime and the interpreted test entry (`tests/triton_on_cpu.py`), so both
run the same layout. Frames are uint8 only: `preprocess()` hands float tensors to their own kernel.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rfpipe.geometry import ImagePlan
from rfpipe.preprocess import adjust
from rfpipe.preprocess.cuda.staging import is_pinned
from rfpipe.preprocess.inputs import Frame

logger = logging.getLogger("rfpipe")

_logged: set[str] = set()
_logged_lock = threading.Lock()


def _log_once(key: str, message: str, *args: Any, level: int = logging.INFO) -> None:
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    logger.log(level, message, *args)


def adjusted_crop(pixels: np.ndarray | torch.Tensor, plan: ImagePlan, color_format: str) -> np.ndarray:
    """Crop, grayscale and contrast on the CPU with the reference's own functions."""
    _log_once(
        "contrast",
        "rfpipe cuda: contrast (%s) runs on the CPU with the reference's scikit-image code "
        "(no exact GPU version); the adjusted crop is uploaded and the rest runs on the GPU",
        plan.contrast.value,
    )
    x0, y0, x1, y1 = plan.crop_box
    if isinstance(pixels, torch.Tensor):
        crop = pixels[y0:y1, x0:x1].cpu().numpy()  # CUDA input: the one download (a host sync)
    else:
        crop = pixels[y0:y1, x0:x1]
    if plan.grayscale:
        crop = adjust.grayscale(crop, color_format)
    return np.ascontiguousarray(adjust.contrast(crop, plan.contrast))


def jobs(frames: list[Frame], plans: list[ImagePlan], color_format: str) -> list[tuple]:
    """(slot, ImageWork, pixels) per uint8 frame; contrast has already run on the CPU."""
    from rfpipe.preprocess.kernels.triton_params import image_work

    result = []
    for slot, (frame, plan) in enumerate(zip(frames, plans, strict=True)):
        pixels = frame.pixels
        adjusted = plan.contrast is not None
        if adjusted:
            pixels = adjusted_crop(pixels, plan, color_format)
        result.append((slot, image_work(plan, color_format, adjusted), pixels))
    return result


def sources(jobs: list[tuple], device: torch.device, in_place: Callable[[torch.Tensor], bool],
            direct: bool) -> tuple[tuple, list]:
    """The batch signature (a `Source` per image) and each image's pixels (tensor or numpy array)."""
    from rfpipe.preprocess.kernels.triton_batch import DEVICE, RECT, ROWS, Source

    signature, pixels = [], []
    pinned: dict[int, bool] = {}  # per underlying array: the frames of one NHWC batch share it
    for slot, work, image in jobs:
        if isinstance(image, torch.Tensor) and in_place(image):
            if image.device != device:
                image = image.to(device)
            signature.append(Source(slot, work, DEVICE, tuple(image.stride())))
        else:
            if isinstance(image, torch.Tensor):
                image = image.numpy()
            owner = id(image.base) if image.base is not None else id(image)
            if direct and image.flags.c_contiguous and owner not in pinned:
                pinned[owner] = is_pinned(image)
            if direct and image.flags.c_contiguous and pinned[owner]:
                signature.append(Source(slot, work, ROWS, (image.strides[0],)))
            else:
                signature.append(Source(slot, work, RECT))
        pixels.append(image)
    return tuple(signature), pixels


def upload_source(plan, index: int, pixels: list) -> np.ndarray:
    """The host bytes of upload `index`: the region rectangle (RECT) or its full rows (ROWS)."""
    from rfpipe.preprocess.kernels.triton_batch import ROWS

    source = plan.sources[index]
    x0, y0, x1, y1 = source.work.region
    if source.kind == ROWS:
        return pixels[index][y0:y1]
    return pixels[index][y0:y1, x0:x1]


def output_shape(plans: list[ImagePlan]) -> tuple[int, int, int, int]:
    """(N, 3, height, width) of the batch: every plan of a call has the same target."""
    target = plans[0].target
    return (len(plans), 3, target.height, target.width)
