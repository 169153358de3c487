"""Input forms -> a list of `Frame`s, with clear errors for what cannot be preprocessed.

Accepted: HWC / NHWC uint8 numpy arrays, lists of them (mixed sizes), uint8 torch tensors (HWC,
CHW, NHWC, NCHW; on any device), float torch tensors (CHW / NCHW in [0, 1]: tensor semantics),
float numpy arrays (`x * 255`, clipped, truncated to uint8, as the reference does).

Documented conversions: single-channel images (H x W, H x W x 1, 1 x H x W) are repeated to three
channels, as OpenCV's GRAY2BGR would; float tensors are processed in float32.
Refused: 4-channel images (alpha has no single right meaning here), 16-bit and other integer or
bool dtypes, zero-size images, non-finite float pixels, anything that is not an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rfpipe.config import ImageSize


@dataclass(frozen=True)
class Frame:
    """One image: uint8 HWC pixels (numpy, or a tensor on any device) or a float32 CHW tensor."""

    pixels: np.ndarray | torch.Tensor
    is_float_tensor: bool = False

    @property
    def size(self) -> ImageSize:
        shape = self.pixels.shape
        if self.is_float_tensor:
            return ImageSize(int(shape[2]), int(shape[1]))
        return ImageSize(int(shape[1]), int(shape[0]))


def _describe(image: Any) -> str:
    kind = "array" if isinstance(image, np.ndarray) else "tensor"
    return f"{kind} of shape {tuple(image.shape)} and dtype {image.dtype}"


def _check_size(height: int, width: int, image: Any, where: str) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"{where}: zero-size image ({_describe(image)})")


def _channels_error(channels: int, image: Any, where: str) -> ValueError:
    if channels == 4:
        return ValueError(
            f"{where}: 4-channel images are not supported ({_describe(image)}); "
            "drop the alpha channel first, e.g. image[..., :3]"
        )
    return ValueError(f"{where}: expected 3 channels (or 1, which is repeated), got {channels} ({_describe(image)})")


def _numpy_frame(image: np.ndarray, where: str) -> Frame:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"{where}: expected an H x W x C image, got {_describe(image)}")
    _check_size(image.shape[0], image.shape[1], image, where)
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(
                f"{where}: unsupported dtype {image.dtype}; pass uint8 pixels (0..255) "
                "or floats in [0, 1]"
            )
        if not np.isfinite(image).all():
            raise ValueError(f"{where}: float image contains NaN or infinite values")
        image = (image * 255.0).clip(0, 255).astype(np.uint8)
    channels = image.shape[2]
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels != 3:
        raise _channels_error(channels, image, where)
    return Frame(image)


def _tensor_frame(image: torch.Tensor, where: str) -> Frame:
    if image.ndim == 2:
        image = image.unsqueeze(-1)
    if image.ndim != 3:
        raise ValueError(f"{where}: expected a 3-D image tensor (HWC or CHW), got {_describe(image)}")
    if image.dtype.is_floating_point:
        chw = image
        # HWC when the first axis cannot be channels; a trailing 4 is read as channels too, so
        # an RGBA HWC tensor gets the 4-channel error rather than "got <height> channels".
        if image.shape[0] not in (1, 3) and image.shape[-1] in (1, 3, 4):
            chw = image.permute(2, 0, 1)
        _check_size(chw.shape[1], chw.shape[2], image, where)
        if chw.shape[0] == 1:
            chw = chw.expand(3, -1, -1)
        elif chw.shape[0] != 3:
            raise _channels_error(int(chw.shape[0]), image, where)
        # Refused like float numpy input (this reads the tensor: on CUDA it waits for the GPU).
        if not bool(torch.isfinite(chw).all()):
            raise ValueError(f"{where}: float image contains NaN or infinite values")
        return Frame(chw.detach().to(torch.float32), is_float_tensor=True)
    if image.dtype != torch.uint8:
        raise TypeError(
            f"{where}: unsupported tensor dtype {image.dtype}; pass uint8 pixels (0..255) "
            "or float tensors in [0, 1]"
        )
    hwc = image
    if image.shape[-1] not in (1, 3, 4) and image.shape[0] in (1, 3, 4):
        hwc = image.permute(1, 2, 0)
    _check_size(hwc.shape[0], hwc.shape[1], image, where)
    channels = int(hwc.shape[2])
    if channels == 1:
        hwc = hwc.expand(-1, -1, 3)
    elif channels != 3:
        raise _channels_error(channels, image, where)
    return Frame(hwc.detach())


def _frame(image: Any, where: str) -> Frame:
    if isinstance(image, np.ndarray):
        return _numpy_frame(image, where)
    if isinstance(image, torch.Tensor):
        return _tensor_frame(image, where)
    raise TypeError(f"{where}: expected a numpy array or a torch tensor, got {type(image).__name__}")


def to_frames(images: Any) -> list[Frame]:
    """Split any accepted input form into single frames, validating each.

    >>> [f.size for f in to_frames(np.zeros((2, 480, 640, 3), np.uint8))]
    [ImageSize(width=640, height=480), ImageSize(width=640, height=480)]
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images: the list is empty")
        frames = []
        for i, image in enumerate(images):
            if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
                raise ValueError(f"images[{i}]: list items must be single images, got {_describe(image)}")
            frames.append(_frame(image, f"images[{i}]"))
        return frames
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            if images.shape[0] == 0:
                raise ValueError(f"no images: the batch is empty ({_describe(images)})")
            return [_frame(image, f"images[{i}]") for i, image in enumerate(images)]
        return [_frame(images, "image")]
    raise TypeError(
        f"images must be a numpy array, a torch tensor or a list of them, got {type(images).__name__}"
    )
