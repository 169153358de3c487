"""JPEG bytes -> BGR uint8 frames decoded on a torch device (`rfpipe serve --gpu-decode`). Not exact.

`rfpipe.io.decode` decodes as the inference server does (OpenCV's `imdecode`, libjpeg-turbo), so its
frames are the reference's frames byte for byte. This module is the optional route for JPEG on a
GPU: torchvision's `decode_jpeg` with nvJPEG, straight into device memory, so the frame is never
staged on the host nor copied to the device. nvJPEG's IDCT and chroma upsampling are not
libjpeg-turbo's: its frames can differ from OpenCV's in many values by small amounts, and the
exactness rfpipe otherwise promises is lost from the bytes onward. `rfpipe parity MODEL --a cuda
--b cuda+gpu-decode` measures the pixel and detection drift (docs/serving.md, benchmarks/RESULTS.md).
On the CPU the same code runs torchvision's own libjpeg-turbo build: tests and CPU drift
measurements use it (it matched OpenCV's bytes on the bundled samples; nothing guarantees that).

The geometry is kept: a frame has the shape and orientation OpenCV's frame has. torchvision's
CUDA decoder ignores `apply_exif_orientation`, so the orientation is read the way OpenCV reads it
(`rfpipe.io.exif.exif_orientation`) and applied here with one flip and a transpose (`orient`), on
every device alike.

What the device decoder does not take goes to `decode_image` on the CPU (`decode_for_device`):
other formats; JPEG data that does not end with its end-of-image marker (truncated data, which
OpenCV refuses and nvJPEG need not); headers the marker walk cannot follow; CMYK and YCCK JPEG
(4 components: torchvision's CPU conversion differs from OpenCV's by 1 in most values, and a GPU
gains nothing on them); and whatever torchvision raises on (corrupt data, JPEG variants nvJPEG
lacks). Errors are therefore
always the CPU path's errors, and a request never fails only because the GPU decoder did.

Streams and threads. torchvision decodes on a private stream, and nvJPEG's hardware engine is
reported not to wait for work queued before it (torchvision#9606, torchcodec#1634): a block the
caching allocator hands the decoder could still be read by a kernel queued on another stream. So
decodes on a device are serialised by one lock (torchvision serialises the decode itself anyway)
and each runs, with its flip, on the device's decode stream, which is synchronised before the
lock is released: nothing of a decode is in flight when the next starts, and a returned tensor is
complete and can be read from any stream. The stream is not the default stream, which a worker's
forward pass may be using: waiting on that would put every decode behind a batch.

One device per process. torchvision keeps a single nvJPEG decoder, behind a process-wide mutex,
for the device it decoded on last; a decode on another device replaces it, and the replaced
decoder's nvJPEG handles and buffers are not freed (its destructor is empty). So decode on one
device: the server decodes on its first CUDA device, and workers on other devices copy the frame
over (`preprocess.cuda` moves a tensor from another device with `.to`).
"""

from __future__ import annotations

import functools
import logging
import threading

import cv2
import numpy as np
import torch

from rfpipe.devices import resolve_device
from rfpipe.io.decode import decode_image
from rfpipe.io.errors import CorruptImageError
from rfpipe.io.exif import exif_orientation
from rfpipe.io.header import DEFAULT_MAX_PIXELS, ImageHeader, checked_jpeg_header

__all__ = ["DeviceDecodeDeclined", "check_device_decoder", "decode_for_device", "decode_jpeg_on_device", "orient"]

logger = logging.getLogger("rfpipe.io.gpu")

_EOI = b"\xff\xd9"

# EXIF orientation -> (flip rows, flip columns, transpose) of the stored image, flips first. OpenCV
# (imgcodecs ApplyExifOrientation) transposes first and flips the result; these are the same maps.
_ORIENTATIONS = {
    1: (False, False, False),
    2: (False, True, False),
    3: (True, True, False),
    4: (True, False, False),
    5: (False, False, True),
    6: (True, False, True),  # rotate 90 degrees clockwise
    7: (True, True, True),
    8: (False, True, True),  # rotate 90 degrees counter-clockwise
}


class DeviceDecodeDeclined(Exception):
    """The device decoder does not take these bytes; `rfpipe.io.decode.decode_image` decodes them on the CPU."""


def orient(frame: torch.Tensor, orientation: int, swap_channels: bool = False) -> torch.Tensor:
    """An HWC `frame` shown as OpenCV's `imdecode` shows an image with this EXIF orientation.

    With `swap_channels` the channel order is reversed too (RGB <-> BGR) in the same flip, so the
    result costs one copy at most; the transpose of orientations 5..8 is a view.

    >>> orient(torch.zeros(480, 640, 3, dtype=torch.uint8), 6).shape
    torch.Size([640, 480, 3])
    """
    rows, columns, transpose = _ORIENTATIONS[orientation]
    dims = [dim for dim, on in ((0, rows), (1, columns), (2, swap_channels)) if on]
    if dims:
        frame = frame.flip(dims)
    return frame.transpose(0, 1) if transpose else frame


@functools.cache
def _torchvision_decode_jpeg():
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as error:
        raise ImportError(
            f"--gpu-decode needs torchvision with its image extension (pip install torchvision): {error}"
        ) from error
    return functools.partial(decode_jpeg, mode=ImageReadMode.RGB)


_streams: dict[torch.device, tuple[threading.Lock, torch.cuda.Stream]] = {}
_streams_lock = threading.Lock()


