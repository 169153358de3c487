"""rfpipe.io.gpu and rfpipe.io.decode.exif_orientation: OpenCV's geometry, BGR, limits, CPU fallback.

The device decoder runs here on the CPU (torchvision's libjpeg-turbo) through the same code path
as on CUDA; the nvJPEG tests at the end need a GPU.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import jpeg_with_orientation, make_config
from PIL import Image
from table_apply import run_beside

import rfpipe
from rfpipe.io.decode import (
    CorruptImageError,
    ImageTooLargeError,
    decode_image,
    exif_orientation,
    jpeg_components,
)
from rfpipe.io.gpu import (
    DeviceDecodeDeclined,
    check_device_decoder,
    decode_for_device,
    decode_jpeg_on_device,
    orient,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torchvision")  # torchvision 0.29 points to TorchCodec
needs_cuda = pytest.mark.skipif(  # as tests/test_cuda_gpu.py: compiled Triton kernels, not the interpreter
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1", reason="needs a CUDA GPU")

IGNORE_ORIENTATION = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


@pytest.fixture(scope="module")
def photo(photos) -> np.ndarray:
    return photos["coffee"]  # colourful: a channel swap changes it a lot


def _cv2(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- the orientation reader and transform -----------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_transform_equals_opencv_exactly(photo, orientation):
    data = jpeg_with_orientation(photo, orientation)
    assert exif_orientation(data) == orientation
    stored = torch.from_numpy(_cv2(data, IGNORE_ORIENTATION))
    shown = orient(stored, exif_orientation(data))
    assert torch.equal(shown, torch.from_numpy(_cv2(data)))
    swapped = orient(stored.flip(2), orientation, swap_channels=True)  # RGB in, BGR out
    assert torch.equal(swapped, shown)


def test_no_exif_and_values_outside_1_to_8_mean_1(photo):
    ok, plain = cv2.imencode(".jpg", photo)
    assert exif_orientation(plain.tobytes()) == 1
    for value in (0, 9, 255, 65535):
        data = jpeg_with_orientation(photo[:40, :60], value)
        assert exif_orientation(data) == 1
        assert _cv2(data).shape == (40, 60, 3)  # OpenCV ignores them too


# A tiny noise image: each of the 8 orientations of it is a different array.
_NOISE = np.random.default_rng(7).integers(0, 256, (8, 12, 3), dtype=np.uint8)
_NOISE_JPEG = cv2.imencode(".jpg", _NOISE, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()


def _opencv_orientation(data: bytes) -> int:
    """The orientation OpenCV applied, found by comparing its frame with the 8 orientations of the stored one."""
    shown, stored = _cv2(data), torch.from_numpy(_cv2(data, IGNORE_ORIENTATION))
    matches = [o for o in range(1, 9) if tuple(orient(stored, o).shape) == shown.shape
               and torch.equal(orient(stored, o), torch.from_numpy(shown))]
    assert len(matches) == 1
    return matches[0]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _random_exif(rng: random.Random) -> bytes:
    """A TIFF block mixing well-formed and broken parts of what OpenCV's reader looks at."""
    order = rng.choice(["II", "MM", "II", "MM", "IM", "XX"])  # OpenCV reads all but II big-endian
    o = "<" if order == "II" else ">"
    tags = [rng.choice([0x010F, 0x0132, 0x011A, 0x013F, 0x0214, 0x0128, 0x8769, rng.randint(0, 65535)])
            for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.8:
        tags.insert(rng.randint(0, len(tags)), 0x0112)
    entries = b""
    for tag in tags:
        kind = rng.choice([3, 3, 2, 4, 5, 1, rng.randint(0, 20)])
        size = rng.choice([1, 1, 2, 4, 5, 20, rng.randint(0, 2**32 - 1)])
        if tag == 0x0112 and rng.random() < 0.8:
            value = struct.pack(o + "HH", rng.choice([*range(0, 10), *range(1, 9), 65535]), 0)
        else:  # an offset into the block, past it, or anything
            value = struct.pack(o + "I", rng.choice([rng.randint(0, 120), rng.randint(0, 120), rng.randint(0, 2**32 - 1)]))
        entries += struct.pack(o + "HHI", tag, kind, size) + value
    ifd = rng.choice([8, 8, 8, 8, rng.randint(0, 80), rng.randint(0, 2**32 - 1)])
    magic = rng.choice([42] * 7 + [43])
    block = order.encode() + struct.pack(o + "HIH", magic, ifd, len(tags)) + entries + bytes(rng.randint(0, 80))
    if rng.random() < 0.15:
        block = block[: rng.randint(0, len(block))]
    return block


def orientation_comparison(count: int = 400) -> dict:
    """`exif_orientation` against the installed cv2 on `count` JPEGs with random, often malformed EXIF."""
    rng = random.Random(1234)
    seen, mismatches = set(), []
    for _ in range(count):
        ident = rng.choice([b"Exif\0\0"] * 6 + [b"XMPxmp", b"Exif\0"])  # OpenCV 4 skips 6 bytes unread
        segments = [_segment(0xE1, ident + _random_exif(rng))]
        for _ in range(rng.choice([0] * 6 + [1, 1, 2])):  # XMP or EXIF segments before it: OpenCV 4 reads
            # only the first APP1, OpenCV 5 every `Exif\0\0` one until an Orientation entry
            segments.insert(0, _segment(0xE1, rng.choice([b"http://ns.adobe.com/xap/1.0/\0<x/>",
                                                          b"Exif\0\0" + _random_exif(rng)])))
        at = 2 if rng.random() < 0.5 else 20  # before or after the JFIF APP0 segment
        data = _NOISE_JPEG[:at] + b"".join(segments) + _NOISE_JPEG[at:]
        expected = _opencv_orientation(data)
        if exif_orientation(data) != expected:
            mismatches.append(data[:200].hex())
        seen.add(expected)
    return {"opencv": cv2.__version__, "opencv_file": cv2.__file__, "mismatches": mismatches[:5],
            "mismatch_count": len(mismatches), "seen": sorted(seen)}


def test_orientation_reader_agrees_with_opencv_on_malformed_exif():
    result = orientation_comparison()
    assert result["mismatches"] == [], result
    assert result["seen"] == list(range(1, 9))  # the cases reached every orientation


def test_orientation_reader_agrees_with_opencv_5():
    result = run_beside("RFPIPE_OPENCV5_PATH", "opencv-python-headless==5.0.0.93", __file__)
    assert result["opencv"].startswith("5."), result["opencv"]
    assert result["opencv_file"].startswith(str(Path(os.environ["RFPIPE_OPENCV5_PATH"]).resolve()))
    assert result["mismatches"] == [], result
    assert result["seen"] == list(range(1, 9))


# -- decode_jpeg_on_device on the CPU -------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_cpu_device_decode_has_opencvs_geometry_and_is_bgr(photo, orientation):
    data = jpeg_with_orientation(photo, orientation)
    expected = _cv2(data)
    frame = decode_jpeg_on_device(data, "cpu")
    assert frame.dtype == torch.uint8 and frame.device.type == "cpu"
    assert tuple(frame.shape) == expected.shape
    assert _mean_abs_diff(frame.numpy(), expected) < 1.0
    raw = decode_jpeg_on_device(data, "cpu", auto_orient=False)
    assert tuple(raw.shape) == photo.shape
    assert _mean_abs_diff(raw.numpy(), _cv2(data, IGNORE_ORIENTATION)) < 1.0


def test_swapped_channels_would_be_caught(photo):
    data = jpeg_with_orientation(photo, 1)
    frame = decode_jpeg_on_device(data, "cpu").numpy()
    assert _mean_abs_diff(frame[..., ::-1], _cv2(data)) > 20 * max(_mean_abs_diff(frame, _cv2(data)), 0.5)


def test_pixel_limit_and_bad_bytes(photo):
    data = jpeg_with_orientation(photo, 6)
    pixels = photo.shape[0] * photo.shape[1]
    assert tuple(decode_jpeg_on_device(data, "cpu", max_pixels=pixels).shape) == (photo.shape[1], photo.shape[0], 3)
    with pytest.raises(ImageTooLargeError):
        decode_jpeg_on_device(data, "cpu", max_pixels=pixels - 1)
    with pytest.raises(ImageTooLargeError):
        decode_for_device(data, "cpu", max_pixels=pixels - 1)
    corrupt = bytearray(data)
    corrupt[400:-2] = b"\0" * (len(data) - 402)  # keeps the end-of-image marker: torchvision itself refuses it
    for bad in (data[: len(data) // 2], data[:-2], bytes(corrupt)):
        # declined by the device decoder, or refused already by the header check (cut before the scan)
        with pytest.raises((DeviceDecodeDeclined, CorruptImageError)):
            decode_jpeg_on_device(bad, "cpu")
        with pytest.raises(CorruptImageError):
            decode_for_device(bad, "cpu")


def test_other_formats_and_declined_jpeg_take_the_cpu_decoder(photo):
    png = cv2.imencode(".png", photo)[1].tobytes()
    with pytest.raises(DeviceDecodeDeclined, match="PNG"):
        decode_jpeg_on_device(png, "cpu")
    frame = decode_for_device(png, "cpu")
    assert isinstance(frame, np.ndarray) and np.array_equal(frame, decode_image(png))
    trailing = jpeg_with_orientation(photo, 3) + b"camera trailer"  # OpenCV decodes it; not sent to the device
    frame = decode_for_device(trailing, "cpu")
    assert isinstance(frame, np.ndarray) and np.array_equal(frame, _cv2(trailing))
    assert isinstance(decode_for_device(jpeg_with_orientation(photo, 3), "cpu"), torch.Tensor)


def test_batch_decode_sends_every_jpeg_to_the_device_decoder_and_the_rest_to_opencv(photo):
    # The engine's gpu_decode path (rfpipe.io.pool): JPEG items must reach torchvision's decoder
    # (tensors back); it once sent every item to OpenCV because its header check raised a TypeError.
    from rfpipe.io.errors import DecodeError
    from rfpipe.io.pool import decode_batch_on_device

    jpegs = [jpeg_with_orientation(photo, orientation) for orientation in (1, 6, 3)]
    png = cv2.imencode(".png", photo)[1].tobytes()
    pixels = photo.shape[0] * photo.shape[1]
    items = [*jpegs, png, jpegs[0][: len(jpegs[0]) // 2], b"not an image"]
    results = decode_batch_on_device(items, "cpu")
    for data, frame in zip(jpegs, results[:3], strict=True):
        assert isinstance(frame, torch.Tensor) and tuple(frame.shape) == _cv2(data).shape
        assert _mean_abs_diff(frame.numpy(), _cv2(data)) < 1.0
    assert isinstance(results[3], np.ndarray) and np.array_equal(results[3], decode_image(png))
    assert all(isinstance(error, DecodeError) for error in results[4:])
    limited = decode_batch_on_device(jpegs[:1], "cpu", max_pixels=pixels - 1)
    assert isinstance(limited[0], ImageTooLargeError)


def test_cmyk_and_grey_jpeg(photo):
    grey = cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))[1].tobytes()
    assert jpeg_components(grey) == 1
    frame = decode_jpeg_on_device(grey, "cpu")
    assert tuple(frame.shape) == photo.shape and _mean_abs_diff(frame.numpy(), _cv2(grey)) < 1.0
    out = io.BytesIO()
    Image.fromarray(photo[..., ::-1]).convert("CMYK").save(out, "JPEG", quality=90)
    cmyk = out.getvalue()
    assert jpeg_components(cmyk) == 4 and jpeg_components(jpeg_with_orientation(photo, 1)) == 3
    with pytest.raises(DeviceDecodeDeclined, match="4 colour components"):
        decode_jpeg_on_device(cmyk, "cpu")
    assert np.array_equal(decode_for_device(cmyk, "cpu"), _cv2(cmyk))  # OpenCV's own CMYK conversion


def test_device_decoder_check_passes_on_the_cpu():
    check_device_decoder("cpu")


# -- nvJPEG (GPU only) ---------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("orientation", range(1, 9))
def test_cuda_decode_has_opencvs_geometry_and_small_drift(photos, orientation):
    for name, image in photos.items():
        data = jpeg_with_orientation(image, orientation)
        expected = _cv2(data)
        frame = decode_jpeg_on_device(data, "cuda")
        assert frame.is_cuda and frame.dtype == torch.uint8
        assert tuple(frame.shape) == expected.shape, name
        drift = _mean_abs_diff(frame.cpu().numpy(), expected)
        assert drift < 3.0, (name, drift)  # nvJPEG is not libjpeg-turbo; a wrong geometry or decode is far above this
        if name == "coffee":  # colourful: swapped channels would differ by ~70 on average
            assert _mean_abs_diff(frame.cpu().numpy()[..., ::-1], expected) > 10 * max(drift, 1.0)


@needs_cuda
def test_cuda_decode_is_complete_for_readers_on_other_threads_and_streams(photos):
    data = [jpeg_with_orientation(image, 6) for image in photos.values()]
    expected = [decode_jpeg_on_device(d, "cuda").cpu() for d in data]
    results: dict[int, torch.Tensor] = {}

    def decode(i):
        results[i] = decode_jpeg_on_device(data[i % len(data)], "cuda")

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(4 * len(data))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = torch.cuda.Stream()
    with torch.cuda.stream(reader):  # no event orders this stream after the decoders' streams
        copies = {i: frame.to("cpu") for i, frame in results.items()}
    reader.synchronize()
    for i, copy in copies.items():
        assert torch.equal(copy, expected[i % len(data)])


@needs_cuda
def test_cuda_bad_bytes_fall_back_to_opencvs_errors(photo):
    data = jpeg_with_orientation(photo, 1)
    for bad in (data[: len(data) // 2], data[:-2]):
        with pytest.raises(CorruptImageError):
            decode_for_device(bad, "cuda")
    check_device_decoder("cuda")


@needs_cuda
def test_cuda_preprocessing_of_decoded_frames_is_exact_from_their_pixels(photos):
    # Exactness after the decode: a batch mixing GPU-decoded views (rotated: transposed strides) and
    # host frames preprocesses to the reference's tensor of the same pixels.
    config = make_config(mode="letterbox", size=(448, 448), dataset=(640, 480), padding_value=114)
    decoded = [decode_jpeg_on_device(jpeg_with_orientation(image, o), "cuda")
               for image, o in zip(photos.values(), (1, 6, 3, 8, 5, 2), strict=True)]
    mixed = [*decoded, photos["coffee"]]
    batch, _ = rfpipe.preprocess(mixed, config, device="cuda", implementation="cuda")
    expected, _ = rfpipe.preprocess([f.cpu().numpy() for f in decoded] + [photos["coffee"]], config,
                                    implementation="reference")
    assert torch.equal(batch.cpu(), expected)


if __name__ == "__main__":
    print(json.dumps(orientation_comparison()))
