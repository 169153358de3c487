"""Grayscale and contrast: the reference chain's image adjustments, run on the CPU.

These are the reference operations themselves (OpenCV, scikit-image). The exact fast paths call
them too where no faster exact equivalent exists, so there is one definition of each step.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage import exposure

from rfpipe.config import ContrastType


def grayscale(image: np.ndarray, color_format: str) -> np.ndarray:
    """OpenCV's fixed-point BGR2GRAY (RGB2GRAY for rgb input), repeated to 3 channels."""
    code = cv2.COLOR_BGR2GRAY if color_format == "bgr" else cv2.COLOR_RGB2GRAY
    gray = cv2.cvtColor(_cv2_compatible(image), code)
    return np.stack([gray] * 3, axis=2)


def gray_plane(image: np.ndarray, color_format: str) -> np.ndarray:
    """The single gray plane of `grayscale` (what the fast paths resize once instead of thrice)."""
    code = cv2.COLOR_BGR2GRAY if color_format == "bgr" else cv2.COLOR_RGB2GRAY
    return cv2.cvtColor(_cv2_compatible(image), code)


def _adaptive_equalization(image: np.ndarray) -> np.ndarray:
    adapted = exposure.equalize_adapthist(image.astype(np.float32) / 255, clip_limit=0.03) * 255
    return adapted.astype(np.uint8)


def _contrast_stretching(image: np.ndarray) -> np.ndarray:
    low = np.percentile(image, 2)
    high = np.percentile(image, 98)
    return exposure.rescale_intensity(image, in_range=(low, high))


def _histogram_equalization(image: np.ndarray) -> np.ndarray:
    equalized = exposure.equalize_hist(image.astype(np.float32) / 255) * 255
    return equalized.astype(np.uint8)


CONTRAST = {
    ContrastType.ADAPTIVE_EQUALIZATION: _adaptive_equalization,
    ContrastType.CONTRAST_STRETCHING: _contrast_stretching,
    ContrastType.HISTOGRAM_EQUALIZATION: _histogram_equalization,
}


def contrast(image: np.ndarray, kind: ContrastType) -> np.ndarray:
    """The package's contrast step on a uint8 HWC image (scikit-image, as the reference runs it)."""
    return CONTRAST[kind](image)


def _cv2_compatible(image: np.ndarray) -> np.ndarray:
    # OpenCV needs positive strides with contiguous pixels; crops (row-strided views) pass as they are.
    if image.strides[0] < 0 or image.strides[1] != image.shape[2] or image.strides[2] != 1:
        return np.ascontiguousarray(image)
    return image
