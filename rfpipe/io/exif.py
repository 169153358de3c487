"""EXIF orientation of JPEG bytes exactly as the installed OpenCV's `imdecode` reads it.

Hand-written on purpose: a frame decoded elsewhere (nvJPEG, rfpipe.io.gpu) must be turned the way
OpenCV turns it, including where OpenCV's reader stops early on malformed EXIF, and OpenCV 4 and 5
read different segments. A general EXIF library would read more files, and so differ.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator

import cv2

from rfpipe.io.errors import CorruptImageError

__all__ = ["exif_orientation"]

_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: markers without a length field
_JPEG_APP1 = 0xE1

# OpenCV's EXIF reader (imgcodecs exif.cpp) also reads these IFD0 tags, and a value that lies
# outside the EXIF block aborts its parse: an Orientation entry after such a tag is never seen.
_EXIF_ORIENTATION = 0x0112
_EXIF_SHORT_TAGS = frozenset({0x0128, 0x0213})  # resolution unit, YCbCr positioning: a SHORT in the entry
_EXIF_STRING_TAGS = frozenset({0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x8298})  # description .. copyright
_EXIF_RATIONAL_TAGS = {0x011A: 1, 0x011B: 1, 0x013E: 2, 0x013F: 6, 0x0211: 3, 0x0214: 6}  # tag: rationals read
_EXIF_HEADER_BYTES = 6  # "Exif\0\0", skipped unread


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

    >>> import cv2, numpy as np
    >>> exif_orientation(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())  # no EXIF
    1
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
