"""Pillow's antialiased BILINEAR resize, both passes fused with the float32 normalisation (Triton).

One program computes a BV x BU tile of one image's output. For each output pixel it runs Pillow's
two passes literally: the inner pass over `K_U` taps along u, rounded to uint8 exactly as
Resample.c rounds (`clamp((sum + 2^21) >> 22)`), for each of the `K_V` rows the outer pass needs,
then the outer pass, rounded the same way. Recomputing the inner pass per output row instead of
storing it costs a few redundant integer multiply-adds but no intermediate image and no second
launch; the arithmetic is integer and identical to Pillow's, so the bytes are too. The uint8
result goes through the per-channel 256-entry table to float32 NCHW.

Tables (int32, see pillow_tables.py): at `TAB_U`, `first[OUT_U]` then `weights[OUT_U, K_U]`;
likewise at `TAB_V`. Taps past the end of the input read the last pixel with weight 0 (as the
padded table says); an axis Pillow skips has the identity table (K = 1, weight 2^22).
"""

from __future__ import annotations

import triton
import triton.language as tl

from rfpipe.preprocess.kernels import pillow_tables
from rfpipe.preprocess.kernels.triton_source import (
    K_U,
    K_V,
    field,
    image_tile,
    load_rgb,
    output_tile,
    store_normalized,
)

PRECISION = tl.constexpr(pillow_tables.PRECISION_BITS)
BIAS = tl.constexpr(pillow_tables.ROUNDING_BIAS)


@triton.jit
def _round_clip(acc):
    return tl.minimum(tl.maximum(acc >> PRECISION, 0), 255)


@triton.jit
def pillow_resample_kernel(src_ptr, coef_ptr, meta_ptr, norm_ptr, out_ptr, BU: tl.constexpr, BV: tl.constexpr):
    (row, live, in_u, in_v, out_u, out_v, ou, ov, ou_c, ov_c, tab_u, tab_v, base, src_su, src_sv, src_sc,
     win_u0, win_v0, win_u, win_v, fill, windowed, gray, gw0, gw1, gw2) = image_tile(src_ptr, meta_ptr, BU, BV)
    # Programs past this image's tiles (images of other shapes share the grid) run no taps.
    k_u = tl.where(live, field(row, K_U), 0)
    k_v = tl.where(live, field(row, K_V), 0)
    first_u = tl.load(coef_ptr + tab_u + ou_c)
    first_v = tl.load(coef_ptr + tab_v + ov_c)
    weights_u = coef_ptr + tab_u + out_u + ou_c * k_u
    weights_v = coef_ptr + tab_v + out_v + ov_c * k_v

    acc0 = tl.full([BV, BU], BIAS, tl.int32)
    acc1 = tl.full([BV, BU], BIAS, tl.int32)
    acc2 = tl.full([BV, BU], BIAS, tl.int32)
    for kv in range(0, k_v):
        wv = tl.load(weights_v + kv)[:, None]
        cv = tl.minimum(first_v + kv, in_v - 1) - win_v0
        ok_v = (cv >= 0) & (cv < win_v)
        row_rel = (cv * src_sv)[:, None]
        h0 = tl.full([BV, BU], BIAS, tl.int32)
        h1 = tl.full([BV, BU], BIAS, tl.int32)
        h2 = tl.full([BV, BU], BIAS, tl.int32)
        for ku in range(0, k_u):
            wu = tl.load(weights_u + ku)[None, :]
            cu = tl.minimum(first_u + ku, in_u - 1) - win_u0
            ok = ok_v[:, None] & ((cu >= 0) & (cu < win_u))[None, :]
            p0, p1, p2 = load_rgb(base, row_rel + (cu * src_su)[None, :], src_sc, ok, fill, windowed, gray, gw0, gw1, gw2)
            h0 += wu * p0
            h1 += wu * p1
            h2 += wu * p2
        acc0 += wv * _round_clip(h0)
        acc1 += wv * _round_clip(h1)
        acc2 += wv * _round_clip(h2)

    plane0, plane2, out_off, out_sc, rel, mask = output_tile(row, ou, ov, out_u, out_v, live)
    store_normalized(out_ptr, norm_ptr, _round_clip(acc0), plane0, out_off, rel, mask, out_sc)
    store_normalized(out_ptr, norm_ptr, _round_clip(acc1), 1, out_off, rel, mask, out_sc)
    store_normalized(out_ptr, norm_ptr, _round_clip(acc2), plane2, out_off, rel, mask, out_sc)
