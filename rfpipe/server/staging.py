"""Reused page-locked (pinned) host buffers for decoded frames when serving on a GPU.

A decoded frame is pageable memory; its upload to the GPU goes fastest from pinned memory
(DESIGN.md: 0.60 ms pageable vs 0.13 ms pinned for a 1080p frame on an H100). Decode threads copy
each frame into a pinned buffer from this pool, so the copy runs beside the batch in flight instead
of on the GPU worker's critical path, and the worker hands the CUDA preprocessing a numpy view of
pinned memory it can upload directly. Allocating pinned memory is slow (cudaHostAlloc), hence the
pool; past its byte budget frames stay pageable, which is always correct, only slower.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

_MIN_BUCKET = 1 << 20  # 1 MiB: buckets are powers of two from here, so buffers are reused across sizes


def _bucket(nbytes: int) -> int:
    return max(_MIN_BUCKET, 1 << (nbytes - 1).bit_length())


class PinnedPool:
    """Hands out numpy views of pinned buffers, and takes them back.

    >>> pool = PinnedPool(budget_bytes=1 << 30)  # doctest: +SKIP
    >>> staged, release = pool.stage(frame)      # doctest: +SKIP
    >>> ...; release()                           # after the upload  # doctest: +SKIP
    """

    def __init__(self, budget_bytes: int):
        self._budget = budget_bytes
        self._allocated = 0
        self._free: dict[int, list[torch.Tensor]] = defaultdict(list)
        self._lock = threading.Lock()

    @property
    def allocated_bytes(self) -> int:
        return self._allocated

    def _take(self, size: int) -> torch.Tensor | None:
        with self._lock:
            if self._free[size]:
                return self._free[size].pop()
            if self._allocated + size > self._budget:
                return None
            self._allocated += size
        try:
            return torch.empty(size, dtype=torch.uint8, pin_memory=True)
        except RuntimeError:  # pinning failed (no driver, limits): give the budget back, stay pageable
            with self._lock:
                self._allocated -= size
            return None

    def _give(self, size: int, buffer: torch.Tensor) -> None:
        with self._lock:
            self._free[size].append(buffer)

    def stage(self, frame: np.ndarray) -> tuple[np.ndarray, Callable[[], None]]:
        """A copy of `frame` in pinned memory and the function that returns its buffer to the pool.

        When the budget is spent the frame itself comes back (pageable) with a no-op release.
        """
        size = _bucket(frame.nbytes)
        buffer = self._take(size)
        if buffer is None:
            return frame, _nothing
        view = buffer.numpy()[: frame.nbytes].reshape(frame.shape)
        np.copyto(view, frame)
        released = False

        def release() -> None:
            nonlocal released
            if not released:  # a second call must not put the buffer in the pool twice
                released = True
                self._give(size, buffer)

        return view, release


def _nothing() -> None:
    return None
