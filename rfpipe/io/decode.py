"""Encoded image bytes -> BGR uint8 frames, decoded exactly as the inference server decodes them.

The pixels come from OpenCV's `imdecode` with `IMREAD_COLOR` (EXIF orientation applied unless
disabled, as the inference server does), so a frame here is byte-identical to the frame the
reference pipeline sees. Before any pixel is decoded, the image's declared size is read from its
header and checked against a pixel limit: a few kilobytes of PNG or JPEG can declare gigapixels
(decompression bombs). Only JPEG, PNG, BMP, WebP and TIFF are accepted; for each of them the size
is read by a small parser below, so no format reaches the decoder without passing the limit.
`exif_orientation` reads a JPEG's orientation as OpenCV reads it, for decoders that must apply it
themselves (`rfpipe.io.gpu`).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from typing import NamedTuple

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "CorruptImageError",
    "DecodeError",
    "EmptyImageError",
    "ImageHeader",
    "ImageTooLargeError",
    "UnsupportedFormatError",
    "checked_header",
    "decode_image",
    "exif_orientation",
    "jpeg_components",
    "read_header",
]

# 40 megapixels: an 8K frame (33 MP) passes; a decoded image at the limit is 120 MB of BGR.
DEFAULT_MAX_PIXELS = 40_000_000
# OpenCV's own ceiling (CV_IO_MAX_IMAGE_PIXELS): what local tools (predict, bench) allow.
OPENCV_MAX_PIXELS = 1 << 30
SUPPORTED_FORMATS = ("jpeg", "png", "bmp", "webp", "tiff")


class DecodeError(ValueError):
    """Bytes that cannot become a frame; the message names the problem."""


class EmptyImageError(DecodeError):
    """No bytes, or an image declaring zero width or height."""


class UnsupportedFormatError(DecodeError):
    """Bytes that are not one of SUPPORTED_FORMATS."""


class ImageTooLargeError(DecodeError):
    """The header declares more pixels than allowed."""


class CorruptImageError(DecodeError):
    """A recognised format whose data is corrupt or truncated."""


class ImageHeader(NamedTuple):
    format: str
    width: int
    height: int


def _truncated(fmt: str, what: str) -> CorruptImageError:
    return CorruptImageError(f"truncated {fmt.upper()} data: it ends before its {what}")


# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: markers without a length field


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, payload start, payload length) of each marker segment after SOI, up to and
    including the first start of scan or end of image (yielded with length 0); ends early where the
    data ends. Raises CorruptImageError where the data is not a marker sequence."""
    pos, n = 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:
            raise CorruptImageError(f"corrupt JPEG data: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: the headers end here
            yield marker, pos + 2, 0
            return
        if pos + 4 > n:
            return
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            raise CorruptImageError(f"corrupt JPEG data: segment length {length} at byte {pos}")
        yield marker, pos + 4, length - 2
        pos += 2 + length


def _jpeg_frame_header(data: bytes) -> int:
    """Where the frame header's fields start: precision (1 byte), height, width (2 each), components."""
    for marker, start, _ in _jpeg_segments(data):
        if marker in (0xD9, 0xDA):
            raise CorruptImageError("corrupt JPEG data: no frame header before the image data")
        if marker in _JPEG_SOF:
            if start + 5 > len(data):
                break
            return start
    raise _truncated("jpeg", "frame header")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    height, width = struct.unpack_from(">HH", data, _jpeg_frame_header(data) + 1)
    return width, height


def jpeg_components(data: bytes | bytearray | memoryview) -> int:
    """Colour components a JPEG's frame header declares: 1 (grey), 3 (YCbCr or RGB), 4 (CMYK or YCCK).

    >>> jpeg_components(open("photo.jpg", "rb").read())  # file  # doctest: +SKIP
    3
    """
    data = bytes(data)
    at = _jpeg_frame_header(data) + 5
    if at >= len(data):
        raise _truncated("jpeg", "frame header")
    return data[at]


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24:
        raise _truncated("png", "header chunk")
    if data[12:16] != b"IHDR":
        raise CorruptImageError("corrupt PNG data: the first chunk is not IHDR")
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise _truncated("bmp", "header")
    (dib_size,) = struct.unpack_from("<I", data, 14)
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
        return width, height
    width, height = struct.unpack_from("<ii", data, 18)
    if width < 0:
        raise CorruptImageError(f"corrupt BMP data: negative width {width}")
    return width, abs(height)  # a negative height means rows stored top-down


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise _truncated("webp", "header")
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas size minus one
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 ":  # lossy: key frame start code, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            raise CorruptImageError("corrupt WebP data: missing the VP8 key frame start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature byte, then 14-bit sizes minus one
        if data[20] != 0x2F:
            raise CorruptImageError("corrupt WebP data: bad VP8L signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    raise CorruptImageError(f"corrupt WebP data: unknown first chunk {chunk!r}")


def _tiff_size(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise _truncated("tiff", "header")
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        raise _truncated("tiff", "first image directory")
    (count,) = struct.unpack_from(order + "H", data, ifd)
    found: dict[int, int] = {}
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(data):
            raise _truncated("tiff", "first image directory")
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            if kind == 3:
                (found[tag],) = struct.unpack_from(order + "H", data, entry + 8)
            elif kind == 4:
                (found[tag],) = struct.unpack_from(order + "I", data, entry + 8)
            else:
                raise CorruptImageError(f"corrupt TIFF data: size tag {tag} has field type {kind}")
    if 256 not in found or 257 not in found:
        raise CorruptImageError("corrupt TIFF data: the first image directory has no width or height")
    return found[256], found[257]


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


_SIZE_READERS = {"jpeg": _jpeg_size, "png": _png_size, "bmp": _bmp_size, "webp": _webp_size, "tiff": _tiff_size}


def read_header(data: bytes | bytearray | memoryview) -> ImageHeader:
    """Format and declared size of encoded image bytes, without decoding any pixel.

    >>> read_header(open("photo.jpg", "rb").read())  # file  # doctest: +SKIP
    ImageHeader(format='jpeg', width=1920, height=1080)
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        raise EmptyImageError("empty image: no bytes")
    fmt = _sniff(data)
    try:
        width, height = _SIZE_READERS[fmt](data)
    except (struct.error, IndexError) as error:  # a field cut off by the end of the data
        raise _truncated(fmt, "header") from error
    return ImageHeader(fmt, width, height)


def _check_size(header: ImageHeader, max_pixels: int) -> None:
    if header.width == 0 or header.height == 0:
        raise EmptyImageError(f"zero-size image: {header.format.upper()} declares {header.width}x{header.height} pixels")
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"image too large: {header.format.upper()} declares {header.width}x{header.height} = "
            f"{pixels} pixels, the limit is {max_pixels}"
        )


def checked_header(data: bytes | bytearray | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """`read_header`, then the pixel limit: what every decoder checks before decoding a pixel.

    >>> checked_header(open("photo.jpg", "rb").read(), max_pixels=40_000_000)  # file  # doctest: +SKIP
    ImageHeader(format='jpeg', width=1920, height=1080)
    """
    header = read_header(data)
    _check_size(header, max_pixels)
    return header


# OpenCV's EXIF reader (imgcodecs exif.cpp) also reads these IFD0 tags, and a value that lies
# outside the EXIF block aborts its parse: an Orientation entry after such a tag is never seen.
_EXIF_ORIENTATION = 0x0112
_EXIF_SHORT_TAGS = frozenset({0x0128, 0x0213})  # resolution unit, YCbCr positioning: a SHORT in the entry
_EXIF_STRING_TAGS = frozenset({0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x8298})  # description .. copyright
_EXIF_RATIONAL_TAGS = {0x011A: 1, 0x011B: 1, 0x013E: 2, 0x013F: 6, 0x0211: 3, 0x0214: 6}  # tag: rationals read
_JPEG_APP1 = 0xE1
_EXIF_HEADER_BYTES = 6  # "Exif\0\0", skipped unread


def exif_orientation(data: bytes | bytearray | memoryview) -> int:
    """The EXIF orientation (1..8) that OpenCV's `imdecode` applies to these JPEG bytes; 1 if none.

    Read the way the installed OpenCV reads it (both checked against cv2 in tests/test_gpu_decode.py).
    OpenCV 4: the first APP1 segment before the scan, whatever its identifier, is a TIFF block after
    its first 6 bytes. OpenCV 5: the APP1 segments whose identifier is `Exif\0\0`, in order, until
    one has an Orientation entry. In the block: little-endian when it starts with `II`, else
    big-endian; the first Orientation entry of IFD0 is a 16-bit value at byte 8 of the entry,
    whatever type it declares. Values outside 1..8 mean 1; so do (OpenCV 4) a block that ends before
    the entry or a tag OpenCV reads whose value lies outside the block (before the Orientation entry).
    Raises CorruptImageError where the headers are not a JPEG marker sequence.

    >>> exif_orientation(open("phone_photo.jpg", "rb").read())  # file  # doctest: +SKIP
    6
    """
    data = bytes(data)
    every_exif_segment = _opencv_major() >= 5
    for marker, start, length in _jpeg_segments(data):
        if marker != _JPEG_APP1:
            continue
        block = data[start + _EXIF_HEADER_BYTES : start + length]
        if not every_exif_segment:
            return _tiff_orientation(block) or 1
        if data[start : start + _EXIF_HEADER_BYTES] == b"Exif\0\0" and (found := _tiff_orientation(block)):
            return found
    return 1


@functools.cache
def _opencv_major() -> int:
    return int(cv2.__version__.split(".")[0])


def _tiff_orientation(block: bytes) -> int | None:
    """The block's orientation (1 for values outside 1..8), or None where it has none OpenCV can read."""
    order = "<" if block[:2] == b"II" else ">"

    def read(fmt: str, at: int) -> int:  # struct.error past the end of the block
        return struct.unpack_from(order + fmt, block, at)[0]

    try:
        if read("H", 2) != 42:
            return None
        ifd = read("I", 4)
        for entry in range(ifd + 2, ifd + 2 + 12 * read("H", ifd), 12):
            tag = read("H", entry)
            if tag == _EXIF_ORIENTATION:
                value = read("H", entry + 8)
                return value if 1 <= value <= 8 else 1
            if tag in _EXIF_SHORT_TAGS:
                read("H", entry + 8)
            elif tag in _EXIF_STRING_TAGS:
                size = read("I", entry + 4)
                at = 8 if size <= 4 else read("I", entry + 8)  # OpenCV's offset for short strings: 8 from the block start
                if at + size > len(block):
                    return None
            elif tag in _EXIF_RATIONAL_TAGS:
                read("I", read("I", entry + 8) + 8 * _EXIF_RATIONAL_TAGS[tag] - 4)
    except struct.error:
        return None
    return None


def decode_image(
    data: bytes | bytearray | memoryview, auto_orient: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode one encoded image to a BGR uint8 HWC frame, after checking its header against `max_pixels`.

    EXIF orientation is applied unless `auto_orient=False` (the inference server's
    `disable_preproc_auto_orient`). Raises a `DecodeError` subclass naming the problem.

    >>> frame = decode_image(open("photo.jpg", "rb").read())  # file  # doctest: +SKIP
    >>> frame.shape, frame.dtype  # file  # doctest: +SKIP
    ((1080, 1920, 3), dtype('uint8'))
    """
    header = checked_header(data, max_pixels)
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
    return frame
