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
    FILL,
    GRAY,
    GW0,
    GW1,
    GW2,
    IN_U,
    IN_V,
    K_U,
    K_V,
    NUM_FIELDS,
    OUT_OFF,
    OUT_SC,
    OUT_SU,
    OUT_SV,
    OUT_U,
    OUT_V,
    SRC_OFF,
    SRC_SC,
    SRC_SU,
    SRC_SV,
    SWAP,
    TAB_U,
    TAB_V,
    WIN_U,
    WIN_U0,
    WIN_V,
    WIN_V0,
    WINDOWED,
    field,
    field64,
    load_rgb,
    store_normalized,
)

PRECISION = tl.constexpr(pillow_tables.PRECISION_BITS)
BIAS = tl.constexpr(pillow_tables.ROUNDING_BIAS)


@triton.jit
def _round_clip(acc):
    return tl.minimum(tl.maximum(acc >> PRECISION, 0), 255)


@triton.jit
def pillow_resample_kernel(src_ptr, coef_ptr, meta_ptr, norm_ptr, out_ptr, BU: tl.constexpr, BV: tl.constexpr):
    row = meta_ptr + tl.program_id(1) * NUM_FIELDS
    tile = tl.program_id(0)
    in_u = field(row, IN_U)
    in_v = field(row, IN_V)
    out_u = field(row, OUT_U)
    out_v = field(row, OUT_V)
    tiles_u = tl.cdiv(out_u, BU)
    live = tile < tiles_u * tl.cdiv(out_v, BV)
    # Programs past this image's tiles (images of other shapes share the grid) run no taps.
    k_u = tl.where(live, field(row, K_U), 0)
    k_v = tl.where(live, field(row, K_V), 0)
    win_u0 = field(row, WIN_U0)
    win_v0 = field(row, WIN_V0)
    win_u = field(row, WIN_U)
    win_v = field(row, WIN_V)
    fill = field(row, FILL)
    windowed = field(row, WINDOWED)
    gray = field(row, GRAY)
    gw0 = field(row, GW0)
    gw1 = field(row, GW1)
    gw2 = field(row, GW2)
    tab_u = field64(row, TAB_U)
    tab_v = field64(row, TAB_V)
    src_su = field(row, SRC_SU)
    src_sv = field(row, SRC_SV)
    src_sc = field(row, SRC_SC)
    base = src_ptr + field64(row, SRC_OFF)

    ou = (tile % tiles_u) * BU + tl.arange(0, BU)
    ov = (tile // tiles_u) * BV + tl.arange(0, BV)
    ou_c = tl.minimum(ou, out_u - 1)
    ov_c = tl.minimum(ov, out_v - 1)
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

    swap = field(row, SWAP)
    out_off = field64(row, OUT_OFF)
    out_sc = field(row, OUT_SC)
    rel = ov[:, None] * field(row, OUT_SV) + ou[None, :] * field(row, OUT_SU)
    mask = (ov < out_v)[:, None] & (ou < out_u)[None, :] & live
    store_normalized(out_ptr, norm_ptr, _round_clip(acc0), tl.where(swap != 0, 2, 0), out_off, rel, mask, out_sc)
    store_normalized(out_ptr, norm_ptr, _round_clip(acc1), 1, out_off, rel, mask, out_sc)
    store_normalized(out_ptr, norm_ptr, _round_clip(acc2), tl.where(swap != 0, 0, 2), out_off, rel, mask, out_sc)
