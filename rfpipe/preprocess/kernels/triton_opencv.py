"""OpenCV's `resize(INTER_LINEAR)` on uint8, and its exact-2x INTER_AREA path, as one Triton kernel.

Used twice: for the letterbox dataset-version step (uint8 HWC out, into an intermediate buffer)
and as the final resize of `resize_filter: cv2-linear` (float32 NCHW out through the 256-entry
normalisation table). Numerics as in resize.cpp and opencv_tables.py: horizontal taps with 11-bit
weights kept as int32, then the vertical pass rounded in two stages,
`(((b0 * (H0 >> 4)) >> 16) + ((b1 * (H1 >> 4)) >> 16) + 2) >> 2`; where AREA is set (both axes
exactly halved) the 2x2 block mean `(a + b + c + d + 2) >> 2` instead, from the same four taps.

Tables (int32, opencv_tables.py): at `TAB_U`, `index[OUT_U]` (first source column, clamped) then
`weights[OUT_U, 2]`; at `TAB_V`, `index[OUT_V]` (first source row, unclamped: both rows are
clamped here with the weights unchanged, as OpenCV does) then `weights[OUT_V, 2]`. Axis u is x.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rfpipe.preprocess.kernels.triton_source import (
    AREA,
    field,
    image_tile,
    load_rgb,
    output_tile,
    store_normalized,
)


@triton.jit
def _linear(a0, a1, b0, b1, p00, p01, p10, p11, area):
    h0 = p00 * a0 + p01 * a1
    h1 = p10 * a0 + p11 * a1
    linear = (((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2
    block = (p00 + p01 + p10 + p11 + 2) >> 2
    return tl.minimum(tl.maximum(tl.where(area != 0, block, linear), 0), 255)


@triton.jit
def _store(out_ptr, norm_ptr, value, plane, out_off, rel, mask, out_sc, OUT_FLOAT: tl.constexpr):
    if OUT_FLOAT:
        store_normalized(out_ptr, norm_ptr, value, plane, out_off, rel, mask, out_sc)
    else:
        tl.store(out_ptr + out_off + plane * out_sc + rel, value.to(tl.uint8), mask=mask)


@triton.jit
def opencv_linear_kernel(
    src_ptr, coef_ptr, meta_ptr, norm_ptr, out_ptr, BU: tl.constexpr, BV: tl.constexpr, OUT_FLOAT: tl.constexpr
):
    (row, live, in_u, in_v, out_u, out_v, ou, ov, ou_c, ov_c, tab_u, tab_v, base, src_su, src_sv, src_sc,
     win_u0, win_v0, win_u, win_v, fill, windowed, gray, gw0, gw1, gw2) = image_tile(src_ptr, meta_ptr, BU, BV)
    area = field(row, AREA)
    x0 = tl.load(coef_ptr + tab_u + ou_c)
    x1 = tl.minimum(x0 + 1, in_u - 1)
    a0 = tl.load(coef_ptr + tab_u + out_u + 2 * ou_c)[None, :]
    a1 = tl.load(coef_ptr + tab_u + out_u + 2 * ou_c + 1)[None, :]
    sy = tl.load(coef_ptr + tab_v + ov_c)
    y0 = tl.minimum(tl.maximum(sy, 0), in_v - 1)
    y1 = tl.minimum(tl.maximum(sy + 1, 0), in_v - 1)
    b0 = tl.load(coef_ptr + tab_v + out_v + 2 * ov_c)[:, None]
    b1 = tl.load(coef_ptr + tab_v + out_v + 2 * ov_c + 1)[:, None]

    cx0 = x0 - win_u0
    cx1 = x1 - win_u0
    cy0 = y0 - win_v0
    cy1 = y1 - win_v0
    okx0 = ((cx0 >= 0) & (cx0 < win_u))[None, :]
    okx1 = ((cx1 >= 0) & (cx1 < win_u))[None, :]
    oky0 = ((cy0 >= 0) & (cy0 < win_v))[:, None]
    oky1 = ((cy1 >= 0) & (cy1 < win_v))[:, None]
    colx0 = (cx0 * src_su)[None, :]
    colx1 = (cx1 * src_su)[None, :]
    row0 = (cy0 * src_sv)[:, None]
    row1 = (cy1 * src_sv)[:, None]
    q00_0, q00_1, q00_2 = load_rgb(base, row0 + colx0, src_sc, oky0 & okx0, fill, windowed, gray, gw0, gw1, gw2)
    q01_0, q01_1, q01_2 = load_rgb(base, row0 + colx1, src_sc, oky0 & okx1, fill, windowed, gray, gw0, gw1, gw2)
    q10_0, q10_1, q10_2 = load_rgb(base, row1 + colx0, src_sc, oky1 & okx0, fill, windowed, gray, gw0, gw1, gw2)
    q11_0, q11_1, q11_2 = load_rgb(base, row1 + colx1, src_sc, oky1 & okx1, fill, windowed, gray, gw0, gw1, gw2)

    plane0, plane2, out_off, out_sc, rel, mask = output_tile(row, ou, ov, out_u, out_v, live)
    v0 = _linear(a0, a1, b0, b1, q00_0, q01_0, q10_0, q11_0, area)
    v1 = _linear(a0, a1, b0, b1, q00_1, q01_1, q10_1, q11_1, area)
    v2 = _linear(a0, a1, b0, b1, q00_2, q01_2, q10_2, q11_2, area)
    _store(out_ptr, norm_ptr, v0, plane0, out_off, rel, mask, out_sc, OUT_FLOAT)
    _store(out_ptr, norm_ptr, v1, 1, out_off, rel, mask, out_sc, OUT_FLOAT)
    _store(out_ptr, norm_ptr, v2, plane2, out_off, rel, mask, out_sc, OUT_FLOAT)