def _decode_stream(device: torch.device) -> tuple[threading.Lock, torch.cuda.Stream]:
    """The lock that serialises decodes on `device` and the stream they run on, created on first use."""
    with _streams_lock:
        if device not in _streams:
            _streams[device] = (threading.Lock(), torch.cuda.Stream(device))
        return _streams[device]


def accepted_jpeg(data: bytes, *, auto_orient: bool = True,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageHeader, int]:
    """The checked header and the EXIF orientation (1 without `auto_orient`) of JPEG bytes the device
    decoder takes: a DecodeError where the header check refuses them (as `decode_image` would),
    DeviceDecodeDeclined where only OpenCV should decode them (see the module docstring).

    >>> accepted_jpeg(cv2.imencode(".jpg", np.zeros((8, 16, 3), np.uint8))[1].tobytes())
    (ImageHeader(format='jpeg', width=16, height=8), 1)
    """
    header, components = checked_jpeg_header(data, max_pixels=max_pixels)
    if header.format != "jpeg":
        raise DeviceDecodeDeclined(f"{header.format.upper()} data")
    if not data.endswith(_EOI):
        raise DeviceDecodeDeclined("the JPEG data does not end with an end-of-image marker")
    if components not in (1, 3):  # CMYK / YCCK: converted on the host either way, and each library converts its own way
        raise DeviceDecodeDeclined(f"a JPEG of {components} colour components")
    try:
        orientation = exif_orientation(data) if auto_orient else 1
    except CorruptImageError as error:
        raise DeviceDecodeDeclined(str(error)) from error
    return header, orientation


def decode_jpeg_on_device(
    data: bytes | bytearray | memoryview,
    device: str | torch.device,
    auto_orient: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Decode JPEG bytes on `device` to a BGR uint8 HWC tensor with OpenCV's geometry (rotations are transposed views).

    The header is checked against `max_pixels` first, as `decode_image` checks it (DecodeError).
    Raises DeviceDecodeDeclined for bytes the device decoder does not take (see the module
    docstring); `decode_for_device` falls back to the CPU for them. On CUDA the frame is complete
    when this returns.

    >>> frame = decode_jpeg_on_device(open("photo.jpg", "rb").read(), "cuda:0")  # gpu  # doctest: +SKIP
    >>> frame.shape, frame.device  # gpu  # doctest: +SKIP
    (torch.Size([1080, 1920, 3]), device(type='cuda', index=0))
    """
    data = bytes(data)
    header, orientation = accepted_jpeg(data, auto_orient=auto_orient, max_pixels=max_pixels)
    decode = _torchvision_decode_jpeg()
    device = resolve_device(device)  # torchvision keeps its decoder per exact device
    # torch.frombuffer needs a writable buffer (it warns on bytes); the copy costs microseconds.
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        if device.type == "cuda":
            lock, stream = _decode_stream(device)
            with lock, torch.cuda.stream(stream):
                frame = orient(decode(encoded, device=device).permute(1, 2, 0), orientation, swap_channels=True)
                stream.synchronize()
        else:
            frame = orient(decode(encoded).permute(1, 2, 0), orientation, swap_channels=True)
    except (RuntimeError, ValueError) as error:
        raise DeviceDecodeDeclined(f"torchvision did not decode it: {str(error).strip()}") from error
    expected = (header.width, header.height) if orientation >= 5 else (header.height, header.width)
    if tuple(frame.shape) != (*expected, 3):
        raise DeviceDecodeDeclined(f"decoded to {tuple(frame.shape)}, the header declares {header.width}x{header.height}")
    return frame


def decode_for_device(
    data: bytes | bytearray | memoryview,
    device: str | torch.device,
    auto_orient: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor | np.ndarray:
    """JPEG decoded on `device` (a tensor) when its decoder takes the bytes, else `decode_image` (a numpy frame).

    Both are BGR uint8 HWC frames with OpenCV's geometry; errors are `decode_image`'s DecodeErrors.

    >>> frame = decode_for_device(request_bytes, "cuda:0", max_pixels=40_000_000)  # gpu  # doctest: +SKIP
    >>> isinstance(frame, torch.Tensor)  # decoded by nvJPEG; a numpy frame came from OpenCV  # gpu  # doctest: +SKIP
    True
    """
    try:
        return decode_jpeg_on_device(data, device, auto_orient, max_pixels)
    except DeviceDecodeDeclined as reason:
        logger.debug("decoding on the CPU: %s", reason)
        return decode_image(data, auto_orient=auto_orient, max_pixels=max_pixels)


def check_device_decoder(device: str | torch.device) -> None:
    """Decode a small JPEG on `device`; RuntimeError naming the problem unless it comes back right.

    The server's start-up check for --gpu-decode (it also creates torchvision's decoder before
    the first request needs it).

    >>> check_device_decoder("cuda:0")  # gpu  # doctest: +SKIP
    """
    probe = np.zeros((16, 24, 3), np.uint8)
    probe[:, :12] = (255, 0, 0)  # blue left half, in BGR
    ok, encoded = cv2.imencode(".jpg", probe)
    if not ok:
        raise RuntimeError("--gpu-decode: could not encode the probe JPEG")
    try:
        frame = decode_jpeg_on_device(encoded.tobytes(), device)
    except DeviceDecodeDeclined as error:
        raise RuntimeError(f"--gpu-decode: torchvision cannot decode JPEG on {device}: {error}") from error
    left = frame[8, 4].cpu().tolist()
    if tuple(frame.shape) != probe.shape or not (left[0] > 200 and left[2] < 60):
        raise RuntimeError(f"--gpu-decode: the probe JPEG decoded wrongly on {device} "
                           f"(shape {tuple(frame.shape)}, left pixel BGR {left})")
