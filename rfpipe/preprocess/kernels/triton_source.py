"""The per-image parameter row the Triton kernels read, and how they read source pixels.

Every launch covers a whole batch: program axis 1 is the image, and each image's sizes, strides,
window, fill, grayscale weights, channel swap and coefficient-table offsets sit in one int64 row
of a small device table (`Field` gives the columns). A kernel resamples a "virtual input": a
`IN_U x IN_V` plane whose window `[WIN_U0, WIN_U0 + WIN_U) x [WIN_V0, WIN_V0 + WIN_V)` holds the
source pixels and whose other pixels are `FILL` (the letterbox / center-crop canvas, without ever
building it). Axis u is the axis of the first (inner) pass; for Pillow 13's vertical-first order
the host swaps the roles of x and y in the row, so one kernel serves both orders. Both kernels
open with `image_tile` (the row, the tile, the source) and end with `output_tile` (where it goes).
"""

from __future__ import annotations

from enum import IntEnum

import triton
import triton.language as tl


class Field(IntEnum):
    """Columns of the per-image int64 parameter row."""

    IN_U = 0  # virtual input size along the inner-pass axis
    IN_V = 1
    OUT_U = 2  # output size along the same axes
    OUT_V = 3
    WIN_U0 = 4  # where the source window starts on the virtual input
    WIN_V0 = 5
    WIN_U = 6  # source window size
    WIN_V = 7
    FILL = 8  # value of virtual-input pixels outside the window
    WINDOWED = 9  # 1 when the window does not cover the whole virtual input
    GRAY = 10  # 1: replace the pixel by OpenCV's fixed-point gray of it
    GW0 = 11  # gray weights of source channels 0, 1, 2 (15-bit fixed point)
    GW1 = 12
    GW2 = 13
    SWAP = 14  # 1: source channel c is written to output channel 2 - c
    AREA = 15  # OpenCV kernel only: 1 selects INTER_AREA's exact-2x path
    K_U = 16  # Pillow kernel only: taps per output along u / v
    K_V = 17
    TAB_U = 18  # offsets of the u / v coefficient tables in the int32 coefficient buffer
    TAB_V = 19
    SRC_OFF = 20  # byte offset of window pixel (0, 0) from the kernel's source pointer
    SRC_SU = 21  # source strides in bytes along u, v and channels
    SRC_SV = 22
    SRC_SC = 23
    OUT_OFF = 24  # element offset of the image's output from the output pointer
    OUT_SU = 25  # output strides in elements along u, v and channels
    OUT_SV = 26
    OUT_SC = 27


FIELDS = len(Field)
NUM_FIELDS = tl.constexpr(FIELDS)

# The columns again as Triton constexpr globals (what a @triton.jit function may read).
IN_U = tl.constexpr(Field.IN_U.value)
IN_V = tl.constexpr(Field.IN_V.value)
OUT_U = tl.constexpr(Field.OUT_U.value)
OUT_V = tl.constexpr(Field.OUT_V.value)
WIN_U0 = tl.constexpr(Field.WIN_U0.value)
WIN_V0 = tl.constexpr(Field.WIN_V0.value)
WIN_U = tl.constexpr(Field.WIN_U.value)
WIN_V = tl.constexpr(Field.WIN_V.value)
FILL = tl.constexpr(Field.FILL.value)
WINDOWED = tl.constexpr(Field.WINDOWED.value)
GRAY = tl.constexpr(Field.GRAY.value)
GW0 = tl.constexpr(Field.GW0.value)
GW1 = tl.constexpr(Field.GW1.value)
GW2 = tl.constexpr(Field.GW2.value)
SWAP = tl.constexpr(Field.SWAP.value)
AREA = tl.constexpr(Field.AREA.value)
K_U = tl.constexpr(Field.K_U.value)
K_V = tl.constexpr(Field.K_V.value)
TAB_U = tl.constexpr(Field.TAB_U.value)
TAB_V = tl.constexpr(Field.TAB_V.value)
SRC_OFF = tl.constexpr(Field.SRC_OFF.value)
SRC_SU = tl.constexpr(Field.SRC_SU.value)
SRC_SV = tl.constexpr(Field.SRC_SV.value)
SRC_SC = tl.constexpr(Field.SRC_SC.value)
OUT_OFF = tl.constexpr(Field.OUT_OFF.value)
OUT_SU = tl.constexpr(Field.OUT_SU.value)
OUT_SV = tl.constexpr(Field.OUT_SV.value)
OUT_SC = tl.constexpr(Field.OUT_SC.value)

GRAY_SHIFT = 15  # OpenCV's RGB2GRAY for uint8: (R*9798 + G*19235 + B*3735 + 2^14) >> 15
GRAY_BIAS = tl.constexpr(1 << (GRAY_SHIFT - 1))
GRAY_SHIFT_C = tl.constexpr(GRAY_SHIFT)


