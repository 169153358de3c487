"""rfpipe.io.decode: frames equal OpenCV's imdecode (the inference server's decode), header limits, clear errors."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
from conftest import jpeg_with_orientation
from PIL import Image

from rfpipe.io.decode import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
    decode_image,
    read_header,
)


@pytest.fixture(scope="module")
def photo(photos) -> np.ndarray:
    return photos["chelsea"]


def _cv2_encoded(image: np.ndarray, ext: str, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def _pillow_encoded(image: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image[..., ::-1]).save(out, fmt, **options)
    return out.getvalue()


ENCODINGS = {
    "jpeg": lambda im: _cv2_encoded(im, ".jpg"),
    "jpeg-progressive": lambda im: _cv2_encoded(im, ".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    "jpeg-pillow-exif": lambda im: _pillow_encoded(im, "JPEG", exif=Image.Exif()),
    "png": lambda im: _cv2_encoded(im, ".png"),
    "png-gray16": lambda im: _cv2_encoded((cv2.cvtColor(im, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257), ".png"),
    "png-rgba": lambda im: _pillow_encoded(np.dstack([im, im[..., :1]]), "PNG"),
    "bmp": lambda im: _cv2_encoded(im, ".bmp"),
    "bmp-top-down": lambda im: _bmp_top_down(im),
    "webp-lossy": lambda im: _pillow_encoded(im, "WEBP", quality=80),
    "webp-lossless": lambda im: _pillow_encoded(im, "WEBP", lossless=True),
    "webp-extended": lambda im: _pillow_encoded(im, "WEBP", quality=80, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"),
    "tiff-le": lambda im: _cv2_encoded(im, ".tiff"),
    "tiff-pillow": lambda im: _pillow_encoded(im, "TIFF"),
}


def _bmp_top_down(image: np.ndarray) -> bytes:
    data = bytearray(_cv2_encoded(image, ".bmp"))
    height = struct.unpack_from("<i", data, 22)[0]
    row = (image.shape[1] * 3 + 3) & ~3
    offset = struct.unpack_from("<I", data, 10)[0]
    rows = [bytes(data[offset + r * row: offset + (r + 1) * row]) for r in range(height)]
    struct.pack_into("<i", data, 22, -height)
    data[offset:] = b"".join(reversed(rows))
    return bytes(data)


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_frames_equal_opencv_imdecode(photo, name):
    data = ENCODINGS[name](photo)
    frame = decode_image(data)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert np.array_equal(frame, expected)
    header = read_header(data)
    assert (header.width, header.height) == (photo.shape[1], photo.shape[0])


def test_big_endian_tiff_header_is_read():
    # Neither OpenCV nor Pillow writes big-endian TIFF: a hand-made header, one IFD with LONG and SHORT sizes
    ifd = struct.pack(">H", 2) + struct.pack(">HHII", 256, 4, 1, 70000) + struct.pack(">HHII", 257, 3, 1, 3 << 16)
    data = b"MM\x00*" + struct.pack(">I", 8) + ifd + b"\x00\x00\x00\x00"
    assert read_header(data)[1:] == (70000, 3)


def test_os2_bmp_header_is_read():
    data = b"BM" + b"\x00" * 12 + struct.pack("<IHHHH", 12, 640, 480, 1, 24)
    assert read_header(data)[1:] == (640, 480)


def test_exif_orientation_is_applied_unless_disabled(photo):
    data = jpeg_with_orientation(photo, 6)  # 6: rotate 90 degrees clockwise to display
    upright = decode_image(data)
    raw = decode_image(data, auto_orient=False)
    assert raw.shape == photo.shape
    assert upright.shape == (photo.shape[1], photo.shape[0], 3)
    assert np.array_equal(upright, cv2.rotate(raw, cv2.ROTATE_90_CLOCKWISE))
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    assert np.array_equal(raw, cv2.imdecode(np.frombuffer(data, np.uint8), flags))


@pytest.mark.parametrize("fmt", ["jpeg", "png", "bmp", "webp-lossless", "tiff-le"])
def test_truncated_images_are_corrupt_errors(photo, fmt):
    data = ENCODINGS[fmt](photo)
    for cut in (len(data) // 2, 40, 20):
        with pytest.raises((CorruptImageError, EmptyImageError)) as info:
            decode_image(data[:cut])
        assert "truncated" in str(info.value) or "corrupt" in str(info.value)


def test_corrupt_jpeg_body_is_an_error(photo):
    data = bytearray(ENCODINGS["jpeg"](photo))
    data[200:] = b"\x00" * (len(data) - 200)
    with pytest.raises(CorruptImageError, match="corrupt or truncated"):
        decode_image(bytes(data))


def test_empty_and_unsupported_inputs_name_the_problem():
    with pytest.raises(EmptyImageError, match="no bytes"):
        decode_image(b"")
    with pytest.raises(UnsupportedFormatError, match="supported: JPEG, PNG, BMP, WebP, TIFF"):
        decode_image(b"GIF89a\x01\x00\x01\x00")
    with pytest.raises(UnsupportedFormatError, match="BigTIFF"):
        decode_image(b"II+\x00" + b"\x00" * 12)
    with pytest.raises(UnsupportedFormatError):
        decode_image(b"P6\n1 1\n255\n\x00\x00\x00")  # PPM decodes in OpenCV, but is not accepted


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00\x00\x00\x00"


def test_decompression_bombs_are_refused_from_the_header():
    # 100000 x 100000 declared in 33 bytes: refused without allocating anything
    with pytest.raises(ImageTooLargeError, match="100000x100000"):
        decode_image(_png_header(100_000, 100_000))
    with pytest.raises(EmptyImageError, match="zero-size"):
        decode_image(_png_header(0, 10))


def test_real_bomb_png_is_refused_before_decoding():
    # A real, valid 10000 x 10000 PNG (100 MP of zeros) compresses to ~100 kB.
    image = np.zeros((10000, 10000), np.uint8)
    data = _cv2_encoded(image, ".png", (cv2.IMWRITE_PNG_COMPRESSION, 9))
    assert len(data) < 500_000
    with pytest.raises(ImageTooLargeError, match="limit is 40000000"):
        decode_image(data)


def test_pixel_limit_is_configurable(photo):
    data = ENCODINGS["jpeg"](photo)
    pixels = photo.shape[0] * photo.shape[1]
    assert decode_image(data, max_pixels=pixels).shape == photo.shape
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=pixels - 1)


@pytest.mark.parametrize("fmt", ["jpeg", "webp-lossy", "webp-lossless", "webp-extended", "bmp", "tiff-le"])
def test_each_format_header_is_checked_against_the_limit(photo, fmt):
    with pytest.raises(ImageTooLargeError):
        decode_image(ENCODINGS[fmt](photo), max_pixels=100)


def test_jpeg_without_frame_header_is_corrupt():
    with pytest.raises(CorruptImageError, match="no frame header"):
        decode_image(b"\xff\xd8\xff\xda\x00\x02" + b"\x00" * 10)
