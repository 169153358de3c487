"""The kernel for float tensor input (CHW in [0, 1]): the reference's tensor semantics.

`preprocess()` recognises float tensors once and hands them here, whatever the implementation:
they are resized as tensors with antialiasing on their own device, then normalised; the geometry
is always a stretch. This path is not Pillow-exact by definition (DESIGN.md), so there is only one
implementation of it.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF

from rfpipe.config import ContrastType, ModelConfig
from rfpipe.geometry import ImagePlan
from rfpipe.preprocess import adjust
from rfpipe.preprocess.inputs import Frame
from rfpipe.preprocess.kernels.float_tables import apply_float_ops


def _gray(image: torch.Tensor, color_format: str) -> torch.Tensor:
    if color_format == "bgr":
        blue, green, red = image[0], image[1], image[2]
    else:
        red, green, blue = image[0], image[1], image[2]
    gray = red * 0.299 + green * 0.587 + blue * 0.114
    return gray.unsqueeze(0).expand(3, -1, -1)


def _contrast(image: torch.Tensor, kind: ContrastType) -> torch.Tensor:
    hwc = np.transpose(image.cpu().numpy(), (1, 2, 0))
    if kind is ContrastType.CONTRAST_STRETCHING:
        result = adjust.contrast(hwc, kind)
        return torch.from_numpy(np.ascontiguousarray(result)).to(image.device).permute(2, 0, 1)
    # The equalizations return uint8 even for float input; the reference divides by 255 again.
    result = adjust.contrast(hwc, kind)
    return torch.from_numpy(result).to(image.device).permute(2, 0, 1).float() / 255


def preprocess_float_tensor(
    image: torch.Tensor, plan: ImagePlan, config: ModelConfig, color_format: str
) -> torch.Tensor:
    """One float32 CHW image -> normalised float32 CHW at `plan.target`, on the image's device."""
    x0, y0, x1, y1 = plan.crop_box
    image = image[:, y0:y1, x0:x1]
    if plan.grayscale:
        image = _gray(image, color_format)
    if plan.contrast is not None:
        image = _contrast(image, plan.contrast)
    if plan.swap_channels:
        image = image[[2, 1, 0]]
    target = plan.target
    resized = TF.resize(image.unsqueeze(0), [target.height, target.width], antialias=True).squeeze(0)
    return apply_float_ops(resized, config)


def run(
    frames: list[Frame], plans: list[ImagePlan], config: ModelConfig, device: torch.device, color_format: str
) -> torch.Tensor:
    """Float-tensor frames -> float32 contiguous NCHW on `device` (each computed on its own device)."""
    tensors = [preprocess_float_tensor(f.pixels, p, config, color_format).to(device) for f, p in zip(frames, plans)]
    return torch.stack(tensors).contiguous()
