"""Host side of the Triton kernels: what each image needs resampled, as parameter rows and tables.

`image_work(plan)` turns a geometry plan into at most two resamples: an optional OpenCV uint8 step
(the letterbox dataset-version resize) and the final resize to the network size. `LaunchTables`
packs the resamples of a whole batch into one int64 parameter table (a row per image, columns
`triton_source.Field`) and one int32 coefficient buffer (each distinct table once), so a batch of
any mix of sizes is one launch per kernel. Static parts are cached per resample; only source and
output placement change from call to call.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from rfpipe.config import ImageSize, ResizeFilter
from rfpipe.geometry import ImagePlan
from rfpipe.preprocess.kernels import opencv_tables, pillow_tables
from rfpipe.preprocess.kernels.triton_source import FIELDS, Field

# OpenCV's fixed-point RGB2GRAY weights per source channel (bgr input: channel 0 is blue).
GRAY_WEIGHTS = {"bgr": (3735, 19235, 9798), "rgb": (9798, 19235, 3735)}

# (BV, BU): a tile of 8 output rows x 64 output columns. Triton's interpreter pays per operation,
# not per element, so there one large tile per image keeps the CPU tests fast.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
PILLOW_BLOCK = (64, 128) if INTERPRETED else (8, 64)
OPENCV_BLOCK = (64, 128) if INTERPRETED else (8, 64)


@dataclass(frozen=True)
class Resample:
    """One resample of one image: its virtual input (a window of source pixels on a fill) to `out`."""

    filter: ResizeFilter
    in_size: ImageSize
    out_size: ImageSize
    window: tuple[int, int, int, int]  # x0, y0, width, height of the source pixels on the virtual input
    fill: int
    gray: bool
    swap: bool
    color_format: str


@dataclass(frozen=True, eq=False)
class ImageWork:
    """Source rectangle (x0, y0, x1, y1 in frame pixels) and the resamples that follow it.

    Compared and hashed by identity: `image_work` returns the same object for equal plans, so
    batch signatures built from these hash in constant time.
    """

    region: tuple[int, int, int, int]
    step: Resample | None  # the OpenCV uint8 dataset-version step into an intermediate, if any
    final: Resample  # to the network size, float32 out


@functools.lru_cache(maxsize=1024)
def image_work(plan: ImagePlan, color_format: str, adjusted: bool) -> ImageWork:
    """The resamples for `plan`; `adjusted` means grayscale/contrast already ran on the crop (CPU).

    For adjusted images the region is in crop coordinates (the adjusted image is the crop).
    """
    cx0, cy0, cx1, cy1 = plan.crop_box
    if adjusted:
        cx0, cy0, cx1, cy1 = 0, 0, cx1 - cx0, cy1 - cy0
    gray = plan.grayscale and not adjusted
    canvas = plan.canvas
    final_filter = plan.resize_filter
    if canvas is None:
        full = (0, 0, cx1 - cx0, cy1 - cy0)
        final = Resample(final_filter, plan.resize_from, plan.target, full, 0, gray, plan.swap_channels, color_format)
        return ImageWork((cx0, cy0, cx1, cy1), None, final)
    wx0, wy0, wx1, wy1 = canvas.src_box
    region = (cx0 + wx0, cy0 + wy0, cx0 + wx1, cy0 + wy1)
    placed = (*canvas.offset, *canvas.placed)
    if not canvas.resizes:
        final = Resample(final_filter, canvas.size, plan.target, placed, canvas.fill, gray, plan.swap_channels, color_format)
        return ImageWork(region, None, final)
    window = ImageSize(wx1 - wx0, wy1 - wy0)
    step = Resample(
        ResizeFilter.CV2_LINEAR, window, canvas.placed, (0, 0, *window), 0, gray, False, color_format
    )
    final = Resample(final_filter, canvas.size, plan.target, placed, canvas.fill, False, plan.swap_channels, color_format)
    return ImageWork(region, step, final)


def _pack(first: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.concatenate([first.astype(np.int32), weights.astype(np.int32).ravel()])


@functools.lru_cache(maxsize=1024)
def _pillow_axis(in_size: int, out_size: int) -> tuple[np.ndarray, int]:
    if in_size == out_size:  # Pillow skips the axis: the identity tap rounds back to the same byte
        first = np.arange(out_size, dtype=np.int32)
        return _pack(first, np.full((out_size, 1), 1 << pillow_tables.PRECISION_BITS)), 1
    table = pillow_tables.axis_table(in_size, out_size)
    return _pack(table.first, table.weights), table.ksize


@functools.lru_cache(maxsize=1024)
def _opencv_axis(in_size: int, out_size: int, horizontal: bool, area: bool) -> np.ndarray:
    if area:  # INTER_AREA's 2x path reads the 2x2 block at (2d, 2d + 1) of each axis
        return _pack(2 * np.arange(out_size, dtype=np.int32), np.zeros((out_size, 2), np.int32))
    axis = opencv_tables.linear_axis(in_size, out_size, horizontal)
    return _pack(axis.index, axis.weights)


@dataclass(frozen=True)
class _Static:
    row: np.ndarray  # int64 [FIELDS]; TAB_* relative to this resample's own tables
    tables: np.ndarray  # int32
    transposed: bool  # u is y (Pillow's vertical pass runs first)
    tiles: int


def _tiles(out_u: int, out_v: int, block: tuple[int, int]) -> int:
    bv, bu = block
    return -(-out_u // bu) * -(-out_v // bv)


@functools.lru_cache(maxsize=1024)
def _static(resample: Resample, pillow: tuple[int, int] | None) -> _Static:
    (iw, ih), (ow, oh) = resample.in_size, resample.out_size
    x0, y0, ww, wh = resample.window
    row = np.zeros(FIELDS, np.int64)
    row[Field.FILL] = resample.fill
    row[Field.WINDOWED] = int((x0, y0, ww, wh) != (0, 0, iw, ih))
    row[Field.GRAY] = int(resample.gray)
    row[Field.GW0 : Field.GW2 + 1] = GRAY_WEIGHTS[resample.color_format]
    row[Field.SWAP] = int(resample.swap)
    if resample.filter is ResizeFilter.PILLOW_BILINEAR:
        transposed = iw != ow and ih != oh and pillow_tables.vertical_first((iw, ih), (ow, oh), *(pillow or ()))
        tab_x, k_x = _pillow_axis(iw, ow)
        tab_y, k_y = _pillow_axis(ih, oh)
        if transposed:
            (iw, ih), (ow, oh), (x0, y0, ww, wh) = (ih, iw), (oh, ow), (y0, x0, wh, ww)
            tab_x, k_x, tab_y, k_y = tab_y, k_y, tab_x, k_x
        row[Field.K_U], row[Field.K_V] = k_x, k_y
        block = PILLOW_BLOCK
    else:
        transposed = False
        area = opencv_tables.is_area_2x((iw, ih), (ow, oh))
        row[Field.AREA] = int(area)
        tab_x = _opencv_axis(iw, ow, True, area)
        tab_y = _opencv_axis(ih, oh, False, area)
        block = OPENCV_BLOCK
    row[Field.IN_U], row[Field.IN_V], row[Field.OUT_U], row[Field.OUT_V] = iw, ih, ow, oh
    row[Field.WIN_U0], row[Field.WIN_V0], row[Field.WIN_U], row[Field.WIN_V] = x0, y0, ww, wh
    row[Field.TAB_U], row[Field.TAB_V] = 0, tab_x.size
    return _Static(row, np.concatenate([tab_x, tab_y]), transposed, _tiles(ow, oh, block))


@dataclass(frozen=True)
class Placement:
    """Where an image's pixels are: byte offset and x / y / channel strides (bytes or elements)."""

    offset: int
    sx: int
    sy: int
    sc: int


