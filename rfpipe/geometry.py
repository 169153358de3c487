"""Per-image geometry: from config, source size and options to the plan every implementation follows.

Pure Python and shared by reference, cpu and cuda: crop box, dataset-version canvas, resize sizes,
pads and scales are computed here once, so the implementations can only differ in how they move
pixels. The arithmetic mirrors the reference chain (DESIGN.md) operation for operation.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

from rfpipe.config import (
    ContrastType,
    DynamicSizeMode,
    ImageSize,
    ModelConfig,
    ResizeFilter,
    ResizeMode,
)

logger = logging.getLogger("rfpipe")

__all__ = [
    "Canvas",
    "ImagePlan",
    "ImageSize",
    "Overrides",
    "PreprocessMetadata",
    "StaticCropOffset",
    "plan_image",
    "resolve_target_size",
]


class StaticCropOffset(NamedTuple):
    offset_x: int
    offset_y: int
    crop_width: int
    crop_height: int


@dataclass(frozen=True)
class PreprocessMetadata:
    """How one image was mapped into the network input; post-processing inverts it."""

    pad_left: int
    pad_top: int
    pad_right: int
    pad_bottom: int
    original_size: ImageSize
    size_after_pre_processing: ImageSize
    inference_size: ImageSize
    scale_width: float
    scale_height: float
    static_crop_offset: StaticCropOffset
    nonsquare_intermediate_size: ImageSize | None = None


@dataclass(frozen=True)
class Overrides:
    """Per-call switches that disable package preprocessing steps."""

    disable_static_crop: bool = False
    disable_contrast: bool = False
    disable_grayscale: bool = False


@dataclass(frozen=True)
class Canvas:
    """The dataset-version step of two-step modes.

    The window `src_box` (x0, y0, x1, y1) of the preprocessed crop is resized to `placed` (OpenCV
    INTER_LINEAR; no resize when the sizes match, as in center-crop) and written at `offset`
    (left, top) on a `size` canvas filled with `fill`.
    """

    size: ImageSize
    src_box: tuple[int, int, int, int]
    placed: ImageSize
    offset: tuple[int, int]
    fill: int

    @property
    def resizes(self) -> bool:
        x0, y0, x1, y1 = self.src_box
        return (x1 - x0, y1 - y0) != tuple(self.placed)


@dataclass(frozen=True)
class ImagePlan:
    """What to do to one image, in order: crop, grayscale, contrast, canvas, resize, channel order."""

    crop_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in source pixels
    grayscale: bool
    contrast: ContrastType | None
    canvas: Canvas | None  # set in two-step modes
    resize_from: ImageSize  # the size entering the final resize
    target: ImageSize
    resize_filter: ResizeFilter
    swap_channels: bool  # network channel order is the reverse of the source's
    metadata: PreprocessMetadata

    @property
    def crop_size(self) -> ImageSize:
        x0, y0, x1, y1 = self.crop_box
        return ImageSize(x1 - x0, y1 - y0)


@functools.lru_cache(maxsize=64)
def _warn_ignored_size(requested: ImageSize, trained: ImageSize, source: str) -> None:
    logger.warning(
        "%s: image_size %s is ignored: the model does not support dynamic input sizes "
        "(it was trained at %dx%d)", source, tuple(requested), trained.width, trained.height,
    )


def resolve_target_size(config: ModelConfig, image_size: int | tuple[int, int] | None) -> ImageSize:
    """The network input size: the training size, or `image_size` where the model allows it.

    >>> cfg = ModelConfig.from_dict({"network_input": {"training_input_size": {"width": 560, "height": 560},
    ...     "dynamic_spatial_size_supported": True,
    ...     "dynamic_spatial_size_mode": {"type": "pad-to-be-divisible", "value": 32}}})
    >>> resolve_target_size(cfg, (500, 300))  # padded up to multiples of 32
    ImageSize(width=512, height=320)
    """
    trained = config.training_size
    if image_size is None:
        return trained
    if isinstance(image_size, bool) or not isinstance(image_size, (int, tuple, list)):
        raise TypeError(f"image_size must be an int or a (width, height) pair, got {image_size!r}")
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"image_size must be positive integers (width, height), got {image_size!r}")
    requested = ImageSize(*pair)
    if requested == trained:
        return trained
    if config.dynamic_size_mode is None:
        _warn_ignored_size(requested, trained, config.source)
        return trained
    if config.dynamic_size_mode is DynamicSizeMode.DIVISIBLE:
        by = config.dynamic_size_divisor
        return ImageSize(math.ceil(requested.width / by) * by, math.ceil(requested.height / by) * by)
    return requested


def _crop_box(config: ModelConfig, width: int, height: int, overrides: Overrides) -> tuple[int, int, int, int]:
    crop = config.static_crop
    if crop is None or overrides.disable_static_crop:
        return 0, 0, width, height
    x0 = int(crop.x_min / 100 * width)
    y0 = int(crop.y_min / 100 * height)
    x1 = int(crop.x_max / 100 * width)
    y1 = int(crop.y_max / 100 * height)
    return x0, y0, x1, y1


def _letterbox(config: ModelConfig, w: int, h: int) -> tuple[Canvas, float, tuple[int, int, int, int]]:
    size = config.dataset_size
    scale = min(size.width / w, size.height / h)
    new_w, new_h = int(w * scale), int(h * scale)
    if new_w < 1 or new_h < 1:
        raise ValueError(
            f"image of {w}x{h} is too elongated to letterbox into {size.width}x{size.height}: "
            f"it would be resized to {new_w}x{new_h}"
        )
    pad_top = int((size.height - new_h) / 2)
    pad_left = int((size.width - new_w) / 2)
    pads = (pad_left, pad_top, size.width - pad_left - new_w, size.height - pad_top - new_h)
    canvas = Canvas(size, (0, 0, w, h), ImageSize(new_w, new_h), (pad_left, pad_top), config.padding_value)
    return canvas, scale, pads


def _center_crop(config: ModelConfig, w: int, h: int) -> tuple[Canvas, tuple[int, int, int, int]]:
    size = config.dataset_size

    def axis(src: int, dst: int) -> tuple[int, int, int, int]:
        # (canvas start, window start, window end, reported pad before/after)
        pad = max(dst - src, 0)
        cut = max(src - dst, 0)
        pad_before, cut_before = pad // 2, cut // 2
        return pad_before, cut_before, src - (cut - cut_before), pad - pad_before

    left, x0, x1, right = axis(w, size.width)
    top, y0, y1, bottom = axis(h, size.height)
    # Pads are reported as negative when the canvas cuts into the image (the reference's convention).
    pad_l, pad_r = (left, right) if size.width > w else (-x0, -(w - x1))
    pad_t, pad_b = (top, bottom) if size.height > h else (-y0, -(h - y1))
    canvas = Canvas(size, (x0, y0, x1, y1), ImageSize(x1 - x0, y1 - y0), (left, top), 0)
    return canvas, (pad_l, pad_t, pad_r, pad_b)


def plan_image(
    config: ModelConfig,
    source_size: ImageSize | tuple[int, int],
    target: ImageSize,
    overrides: Overrides | None = None,
    input_color_format: str = "bgr",
    stretch_only: bool = False,
) -> ImagePlan:
    """The plan for one image of `source_size` (width, height) going to `target`.

    `stretch_only` plans the float-tensor semantics: one resize straight to the target whatever the
    resize mode (the reference never replays the dataset-version step for float tensors).

    >>> cfg = ModelConfig.from_dict({"network_input": {"training_input_size": {"width": 560, "height": 560}}})
    >>> plan_image(cfg, ImageSize(1920, 1080), ImageSize(560, 560)).metadata.scale_width
    0.2916666666666667
    """
    overrides = overrides or Overrides()
    width, height = source_size
    crop_box = _crop_box(config, width, height, overrides)
    x0, y0, x1, y1 = crop_box
    crop_w, crop_h = x1 - x0, y1 - y0
    if crop_w < 1 or crop_h < 1:
        raise ValueError(f"static crop of a {width}x{height} image leaves no pixels (crop box {crop_box})")
    offset = StaticCropOffset(x0, y0, crop_w, crop_h)
    original = ImageSize(width, height)
    after_pre = ImageSize(crop_w, crop_h)

    canvas = None
    if config.two_step and not stretch_only:
        if config.resize_mode is ResizeMode.CENTER_CROP:
            canvas, pads = _center_crop(config, crop_w, crop_h)
            scale_w = scale_h = 1.0
        else:  # letterbox and letterbox-reflect-edges (no reflection is done, as in the reference)
            canvas, scale, pads = _letterbox(config, crop_w, crop_h)
            scale_w = scale_h = scale
        metadata = PreprocessMetadata(
            *pads, original, after_pre, target, scale_w, scale_h, offset,
            nonsquare_intermediate_size=canvas.size,
        )
        resize_from = canvas.size
    else:
        metadata = PreprocessMetadata(
            0, 0, 0, 0, original, after_pre, target, target.width / crop_w, target.height / crop_h, offset
        )
        resize_from = after_pre

    return ImagePlan(
        crop_box=crop_box,
        grayscale=config.grayscale and not overrides.disable_grayscale,
        contrast=None if overrides.disable_contrast else config.contrast,
        canvas=canvas,
        resize_from=resize_from,
        target=target,
        resize_filter=config.resize_filter,
        swap_channels=input_color_format != config.color_mode,
        metadata=metadata,
    )
