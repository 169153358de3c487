"""Decoding for the engine: OpenCV-exact frames staged in pinned memory, or nvJPEG batches (opt-in).

`decode_staged` is `rfpipe.io.decode.decode_image` (OpenCV, EXIF orientation, pixel limits: the
reference's frames byte for byte) followed, when the frames go to a GPU, by one copy into pinned
host memory, made in the decoding thread: the engine's decode threads run in parallel (OpenCV
releases the GIL), and a pinned frame is uploaded by an asynchronous copy with no further staging.
Pinned blocks come from torch's caching host allocator, so they are reused once their copy is done.

`decode_batch_on_device` is the inexact opt-in (`gpu_decode=True`): the JPEG items of a batch go to
torchvision's nvJPEG decoder in one batched call; anything it declines is decoded by OpenCV
(the same routing and errors as `rfpipe.io.gpu.decode_for_device`, see that module).

>>> frame = decode_staged(data, pinned=True)  # file  # doctest: +SKIP
>>> frames = decode_batch_on_device([a, b, c], "cuda:0")  # file  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rfpipe.io.decode import DEFAULT_MAX_PIXELS, decode_image
from rfpipe.io.errors import DecodeError

logger = logging.getLogger("rfpipe.io")

__all__ = ["decode_batch_on_device", "decode_staged", "pinned_copy"]


def pinned_copy(frame: np.ndarray) -> np.ndarray:
    """`frame` copied into a uint8 array in pinned host memory (same shape)."""
    staged = torch.empty(frame.shape, dtype=torch.uint8, pin_memory=True).numpy()
    np.copyto(staged, frame)
    return staged


def decode_staged(data: bytes | bytearray | memoryview, *, pinned: bool = False,
                  max_pixels: int = DEFAULT_MAX_PIXELS, auto_orient: bool = True) -> np.ndarray:
    """`decode_image(data)`, copied into pinned memory when `pinned` (frames bound for a GPU)."""
    frame = decode_image(data, auto_orient=auto_orient, max_pixels=max_pixels)
    return pinned_copy(frame) if pinned else frame


def decode_batch_on_device(items: Sequence[bytes | bytearray | memoryview], device: str | torch.device, *,
                           max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Any]:
    """One frame or exception per item: JPEG decoded by nvJPEG in one batched call (BGR uint8 HWC
    tensors on `device`, OpenCV's geometry), the rest by `decode_image` (numpy frames); an item that
    neither decodes gets its `DecodeError` in its place."""
    from rfpipe.devices import resolve_device
    from rfpipe.io import gpu

    device = resolve_device(device)
    results: list[Any] = [None] * len(items)
    accepted: list[tuple[int, torch.Tensor, int, tuple[int, int]]] = []
    for i, data in enumerate(items):
        data = bytes(data)
        try:
            header, orientation = gpu.accepted_jpeg(data, max_pixels=max_pixels)
        except (DecodeError, gpu.DeviceDecodeDeclined):  # declined or refused: OpenCV decides, with its own errors
            results[i] = _cpu(data, max_pixels)
            continue
        expected = (header.width, header.height) if orientation >= 5 else (header.height, header.width)
        accepted.append((i, torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation, expected))
    if not accepted:
        return results
    decode = gpu._torchvision_decode_jpeg()
    encoded = [a[1] for a in accepted]
    try:
        if device.type == "cuda":
            lock, stream = gpu._decode_stream(device)  # serialised and synchronised: see rfpipe.io.gpu
            with lock, torch.cuda.stream(stream):
                frames = [_oriented(f, a[2]) for f, a in zip(decode(encoded, device=device), accepted, strict=True)]
                stream.synchronize()
        else:
            frames = [_oriented(f, a[2]) for f, a in zip(decode(encoded), accepted, strict=True)]
    except (RuntimeError, ValueError) as error:  # one bad item fails the batch call: decode them on the CPU
        logger.debug("batched device decode failed (%s); decoding on the CPU", error)
        for i, *_ in accepted:
            results[i] = _cpu(bytes(items[i]), max_pixels)
        return results
    for (i, _, _, expected), frame in zip(accepted, frames, strict=True):
        results[i] = frame if tuple(frame.shape) == (*expected, 3) else _cpu(bytes(items[i]), max_pixels)
    return results


def _oriented(frame: torch.Tensor, orientation: int) -> torch.Tensor:
    from rfpipe.io import gpu

    return gpu.orient(frame.permute(1, 2, 0), orientation, swap_channels=True)


def _cpu(data: bytes, max_pixels: int) -> Any:
    try:
        return decode_image(data, max_pixels=max_pixels)
    except Exception as error:
        return error