class LaunchTables:
    """Parameter rows and coefficient tables for one kernel launch over a batch.

    >>> t = LaunchTables([work.final for work in works], pillow=(12, 3))  # sketch  # doctest: +SKIP
    >>> t.finish(sources, outputs)  # -> (meta int64 [N, FIELDS], coefficients int32)  # sketch  # doctest: +SKIP
    """

    def __init__(self, resamples: list[Resample], pillow: tuple[int, int] | None = None):
        statics = [_static(r, pillow) for r in resamples]
        offsets: dict[int, int] = {}
        blocks = []
        size = 0
        rows = np.stack([s.row for s in statics])
        for i, s in enumerate(statics):
            key = id(s)
            if key not in offsets:  # images of the same shape share one copy of the tables
                offsets[key] = size
                blocks.append(s.tables)
                size += s.tables.size
            rows[i, Field.TAB_U] += offsets[key]
            rows[i, Field.TAB_V] += offsets[key]
        self.rows = rows
        self.coefficients = np.concatenate(blocks)
        self.transposed = np.array([s.transposed for s in statics])
        self.tiles = max(s.tiles for s in statics)

    def finish(self, sources: list[Placement], outputs: list[Placement]) -> np.ndarray:
        """The parameter table with source and output placement filled in (x/y mapped to u/v)."""
        rows = self.rows.copy()
        src = np.array([(p.offset, p.sx, p.sy, p.sc) for p in sources], np.int64).reshape(-1, 4)
        out = np.array([(p.offset, p.sx, p.sy, p.sc) for p in outputs], np.int64).reshape(-1, 4)
        t = self.transposed
        rows[:, Field.SRC_OFF] = src[:, 0]
        rows[:, Field.SRC_SU] = np.where(t, src[:, 2], src[:, 1])
        rows[:, Field.SRC_SV] = np.where(t, src[:, 1], src[:, 2])
        rows[:, Field.SRC_SC] = src[:, 3]
        rows[:, Field.OUT_OFF] = out[:, 0]
        rows[:, Field.OUT_SU] = np.where(t, out[:, 2], out[:, 1])
        rows[:, Field.OUT_SV] = np.where(t, out[:, 1], out[:, 2])
        rows[:, Field.OUT_SC] = out[:, 3]
        return rows
