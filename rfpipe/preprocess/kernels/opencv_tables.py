"""OpenCV's `resize(..., INTER_LINEAR)` on uint8 as coefficient tables (modules/imgproc/src/resize.cpp).

The generic uint8 path, which the GPU kernels reproduce:

* per axis: scale = 1 / (out / in) in double; for output d, f = float((d + 0.5) * scale - 0.5),
  s = floor(f), f -= s (float32);
* horizontal: where s < 0 the tap is (s=0, f=0); where s >= in - 1 it is (s=in-1, f=0);
  vertical: s is kept and the two source rows s, s+1 are clamped into the image instead, with the
  weights unchanged (so both taps may read the same row);
* weights are 11-bit fixed point: a0 = rint((1 - f) * 2048), a1 = rint(f * 2048), half to even;
* horizontal pass: H = src[s] * a0 + src[s + 1] * a1, kept as an int32 (scale 2^11);
* vertical pass, rounded in two stages exactly as OpenCV does:
  out = (((b0 * (H0 >> 4)) >> 16) + ((b1 * (H1 >> 4)) >> 16) + 2) >> 2.

Special cases: equal sizes are a copy; an exact 2x downscale on both axes is INTER_AREA's fast
path instead, out = (a + b + c + d + 2) >> 2 over each 2x2 block (3-channel images). IPP is not
used for uint8 INTER_LINEAR (OpenCV disables it there as not exact).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import numpy as np

COEF_BITS = 11  # INTER_RESIZE_COEF_BITS
COEF_SCALE = 1 << COEF_BITS  # INTER_RESIZE_COEF_SCALE
DBL_EPSILON = sys.float_info.epsilon


@dataclass(frozen=True)
class LinearAxis:
    """Two taps per output: sources `index[d]` and `index[d] + 1` (clamped), weights int32 [out, 2]."""

    in_size: int
    out_size: int
    index: np.ndarray  # int32 [out]: first source (horizontal: already clamped)
    weights: np.ndarray  # int32 [out, 2]


def _round_half_even_to_short(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), -32768, 32767).astype(np.int32)


@functools.lru_cache(maxsize=512)
def linear_axis(in_size: int, out_size: int, horizontal: bool) -> LinearAxis:
    """Coefficients of one axis of OpenCV INTER_LINEAR (uint8, fixed point)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    scale = 1.0 / (out_size / in_size)
    f = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f)
    f = (f - s).astype(np.float32)
    s = s.astype(np.int64)
    if horizontal:
        low = s < 0
        f = np.where(low, np.float32(0), f)
        s = np.where(low, 0, s)
        high = s >= in_size - 1
        f = np.where(high, np.float32(0), f)
        s = np.where(high, in_size - 1, s)
    one = np.float32(1.0)
    w0 = _round_half_even_to_short((one - f).astype(np.float32) * np.float32(COEF_SCALE))
    w1 = _round_half_even_to_short(f * np.float32(COEF_SCALE))
    return LinearAxis(in_size, out_size, s.astype(np.int32), np.stack([w0, w1], axis=1))


def is_area_2x(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """OpenCV swaps INTER_LINEAR for INTER_AREA's fast path on exact 2x downscales of both axes."""
    scale_x = 1.0 / (out_size[0] / in_size[0])
    scale_y = 1.0 / (out_size[1] / in_size[1])
    ix, iy = round(scale_x), round(scale_y)
    exact = abs(scale_x - ix) < DBL_EPSILON and abs(scale_y - iy) < DBL_EPSILON
    return exact and ix == 2 and iy == 2
