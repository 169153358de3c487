"""Encoded image bytes -> BGR uint8 frames, decoded exactly as the inference server decodes them.

The pixels come from OpenCV's `imdecode` with `IMREAD_COLOR` (EXIF orientation applied unless
disabled, as the inference server does), so a frame here is byte-identical to the frame the
reference pipeline sees. Before any pixel is decoded, the header's declared size is checked against
a pixel limit (rfpipe.io.header). The errors (rfpipe.io.errors), the header names and
`exif_orientation` (rfpipe.io.exif) are importable from here too.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from rfpipe.io.errors import (
    CorruptImageError,
    DecodeError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
)
from rfpipe.io.exif import exif_orientation
from rfpipe.io.header import (
    DEFAULT_MAX_PIXELS,
    OPENCV_MAX_PIXELS,
    SUPPORTED_FORMATS,
    ImageHeader,
    checked_header,
    jpeg_components,
    read_header,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "OPENCV_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "CorruptImageError",
    "DecodeError",
    "DecodedImage",
    "EmptyImageError",
    "ImageHeader",
    "ImageTooLargeError",
    "UnsupportedFormatError",
    "checked_header",
    "decode",
    "decode_image",
    "exif_orientation",
    "jpeg_components",
    "read_header",
]


class DecodedImage(NamedTuple):
    """A decoded frame and the header it was checked by (its format names the decoder's input)."""

    frame: np.ndarray
    header: ImageHeader


def decode(
    data: bytes | bytearray | memoryview, *, auto_orient: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """`decode_image`, also returning the header read before decoding (format and declared size).

    >>> png = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    >>> decoded = decode(png)
    >>> decoded.header.format, decoded.frame.shape
    ('png', (48, 64, 3))
    """
    header = checked_header(data, max_pixels=max_pixels)
    flags = cv2.IMREAD_COLOR if auto_orient else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as error:  # some decoders raise instead of returning nothing
        raise CorruptImageError(f"corrupt {header.format.upper()} data: {str(error).strip()}") from error
    if frame is None or frame.size == 0:
        raise CorruptImageError(
            f"could not decode the {header.format.upper()} image ({header.width}x{header.height} declared): "
            "the data is corrupt or truncated"
        )
    if frame.shape[0] * frame.shape[1] > max_pixels:  # the decoder disagreed with the header
        raise ImageTooLargeError(f"image too large: decoded to {frame.shape[1]}x{frame.shape[0]} pixels, the limit is {max_pixels}")
    return DecodedImage(frame, header)


def decode_image(
    data: bytes | bytearray | memoryview, *, auto_orient: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode one encoded image to a BGR uint8 HWC frame, after checking its header against `max_pixels`.

    EXIF orientation is applied unless `auto_orient=False` (the inference server's
    `disable_preproc_auto_orient`). Raises a `DecodeError` subclass naming the problem.

    >>> frame = decode_image(cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes())
    >>> frame.shape, frame.dtype
    ((48, 64, 3), dtype('uint8'))
    >>> decode_image(b"GIF89a")
    Traceback (most recent call last):
    ...
    rfpipe.io.errors.UnsupportedFormatError: unsupported image format (first bytes: 47 49 46 38 39 61); supported: JPEG, PNG, BMP, WebP, TIFF
    """
    return decode(data, auto_orient=auto_orient, max_pixels=max_pixels).frame
