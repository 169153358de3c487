"""Host-to-device staging for the GPU path: pinned frames, the pinned ring and one call's copies.

Host frames are copied, only the rectangle the kernels read, into a fixed pinned ring and from
there to the device buffer on the runtime's stream. The ring hands regions out in FIFO order and
reuses one once the event recorded after its copy has passed. Importing this module needs no GPU.
"""

from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch

RING_BYTES = int(os.environ.get("RFPIPE_PINNED_RING_MB", "64")) << 20
# Images of at least two chunks go in chunks of about this many bytes (smaller ones share
# chunks). On the H100 host 2 MiB chunks measured no better (more copy issues, same overlap).
STAGE_CHUNK_BYTES = int(os.environ.get("RFPIPE_STAGE_CHUNK_KB", "4096")) << 10


def pinned_frame(height: int, width: int, channels: int = 3) -> np.ndarray:
    """A uint8 HWC numpy array in pinned host memory: decode into it, and the GPU path uploads it directly.

    Keep writing into a given array only after the batch made from it is ready (`preprocess`
    synchronises by default); drop it to give the memory back to torch's pinned-memory cache.
    Without CUDA the array is ordinary (unpinned) memory, so the same code runs everywhere.

    >>> frame = pinned_frame(480, 640)
    >>> frame.shape, frame.dtype
    ((480, 640, 3), dtype('uint8'))
    """
    pin = torch.cuda.is_available()
    return torch.empty((height, width, channels), dtype=torch.uint8, pin_memory=pin).numpy()


def is_pinned(array: np.ndarray) -> bool:
    """Whether a C-contiguous numpy array lives in pinned host memory (so it can be copied directly).

    >>> is_pinned(np.zeros((4, 4, 3), np.uint8))
    False
    """
    if not array.flags.c_contiguous:
        return False
    try:
        return torch.from_numpy(array).is_pinned()
    except (RuntimeError, ValueError, TypeError):
        return False


class PinnedRing:
    """A fixed pinned host buffer handed out in FIFO order; a region is reused once its copy is done."""

    def __init__(self, capacity: int):
        self.tensor = torch.empty(capacity, dtype=torch.uint8, pin_memory=True)
        self.array = self.tensor.numpy()
        self.capacity = capacity
        self.head = 0
        self.busy: collections.deque[list] = collections.deque()  # [start, end, event or None]

    def reserve(self, nbytes: int, drain: Callable[[], None]) -> int:
        """Start of `nbytes` free bytes; `drain()` issues this call's pending copies when needed."""
        if nbytes > self.capacity:
            raise ValueError(f"{nbytes} bytes exceed the pinned staging ring ({self.capacity} bytes)")
        start = self.head if self.head + nbytes <= self.capacity else 0
        end = start + nbytes
        while self.busy and any(s < end and start < e for s, e, _ in self.busy):
            if self.busy[0][2] is None:  # this call's own fills: issue their copies first
                drain()
                continue
            self.busy.popleft()[2].synchronize()  # the ring wrapped onto a copy still in flight
        self.head = end
        self.busy.append([start, end, None])
        return start

    def settle(self, event: torch.cuda.Event) -> None:
        """Mark the regions handed out since the last settle as free once `event` has passed."""
        for entry in reversed(self.busy):
            if entry[2] is not None:
                break
            entry[2] = event
        while self.busy and self.busy[0][2] is not None and self.busy[0][2].query():
            self.busy.popleft()


class Stager:
    """Host-to-device copies of one call through the pinned ring.

    Fills use torch's CPU copy, which runs on all intra-op threads (numpy's copy is one thread,
    about 10 GB/s on the H100 host; torch's about 50 GB/s). Small neighbouring images share one
    DMA; an image of two chunks or more goes in chunks, each chunk's DMA issued as soon as it is
    filled, so the DMA of one chunk overlaps the fill of the next.
    """

    def __init__(self, ring: PinnedRing, stream: torch.cuda.Stream, buffer: torch.Tensor):
        self.ring = ring
        self.stream = stream
        self.buffer = buffer

    def _wrapped(self) -> None:
        # The ring wrapped onto this call's own copies: let them be waited for like older ones.
        event = torch.cuda.Event()
        event.record(self.stream)
        self.ring.settle(event)

    def _fill(self, at: int, source: np.ndarray) -> None:
        n = source.nbytes
        if min(source.strides) < 0:  # torch cannot view negative strides: numpy's (one-thread) copy
            np.copyto(self.ring.array[at : at + n].reshape(source.shape), source)
            return
        slot = self.ring.tensor[at : at + n].view(source.shape)
        if source.flags.writeable:
            slot.copy_(torch.from_numpy(source))
        else:
            with warnings.catch_warnings():  # read-only arrays are only read here
                warnings.simplefilter("ignore", UserWarning)
                slot.copy_(torch.from_numpy(source))

    def put(self, source: np.ndarray, target: torch.Tensor) -> None:
        """Fill `source` into the ring and issue its copy to `target` (same number of bytes)."""
        n = source.nbytes
        at = self.ring.reserve(n, self._wrapped)
        self._fill(at, source)
        target.copy_(self.ring.tensor[at : at + n], non_blocking=True)

    def _span(self, pieces: list[tuple[np.ndarray, int]]) -> None:
        # One ring region and one DMA for pieces lying in [start, end) of the device buffer.
        if not pieces:
            return
        start = pieces[0][1]
        end = pieces[-1][1] + pieces[-1][0].nbytes
        at = self.ring.reserve(end - start, self._wrapped)
        for source, offset in pieces:
            self._fill(at + offset - start, source)
        self.buffer[start:end].copy_(self.ring.tensor[at : at + end - start], non_blocking=True)

    def images(self, items: list[tuple[np.ndarray, int]]) -> None:
        """Stage HWC rectangles at their (increasing) device-buffer offsets."""
        group: list[tuple[np.ndarray, int]] = []
        for source, offset in items:
            n = source.nbytes
            if n >= 2 * STAGE_CHUNK_BYTES:
                self._span(group)
                group = []
                row = n // source.shape[0]
                rows = max(1, STAGE_CHUNK_BYTES // row)
                for r0 in range(0, source.shape[0], rows):
                    self._span([(source[r0 : r0 + rows], offset + r0 * row)])
                continue
            if group and offset + n - group[0][1] > STAGE_CHUNK_BYTES:
                self._span(group)
                group = []
            group.append((source, offset))
        self._span(group)


