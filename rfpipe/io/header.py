"""Format and declared size of encoded image bytes, read before any pixel is decoded.

A few kilobytes of PNG or JPEG can declare gigapixels (decompression bombs), so every decoder
checks the declared size against a pixel limit first (`checked_header`). Only JPEG, PNG, BMP, WebP
and TIFF are accepted; the format is told by its leading bytes and the size is read by Pillow's
lazy `open` (its plugin for that one format: it reads the header, never the pixel data).

Where Pillow and OpenCV disagree on a file, the answer is still a `DecodeError` naming the problem
before anything large is decoded (tests/test_decode.py lists the disagreements seen): Pillow refuses
a few files OpenCV reads (BMP headers of non-standard sizes, TIFF compressions it does not know,
PNG with a bad checksum in an ancillary chunk), and reads files OpenCV then refuses.
"""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple

from PIL import (
    BmpImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from rfpipe.io.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "OPENCV_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "ImageHeader",
    "checked_header",
    "checked_jpeg_header",
    "jpeg_components",
    "read_header",
]

# 40 megapixels: an 8K frame (33 MP) passes; a decoded image at the limit is 120 MB of BGR.
DEFAULT_MAX_PIXELS = 40_000_000
# OpenCV's own ceiling (CV_IO_MAX_IMAGE_PIXELS): what local tools (predict, bench) allow.
OPENCV_MAX_PIXELS = 1 << 30
SUPPORTED_FORMATS = ("jpeg", "png", "bmp", "webp", "tiff")



class _ZeroSize(Exception):
    def __init__(self, size: tuple[int, int]):
        self.size = size


def _header_reader(plugin: type[Image.Image]) -> type[Image.Image]:
    """Pillow's plugin for one format, reporting a zero width or height as such (Pillow itself
    says only "not identified by this driver")."""

    class HeaderReader(plugin):  # type: ignore[misc, valid-type]
        def _open(self) -> None:
            super()._open()
            if self.mode and (self.size[0] <= 0 or self.size[1] <= 0):
                raise _ZeroSize(self.size)

    return HeaderReader


# The plugin classes are constructed directly: `Image.open` would try other formats too and apply
# Pillow's own decompression-bomb limit (~179 MP), below OPENCV_MAX_PIXELS.
_PILLOW_READERS: dict[str, type[Image.Image]] = {
    fmt: _header_reader(plugin)
    for fmt, plugin in {
        "jpeg": JpegImagePlugin.JpegImageFile,
        "png": PngImagePlugin.PngImageFile,
        "bmp": BmpImagePlugin.BmpImageFile,
        "webp": WebPImagePlugin.WebPImageFile,
        "tiff": TiffImagePlugin.TiffImageFile,
    }.items()
}
# What Pillow's JPEG modes hold: colour components in the frame header.
_JPEG_MODE_COMPONENTS = {"L": 1, "RGB": 3, "YCbCr": 3, "CMYK": 4}


class ImageHeader(NamedTuple):
    format: str
    width: int
    height: int


def _sniff(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        raise UnsupportedFormatError("unsupported image format: BigTIFF (classic TIFF is supported)")
    shown = data[:8].hex(" ")
    raise UnsupportedFormatError(
        f"unsupported image format (first bytes: {shown}); supported: JPEG, PNG, BMP, WebP, TIFF"
    )


def _open_lazily(data: bytes, fmt: str) -> Image.Image:
    """Pillow's image for `data` with only its header read; a DecodeError where Pillow refuses it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd but readable headers (TIFF tags, ...)
            return _PILLOW_READERS[fmt](io.BytesIO(data))
    except _ZeroSize as error:
        width, height = error.size
        raise EmptyImageError(f"zero-size image: {fmt.upper()} declares {width}x{height} pixels") from None
    except (SyntaxError, OSError, ValueError, IndexError, KeyError, EOFError) as error:
        # Pillow raises SyntaxError for any header it cannot read, with the reason as its message.
        reason = str(error).strip() or type(error).__name__
        if isinstance(error, EOFError) or "buffer" in reason or "index out of range" in reason:
            reason = "the data ends before the header does"
        elif reason == "not identified by this driver":
            reason = "it declares no image size or colour layout"
        raise CorruptImageError(f"corrupt or truncated {fmt.upper()} header: {reason}") from error


def _read(data: bytes | bytearray | memoryview) -> tuple[ImageHeader, Image.Image]:
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        raise EmptyImageError("empty image: no bytes")
    fmt = _sniff(data)
    image = _open_lazily(data, fmt)
    width, height = image.size
    return ImageHeader(fmt, width, height), image


def read_header(data: bytes | bytearray | memoryview) -> ImageHeader:
    """Format and declared size of encoded image bytes, without decoding any pixel.

    Raises EmptyImageError (no bytes), UnsupportedFormatError or CorruptImageError.

    >>> import cv2, numpy as np
    >>> read_header(cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))[1].tobytes())
    ImageHeader(format='png', width=64, height=48)
    """
    return _read(data)[0]


def _check_size(header: ImageHeader, max_pixels: int) -> None:
    if header.width == 0 or header.height == 0:
        raise EmptyImageError(f"zero-size image: {header.format.upper()} declares {header.width}x{header.height} pixels")
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"image too large: {header.format.upper()} declares {header.width}x{header.height} = "
            f"{pixels} pixels, the limit is {max_pixels}"
        )


def checked_header(data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """`read_header`, then the pixel limit: what every decoder checks before decoding a pixel.

    >>> import cv2, numpy as np
    >>> png = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    >>> checked_header(png, max_pixels=1000)
    Traceback (most recent call last):
    ...
    rfpipe.io.errors.ImageTooLargeError: image too large: PNG declares 64x48 = 3072 pixels, the limit is 1000
    """
    header = read_header(data)
    _check_size(header, max_pixels)
    return header


def checked_jpeg_header(data: bytes | bytearray | memoryview, *,
                        max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageHeader, int | None]:
    """`checked_header`, and the colour components of a JPEG (as `jpeg_components`; None for other
    formats), from one read of the header: what the device decoders check per image.

    >>> import cv2, numpy as np
    >>> checked_jpeg_header(cv2.imencode(".jpg", np.zeros((8, 16), np.uint8))[1].tobytes())
    (ImageHeader(format='jpeg', width=16, height=8), 1)
    """
    header, image = _read(data)
    _check_size(header, max_pixels)
    return header, _JPEG_MODE_COMPONENTS[image.mode] if header.format == "jpeg" else None


def jpeg_components(data: bytes | bytearray | memoryview) -> int:
    """Colour components a JPEG's frame header declares: 1 (grey), 3 (YCbCr or RGB), 4 (CMYK or YCCK).

    >>> import cv2, numpy as np
    >>> jpeg_components(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes())
    1
    """
    data = bytes(data)
    if _sniff(data) != "jpeg":
        raise UnsupportedFormatError("not JPEG data")
    return _JPEG_MODE_COMPONENTS[_open_lazily(data, "jpeg").mode]