@triton.jit
def field(row, index: tl.constexpr):
    """One int32 parameter of the image's row (offsets use `field64`)."""
    return tl.load(row + index).to(tl.int32)


@triton.jit
def field64(row, index: tl.constexpr):
    return tl.load(row + index)


@triton.jit
def image_tile(src_ptr, meta_ptr, BU: tl.constexpr, BV: tl.constexpr):
    """The prologue of both kernels: this program's image row, its output tile and its source.

    Program axis 1 is the image, axis 0 the tile (tiles past this image's count are not `live`).
    Returns, in order: row, live; in_u, in_v, out_u, out_v (virtual input and output sizes);
    ou, ov (the tile's output coordinates) and ou_c, ov_c (clamped to the output, for table reads);
    tab_u, tab_v (coefficient-table offsets); base, src_su, src_sv, src_sc (source pointer of window
    pixel (0, 0) and its byte strides); win_u0, win_v0, win_u, win_v (the window); and fill,
    windowed, gray, gw0, gw1, gw2 (what `load_rgb` needs besides offsets).
    """
    row = meta_ptr + tl.program_id(1) * NUM_FIELDS
    tile = tl.program_id(0)
    in_u = field(row, IN_U)
    in_v = field(row, IN_V)
    out_u = field(row, OUT_U)
    out_v = field(row, OUT_V)
    tiles_u = tl.cdiv(out_u, BU)
    live = tile < tiles_u * tl.cdiv(out_v, BV)
    ou = (tile % tiles_u) * BU + tl.arange(0, BU)
    ov = (tile // tiles_u) * BV + tl.arange(0, BV)
    ou_c = tl.minimum(ou, out_u - 1)
    ov_c = tl.minimum(ov, out_v - 1)
    base = src_ptr + field64(row, SRC_OFF)
    return (
        row, live, in_u, in_v, out_u, out_v, ou, ov, ou_c, ov_c,
        field64(row, TAB_U), field64(row, TAB_V),
        base, field(row, SRC_SU), field(row, SRC_SV), field(row, SRC_SC),
        field(row, WIN_U0), field(row, WIN_V0), field(row, WIN_U), field(row, WIN_V),
        field(row, FILL), field(row, WINDOWED), field(row, GRAY), field(row, GW0), field(row, GW1), field(row, GW2),
    )


@triton.jit
def output_tile(row, ou, ov, out_u, out_v, live):
    """Where a tile is written: (plane of source channel 0, plane of channel 2 (the channel swap),
    the image's output element offset, its channel stride, the tile's element offsets, the mask)."""
    swap = field(row, SWAP)
    rel = ov[:, None] * field(row, OUT_SV) + ou[None, :] * field(row, OUT_SU)
    mask = (ov < out_v)[:, None] & (ou < out_u)[None, :] & live
    return tl.where(swap != 0, 2, 0), tl.where(swap != 0, 0, 2), field64(row, OUT_OFF), field(row, OUT_SC), rel, mask


@triton.jit
def load_rgb(base, rel, channel_stride, ok, fill, windowed, gray, gw0, gw1, gw2):
    """The three channels (int32) of source pixels at byte offsets `rel` from `base`.

    Outside the window (`ok` false, only when `windowed`) the pixel is `fill` in every channel;
    with `gray` every channel becomes OpenCV's fixed-point gray (gray of a fill pixel is itself).
    """
    if windowed != 0:
        p0 = tl.load(base + rel, mask=ok, other=0).to(tl.int32)
        p1 = tl.load(base + rel + channel_stride, mask=ok, other=0).to(tl.int32)
        p2 = tl.load(base + rel + 2 * channel_stride, mask=ok, other=0).to(tl.int32)
        p0 = tl.where(ok, p0, fill)
        p1 = tl.where(ok, p1, fill)
        p2 = tl.where(ok, p2, fill)
    else:
        p0 = tl.load(base + rel).to(tl.int32)
        p1 = tl.load(base + rel + channel_stride).to(tl.int32)
        p2 = tl.load(base + rel + 2 * channel_stride).to(tl.int32)
    if gray != 0:
        g = (p0 * gw0 + p1 * gw1 + p2 * gw2 + GRAY_BIAS) >> GRAY_SHIFT_C
        p0 = g
        p1 = g
        p2 = g
    return p0, p1, p2


@triton.jit
def store_normalized(out_ptr, norm_ptr, value, plane, out_off, rel, mask, channel_stride):
    """Write uint8-range `value` of network channel `plane` as float32 through the 256-entry table."""
    result = tl.load(norm_ptr + plane * 256 + value)
    tl.store(out_ptr + out_off + plane * channel_stride + rel, result, mask=mask)
