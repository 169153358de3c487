"""Pillow's antialiased BILINEAR resize as coefficient tables, and the order of its two passes.

Built on the host exactly as Pillow's `src/libImaging/Resample.c` builds them, so that the CPU
kernel and the GPU kernels reproduce `Image.resize(size, Image.BILINEAR)` bit for bit:

* per axis: scale = in/out, filterscale = max(1, scale), support = 1.0 * filterscale,
  ksize = 2*ceil(support) + 1 taps; for output o: centre = (o + 0.5) * scale,
  first = int(centre - support + 0.5) clamped to >= 0, last = int(centre + support + 0.5)
  clamped to <= in; weights = triangle((i - centre + 0.5) / filterscale) in double precision,
  normalised by their (sequential) sum;
* weights become 22-bit fixed point, rounded half away from zero (`PRECISION_BITS`);
* a pass computes sum(w * src) + 2^21, shifts right by 22 and clamps to 0..255, so every pass is
  rounded to uint8 before the next one reads it;
* an axis whose size does not change is not resampled at all.

Pass order (the bytes depend on it, since each pass rounds):
* Pillow < 12.2 always runs the horizontal pass first (on the source rows the vertical pass will
  read), then the vertical pass.
* Pillow 12.2 and 12.3 do the same, except for very tall images: `Image.resize` (Python) runs a
  vertical-only resize and then a horizontal-only one when `in_h > 100 * in_w and out_h < in_h`
  (Pillow PR #9524; absent from 12.1.1, present in 12.2.0 and 12.3.0).
* Pillow 13.0 drops that Python rule and decides in C (PR #9549): vertical first when the height
  shrinks by more than twice as many pixels as the width:
  `(in_h - out_h) > 0 and (in_h - out_h) > 2 * (in_w - out_w)`.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import numpy as np
import PIL

PRECISION_BITS = 32 - 8 - 2  # 22: fixed-point weight precision of Pillow's 8-bit resample
ROUNDING_BIAS = 1 << (PRECISION_BITS - 1)  # added before the final shift: round half up
BILINEAR_SUPPORT = 1.0


def pillow_version(version: str = PIL.__version__) -> tuple[int, int]:
    """(major, minor) of a Pillow version string: the pass-order rule changed in 12.2 and 13.0."""
    major, minor = version.split(".")[:2]
    digits = re.match(r"\d*", minor).group()
    return int(major), int(digits or 0)


@dataclass(frozen=True)
class AxisTable:
    """Fixed-point taps for one axis: output o reads `ksize` inputs from `first[o]`.

    `weights[o, k]` is the int32 weight of input `first[o] + k`; taps past `count[o]` are 0.
    """

    in_size: int
    out_size: int
    first: np.ndarray  # int32 [out]
    count: np.ndarray  # int32 [out]
    weights: np.ndarray  # int32 [out, ksize]

    @property
    def ksize(self) -> int:
        return self.weights.shape[1]


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


@functools.lru_cache(maxsize=512)
def axis_table(in_size: int, out_size: int) -> AxisTable:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for BILINEAR, vectorised over outputs.

    The double-precision operations are the same ones, in the same order, as in Resample.c
    (including the sequential weight sum), so the resulting integers are identical.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = BILINEAR_SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    inv_filterscale = 1.0 / filterscale

    centre = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    first = np.trunc(centre - support + 0.5).astype(np.int64)
    first = np.maximum(first, 0)
    last = np.trunc(centre + support + 0.5).astype(np.int64)
    last = np.minimum(last, in_size)
    count = last - first

    taps = np.arange(ksize)
    raw = np.zeros((out_size, ksize), dtype=np.float64)
    total = np.zeros(out_size, dtype=np.float64)
    for k in range(ksize):
        active = k < count
        w = _triangle(((k + first) - centre + 0.5) * inv_filterscale)
        w = np.where(active, w, 0.0)
        raw[:, k] = w
        total = total + w  # sequential, as the C loop adds them
    safe_total = np.where(total != 0.0, total, 1.0)
    normalised = np.where((taps[None, :] < count[:, None]) & (total[:, None] != 0.0), raw / safe_total[:, None], 0.0)
    scaled = normalised * float(1 << PRECISION_BITS)
    fixed = np.where(normalised < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return AxisTable(in_size, out_size, first.astype(np.int32), count.astype(np.int32), fixed)


def vertical_first(
    in_size: tuple[int, int], out_size: tuple[int, int], major: int | None = None, minor: int | None = None
) -> bool:
    """Whether the installed Pillow (or Pillow `major`.`minor`, minor 0 if omitted) runs the vertical pass first.

    Sizes are (width, height). Only meaningful when both axes change.
    """
    if major is None:
        major, minor = pillow_version()
    version = (major, minor or 0)
    shrink_h = in_size[1] - out_size[1]
    shrink_w = in_size[0] - out_size[0]
    if version < (12, 2):
        return False
    if version < (13, 0):
        return in_size[1] > in_size[0] * 100 and shrink_h > 0
    return shrink_h > 0 and shrink_h > shrink_w * 2


@dataclass(frozen=True)
class ResizePlan:
    """The passes Pillow runs for one resize: tables (None when an axis is unchanged) and order."""

    horizontal: AxisTable | None
    vertical: AxisTable | None
    vertical_first: bool

    @property
    def rows_for_horizontal(self) -> tuple[int, int]:
        """Source rows the horizontal pass needs when it runs first (Pillow skips the others)."""
        if self.vertical is None or self.vertical_first:
            return 0, -1
        v = self.vertical
        return int(v.first[0]), int(v.first[-1] + v.count[-1])


@functools.lru_cache(maxsize=256)
def resize_plan(
    in_size: tuple[int, int], out_size: tuple[int, int], major: int | None = None, minor: int | None = None
) -> ResizePlan:
    """How Pillow (installed, or `major`.`minor`) resizes (width, height) `in_size` to `out_size` with BILINEAR."""
    horizontal = axis_table(in_size[0], out_size[0]) if in_size[0] != out_size[0] else None
    vertical = axis_table(in_size[1], out_size[1]) if in_size[1] != out_size[1] else None
    both = horizontal is not None and vertical is not None
    return ResizePlan(horizontal, vertical, both and vertical_first(in_size, out_size, major, minor))
