"""rfpipe.io.decode: frames equal OpenCV's imdecode (the inference server's decode), header limits, clear errors."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from conftest import jpeg_with_orientation
from PIL import Image

from rfpipe.io.decode import (
    CorruptImageError,
    DecodeError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
    decode_image,
    read_header,
)
from rfpipe.server.errors import from_decode_error


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


def _big_endian_tiff(width: int, height: int) -> bytes:
    """An uncompressed 8-bit grey TIFF in big-endian order (neither OpenCV nor Pillow writes one):
    the width as a LONG, the height as a SHORT."""
    tags = [(256, 4, width), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, None),
            (277, 3, 1), (278, 3, height), (279, 4, width * height)]
    pixels_at = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack(">H", len(tags))
    for tag, kind, value in tags:
        value = pixels_at if value is None else value
        ifd += struct.pack(">HHI", tag, kind, 1) + (struct.pack(">HH", value, 0) if kind == 3 else struct.pack(">I", value))
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + b"\x00" * 4 + bytes(range(width * height))


def _os2_bmp(width: int, height: int) -> bytes:
    """A 24-bit BMP with the 12-byte OS/2 header (16-bit sizes)."""
    pixels = bytes(((width * 3 + 3) & ~3) * height)
    header = struct.pack("<IHHHH", 12, width, height, 1, 24)
    return b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26) + header + pixels


@pytest.mark.parametrize("data", [_big_endian_tiff(5, 3), _os2_bmp(5, 3)], ids=["tiff-big-endian", "bmp-os2"])
def test_rare_header_layouts_are_read_and_decoded(data):
    assert read_header(data)[1:] == (5, 3)
    assert np.array_equal(decode_image(data), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


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


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixel data (an empty IDAT)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"") + _png_chunk(b"IEND", b"")


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


@pytest.mark.parametrize("fmt", sorted(ENCODINGS))
def test_the_one_read_jpeg_header_equals_the_header_and_components_read_apart(photo, fmt):
    from rfpipe.io.header import checked_header, checked_jpeg_header, jpeg_components

    variants = [ENCODINGS[fmt](photo)]
    if fmt == "jpeg":
        variants += [cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))[1].tobytes(),
                     _cmyk_jpeg(photo)]
    for data in variants:
        header, components = checked_jpeg_header(data)
        assert header == checked_header(data)
        assert components == (jpeg_components(data) if header.format == "jpeg" else None)
    with pytest.raises(ImageTooLargeError):
        checked_jpeg_header(variants[0], max_pixels=100)


def _cmyk_jpeg(photo: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(photo[..., ::-1].copy()).convert("CMYK").save(out, "JPEG")
    return out.getvalue()


def test_jpeg_without_frame_header_is_corrupt():
    with pytest.raises(CorruptImageError, match="declares no image size or colour layout"):
        decode_image(b"\xff\xd8\xff\xda\x00\x02" + b"\x00" * 10)


# -- where Pillow (the header reader) and OpenCV (the decoder) disagree --------------------------
# Each file below is accepted by one and refused by the other (seen with Pillow 12.3 / OpenCV 4.12).
# Whatever the disagreement, the answer is OpenCV's frame or a DecodeError naming the problem, which
# the server answers with a 4xx; and a size is decoded only after that same size passed the limit.

_SMALL = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _jpeg_frame_header_at(data: bytes) -> int:
    return data.index(b"\xff\xc0")


def _two_frame_headers(larger_first: bool) -> bytes:
    data = _cv2_encoded(_SMALL, ".jpg")
    at = _jpeg_frame_header_at(data)
    end = at + 2 + struct.unpack_from(">H", data, at + 2)[0]
    larger = bytearray(data[at:end])
    struct.pack_into(">HH", larger, 5, 4000, 5000)  # height, width
    if larger_first:
        return data[:at] + bytes(larger) + data[at:]
    return data[:end] + bytes(larger) + data[end:]


def _bmp_with_dib_header(size: int) -> bytes:
    """A BMP whose DIB header (40 bytes as OpenCV writes it) is padded or cut to `size` bytes."""
    data = bytearray(_cv2_encoded(_SMALL, ".bmp"))
    fields = (data[18:54] + bytes(max(0, size - 40)))[: size - 4]  # the header after its size field
    padded = data[:14] + struct.pack("<I", size) + fields + data[54:]
    struct.pack_into("<I", padded, 2, len(padded))
    struct.pack_into("<I", padded, 10, struct.unpack_from("<I", data, 10)[0] + size - 40)
    return bytes(padded)


def _tiff_with_compression(code: int) -> bytes:
    data = bytearray(_pillow_encoded(_SMALL, "TIFF"))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0], 12):
        if struct.unpack_from("<H", data, entry)[0] == 259:  # Compression
            struct.pack_into("<H", data, entry + 8, code)
    return bytes(data)


def _png_with_chunk_before_data(kind: bytes, bad_checksum: bool = False) -> bytes:
    data = _cv2_encoded(_SMALL, ".png")
    chunk = _png_chunk(kind, b"a\0b")
    if bad_checksum:
        chunk = chunk[:-4] + b"\0\0\0\0"
    return data[:33] + chunk + data[33:]


def _jpeg_with_junk_before_frame_header() -> bytes:
    data = _cv2_encoded(_SMALL, ".jpg")
    at = _jpeg_frame_header_at(data)
    return data[:at] + b"\x12\x34" + data[at:]  # libjpeg skips stray bytes between segments


# name: (bytes, OpenCV decodes it, rfpipe decodes it, the DecodeError where it does not)
DISAGREEMENTS = {
    # Pillow refuses, OpenCV reads: refused from the header with Pillow's reason.
    "bmp-dib-header-36": (lambda: _bmp_with_dib_header(36), True, False, "Unsupported BMP header type"),
    "bmp-dib-header-100": (lambda: _bmp_with_dib_header(100), True, False, "Unsupported BMP header type"),
    "tiff-jpeg2000-compression": (lambda: _tiff_with_compression(34712), True, False, "TIFF header: 34712"),
    "png-bad-ancillary-checksum": (lambda: _png_with_chunk_before_data(b"tEXt", True), True, False, "bad header checksum"),
    # Pillow reads the header, OpenCV refuses the file: refused by the decode.
    "jpeg-two-frame-headers-larger-first": (lambda: _two_frame_headers(True), False, False, "could not decode the JPEG"),
    "jpeg-two-frame-headers-larger-last": (lambda: _two_frame_headers(False), False, False, "limit is"),
    "png-unknown-critical-chunk": (lambda: _png_with_chunk_before_data(b"ABCD"), False, False, "could not decode the PNG"),
    # Both read it (the hand-written parsers this replaced refused it).
    "jpeg-junk-between-segments": (_jpeg_with_junk_before_frame_header, True, True, None),
}


@pytest.mark.parametrize("name", sorted(DISAGREEMENTS))
def test_header_reader_and_decoder_disagreements_end_in_a_frame_or_a_clear_error(name):
    make, opencv_decodes, decoded, message = DISAGREEMENTS[name]
    data = make()
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert (expected is not None) == opencv_decodes  # the disagreement is still there
    limit = 100_000  # above the 64x48 image, below the 5000x4000 a second frame header declares
    if decoded:
        assert np.array_equal(decode_image(data, max_pixels=limit), expected)
        return
    with pytest.raises(DecodeError, match=message) as info:
        decode_image(data, max_pixels=limit)
    assert from_decode_error(info.value, "image[0]").status in (400, 413, 415)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "bmp", "webp-lossy", "webp-lossless", "webp-extended", "tiff-le"])
def test_the_size_checked_is_the_size_decoded_on_corrupted_headers(fmt):
    """Bytes flipped in the first 80 bytes (where every format keeps its size): OpenCV's frame or a
    DecodeError, and a frame only of the size the header reader reported and the limit passed."""
    rng = np.random.default_rng(7)
    original = ENCODINGS[fmt](_SMALL)
    decoded = refused = 0
    for _ in range(150):
        data = bytearray(original)
        for at in rng.integers(0, min(80, len(data)), int(rng.integers(1, 4))):
            data[at] = int(rng.integers(0, 256))
        data = bytes(data)
        try:
            frame = decode_image(data, auto_orient=False, max_pixels=1 << 24)
        except DecodeError:
            refused += 1
            continue
        decoded += 1
        header = read_header(data)
        assert (frame.shape[1], frame.shape[0]) == (header.width, header.height)
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        assert np.array_equal(frame, cv2.imdecode(np.frombuffer(data, np.uint8), flags))
    assert refused and (decoded or fmt == "png")  # both outcomes seen; PNG's checksums refuse every change
