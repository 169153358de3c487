"""The reference implementation: the literal chain of DESIGN.md, step by step (ground truth).

Slow and obviously correct: OpenCV, scikit-image and Pillow calls in the order the RF-DETR
reference preprocessing makes them, then torchvision's `to_tensor` and `normalize`. Every fast
implementation is tested against this one with `torch.equal`.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from rfpipe.config import ModelConfig, ResizeFilter
from rfpipe.geometry import ImagePlan
from rfpipe.preprocess import adjust
from rfpipe.preprocess.inputs import Frame
from rfpipe.preprocess.kernels.float_tables import apply_float_ops


def _to_numpy(pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(pixels, torch.Tensor):
        return pixels.cpu().numpy()
    return pixels


def _dataset_version_step(image: np.ndarray, plan: ImagePlan) -> np.ndarray:
    """Letterbox / center-crop onto the dataset-version canvas (OpenCV INTER_LINEAR for letterbox)."""
    canvas = plan.canvas
    x0, y0, x1, y1 = canvas.src_box
    window = image[y0:y1, x0:x1]
    if canvas.resizes:
        window = cv2.resize(np.ascontiguousarray(window), tuple(canvas.placed), interpolation=cv2.INTER_LINEAR)
    out = np.full((canvas.size.height, canvas.size.width, 3), canvas.fill, dtype=np.uint8)
    left, top = canvas.offset
    out[top : top + canvas.placed.height, left : left + canvas.placed.width] = window
    return out


def _resize(image: np.ndarray, plan: ImagePlan) -> np.ndarray:
    size = (plan.target.width, plan.target.height)
    if plan.resize_filter is ResizeFilter.CV2_LINEAR:
        return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_LINEAR)
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BILINEAR))


def preprocess_one(frame: Frame, plan: ImagePlan, config: ModelConfig, color_format: str) -> torch.Tensor:
    """One uint8 frame -> float32 CHW tensor on the CPU."""
    image = _to_numpy(frame.pixels)
    x0, y0, x1, y1 = plan.crop_box
    image = image[y0:y1, x0:x1]
    if plan.grayscale:
        image = adjust.grayscale(image, color_format)
    if plan.contrast is not None:
        image = adjust.contrast(image, plan.contrast)
    if plan.canvas is not None:
        image = _dataset_version_step(image, plan)
        if plan.swap_channels:  # the reference swaps the canvas, before the final resize
            image = image[:, :, ::-1]
        resized = _resize(image, plan)
    else:
        resized = _resize(image, plan)
        if plan.swap_channels:  # and swaps the smaller image after it in the single-step chain
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    tensor = TF.to_tensor(resized)
    return apply_float_ops(tensor, config)


def run(
    frames: list[Frame], plans: list[ImagePlan], config: ModelConfig, device: torch.device, color_format: str
) -> torch.Tensor:
    """The reference batch: each uint8 frame through the chain, moved to `device`, stacked NCHW."""
    tensors = [preprocess_one(f, p, config, color_format).to(device) for f, p in zip(frames, plans)]
    return torch.stack(tensors).contiguous()
