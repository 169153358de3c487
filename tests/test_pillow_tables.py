"""Pillow BILINEAR coefficient tables and pass order against the installed Pillow, and against
Pillow 13 in a subprocess when `RFPIPE_PILLOW13_PATH` names a `pip install --target` directory.

The tables are applied by tests/table_apply.py's plain numpy appliers to random images and the
bytes compared with `Image.resize(..., BILINEAR)`: one-axis resizes test every table on its own
(sizes 1..600 plus 4K-ish sides), two-axis resizes test the pass order. Run as a script, this
file prints the same comparison for whichever Pillow is importable, as JSON (the subprocess mode).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL
from PIL import Image
from table_apply import pillow_pass, pillow_resize, run_beside, uniform_and_near_pairs

from rfpipe.preprocess.kernels import pillow_tables
from rfpipe.preprocess.kernels.pillow_tables import (
    axis_table,
    pillow_version,
    resize_plan,
    vertical_first,
)

ROWS = 6  # the other side of a one-axis resize: 6 x 3 random samples per output pixel
LARGE_SIDES = [(3840, 560), (4096, 640), (2160, 560), (1080, 560), (1920, 640), (7680, 432), (3839, 1920),
               (560, 3840), (640, 2160), (432, 4096), (1920, 3839), (4095, 4096), (4096, 4095),
               (4000, 1), (1, 4000), (3840, 3840)]
EDGE_SIDES = [(1, 1), (1, 2), (2, 1), (1, 5), (5, 1), (1, 600), (600, 1), (2, 3), (3, 2), (599, 600),
              (600, 599), (2, 4), (4, 2), (3, 9), (9, 3), (7, 7), (300, 100), (100, 300)]
# (in_w, in_h, out_w, out_h): camera-sized frames to network sizes, wide and tall
LARGE_IMAGES = [(1920, 1080, 560, 560), (1080, 1920, 560, 560), (3840, 2160, 560, 560), (1280, 720, 640, 640),
                (1920, 1080, 576, 432), (640, 480, 1280, 960), (100, 1500, 640, 640)]
# pass-order boundaries. Pillow 13: the height shrink equal to, or one more than, twice the width
# shrink. Pillow 12.2/12.3: height equal to, or above, 100 x the width (the first five: vertical first
# in 12.2/12.3 but not in 13; the last two: the other way round)
ORDER_BOUNDARY = [(100, 100, 90, 80), (100, 100, 90, 79), (200, 150, 180, 110), (200, 150, 180, 109),
                  (50, 100, 80, 60), (60, 61, 200, 60), (61, 60, 60, 59), (97, 203, 96, 200), (97, 203, 96, 201)]
TALL = [(2, 300, 1, 299), (2, 201, 1, 200), (3, 301, 2, 300), (5, 501, 4, 499), (5, 501, 3, 497),
        (2, 293, 77, 90), (4, 401, 3, 398), (2, 500, 40, 100), (3, 900, 2, 897), (1, 150, 5, 40),
        (4, 400, 3, 300), (2, 200, 1, 150)]


def axis_cases(seed: int, count: int) -> list[tuple[int, int]]:
    """(in, out) pairs: uniform 1..600, near-equal, extreme ratios, edges and 4K-ish sides."""
    rng = np.random.default_rng(seed)
    common = uniform_and_near_pairs(rng, count)
    small = rng.integers(1, 12, count - len(common))
    big = rng.integers(100, 601, small.size)
    flip = rng.random(small.size) < 0.5
    extreme = np.stack([np.where(flip, small, big), np.where(flip, big, small)], 1)
    pairs = np.concatenate([common, extreme]).tolist()
    return [tuple(p) for p in pairs] + EDGE_SIDES + LARGE_SIDES


def image_cases(seed: int, count: int) -> list[tuple[int, int, int, int]]:
    """(in_w, in_h, out_w, out_h) with both axes changing: up/down per axis, wide and tall."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        in_w, in_h, out_w, out_h = (int(v) for v in rng.integers(1, 301, 4))
        if rng.random() < 0.3:  # elongated shapes
            in_w, in_h = (in_w, max(1, in_h // 8)) if rng.random() < 0.5 else (max(1, in_w // 8), in_h)
        if in_w != out_w and in_h != out_h:
            cases.append((in_w, in_h, out_w, out_h))
    return cases + ORDER_BOUNDARY + TALL + LARGE_IMAGES


def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _pillow(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def compare_axes(cases: list[tuple[int, int]], seed: int) -> list[str]:
    """Each (in, out) as a horizontal-only and a vertical-only resize; returns the mismatches."""
    rng = np.random.default_rng(seed)
    bad = []
    for in_size, out_size in cases:
        wide = _noise(rng, ROWS, in_size)
        tall = _noise(rng, in_size, ROWS)
        if in_size == out_size:  # Pillow skips the pass: a copy
            ours_w, ours_t = wide, tall
        else:
            table = axis_table(in_size, out_size)
            ours_w, ours_t = pillow_pass(wide, table, axis=1), pillow_pass(tall, table, axis=0)
        if not np.array_equal(ours_w, _pillow(wide, (out_size, ROWS))):
            bad.append(f"horizontal {in_size}->{out_size}")
        if not np.array_equal(ours_t, _pillow(tall, (ROWS, out_size))):
            bad.append(f"vertical {in_size}->{out_size}")
    return bad


def compare_images(cases: list[tuple[int, int, int, int]], seed: int) -> dict:
    """Two-axis resizes against the installed Pillow, with the installed version's pass order.

    Also counts the cases whose bytes depend on the order (the other order gives other bytes), so a
    wrong rule cannot pass unnoticed: those cases decide it.
    """
    rng = np.random.default_rng(seed)
    major, minor = pillow_version()
    bad, order_sensitive, sensitive_vertical_first = [], 0, 0
    for in_w, in_h, out_w, out_h in cases:
        image = _noise(rng, in_h, in_w)
        theirs = _pillow(image, (out_w, out_h))
        ours = pillow_resize(image, (out_w, out_h))
        if not np.array_equal(ours, theirs):
            bad.append(f"{in_w}x{in_h}->{out_w}x{out_h}")
        if in_w != out_w and in_h != out_h and in_w * in_h <= 300 * 300:  # (the large ones cost most)
            rule = vertical_first((in_w, in_h), (out_w, out_h), major, minor)
            forced = resize_plan((in_w, in_h), (out_w, out_h), major, minor)
            other = _apply_order(image, forced, vertical_first=not rule)
            if not np.array_equal(other, theirs):
                order_sensitive += 1
                sensitive_vertical_first += rule
    return {"mismatches": bad, "order_sensitive": order_sensitive, "order_sensitive_vertical_first": sensitive_vertical_first}


def _apply_order(image: np.ndarray, plan: pillow_tables.ResizePlan, vertical_first: bool) -> np.ndarray:
    passes = [(plan.vertical, 0), (plan.horizontal, 1)] if vertical_first else [(plan.horizontal, 1), (plan.vertical, 0)]
    for table, axis in passes:
        image = pillow_pass(image, table, axis)
    return image


def run_comparison(seed: int = 2024, axis_count: int = 1500, image_count: int = 400) -> dict:
    axes = axis_cases(seed, axis_count)
    images = image_cases(seed + 1, image_count)
    result = compare_images(images, seed + 2)
    result.update(
        pillow=PIL.__version__,
        pillow_file=PIL.__file__,
        axis_pairs=len(axes),
        image_pairs=len(images),
        axis_mismatches=compare_axes(axes, seed + 3),
    )
    return result


# --- against the installed Pillow ---------------------------------------------------------------


def test_axis_tables_match_installed_pillow():
    cases = axis_cases(7, 1500)
    assert len(cases) > 1500
    assert compare_axes(cases, 8) == []


def test_two_axis_resizes_match_installed_pillow():
    result = compare_images(image_cases(9, 400), 10)
    assert result["mismatches"] == []
    # the order decides the bytes of a good share of these cases, so the comparison can see a wrong order
    assert result["order_sensitive"] > 50


def test_real_photos_match_installed_pillow():
    from rfpipe.samples import load_samples

    for name, photo in load_samples().items():
        photo = np.ascontiguousarray(photo[:480, :640])  # moderate sizes keep the numpy oracle quick
        h, w = photo.shape[:2]
        for size in ((560, 560), (w // 3, h + 17), (w + 31, h // 2), (w - 1, h - 1)):
            assert np.array_equal(pillow_resize(photo, size), _pillow(photo, size)), (name, size)


def test_installed_pillow_is_in_the_pinned_range():
    # pyproject pins pillow>=12.0,<14; the rule below is known for exactly these majors
    assert pillow_version()[0] in (12, 13)


# --- the pass-order rule itself -----------------------------------------------------------------


def test_pillow_version_parsing():
    assert pillow_version("13.0.0") == (13, 0)
    assert pillow_version("12.3.0") == (12, 3)
    assert pillow_version("12.1.1") == (12, 1)
    assert pillow_version("13.1.0.dev0") == (13, 1)
    assert pillow_version("12.2rc1") == (12, 2)
    assert pillow_version() == tuple(int(v) for v in PIL.__version__.split(".")[:2])


def test_pillow_before_12_2_always_runs_horizontal_first():
    for in_size, out_size in [((100, 100), (90, 10)), ((1080, 1920), (560, 560)), ((2, 300), (1, 10))]:
        assert not vertical_first(in_size, out_size, major=12, minor=1)
        assert not vertical_first(in_size, out_size, major=12)  # minor defaults to 0
        assert not vertical_first(in_size, out_size, major=11, minor=3)


def test_pillow_12_2_rule_by_hand():
    # vertical first iff in_h > 100 * in_w and out_h < in_h (Image.resize, Python side)
    for minor in (2, 3):
        assert vertical_first((2, 201), (1, 200), major=12, minor=minor)  # 201 > 200
        assert not vertical_first((2, 200), (1, 150), major=12, minor=minor)  # 200 > 200 is false
        assert vertical_first((2, 201), (50, 200), major=12, minor=minor)  # width may grow
        assert not vertical_first((2, 201), (1, 201), major=12, minor=minor)  # height unchanged
        assert not vertical_first((2, 201), (1, 400), major=12, minor=minor)  # height grows
        assert not vertical_first((1080, 1920), (560, 560), major=12, minor=minor)  # not that tall


def test_pillow_13_rule_by_hand():
    # vertical first iff (in_h - out_h) > 0 and (in_h - out_h) > 2 * (in_w - out_w)
    assert not vertical_first((100, 100), (90, 80), major=13)  # 20 > 2*10 is false: the boundary
    assert vertical_first((100, 100), (90, 79), major=13)  # 21 > 20
    assert vertical_first((50, 100), (80, 60), major=13)  # width grows: 40 > -60
    assert not vertical_first((100, 50), (60, 80), major=13)  # height grows: never
    assert not vertical_first((100, 100), (50, 100), major=13)  # height unchanged: 0 > 0 is false
    assert vertical_first((100, 100), (100, 99), major=13)  # width unchanged: 1 > 0
    assert not vertical_first((1920, 1080), (560, 560), major=13)  # 520 > 2720 is false
    assert vertical_first((1080, 1920), (560, 560), major=13)  # 1360 > 1040
    assert not vertical_first((2, 201), (1, 200), major=13)  # the 12.2 tall rule is gone: 1 > 2 is false
    assert vertical_first((1080, 1920), (560, 560), major=14)  # later majors keep the 13 rule


def test_resize_plan_skips_unchanged_axes_and_orders_only_two_passes():
    plan = resize_plan((100, 100), (100, 50), major=13)  # rule true, but there is one pass only
    assert plan.horizontal is None and plan.vertical is not None and not plan.vertical_first
    plan = resize_plan((100, 100), (40, 100), major=13)
    assert plan.vertical is None and plan.horizontal is not None and not plan.vertical_first
    plan = resize_plan((100, 100), (100, 100), major=13)
    assert plan.horizontal is None and plan.vertical is None
    plan = resize_plan((1080, 1920), (560, 560), major=13)
    assert plan.vertical_first and plan.horizontal.out_size == 560 and plan.vertical.in_size == 1920
    assert not resize_plan((1080, 1920), (560, 560), major=12, minor=3).vertical_first
    assert resize_plan((2, 300), (1, 299), major=12, minor=3).vertical_first
    assert not resize_plan((2, 300), (1, 299), major=13).vertical_first


def test_rows_for_horizontal_are_exactly_the_rows_the_vertical_pass_reads():
    rng = np.random.default_rng(5)
    for in_w, in_h, out_w, out_h in [(300, 200, 100, 150), (64, 97, 100, 13), (50, 9, 80, 3), (30, 500, 31, 7)]:
        plan = resize_plan((in_w, in_h), (out_w, out_h), major=12)
        start, stop = plan.rows_for_horizontal
        v = plan.vertical
        read = set()
        for o in range(v.out_size):
            read.update(range(v.first[o], v.first[o] + v.count[o]))
        assert (start, stop) == (min(read), max(read) + 1)
        # running the horizontal pass on those rows only, the vertical pass shifted, gives the same bytes
        image = _noise(rng, in_h, in_w)
        rows = pillow_pass(image[start:stop], plan.horizontal, axis=1)
        shifted = pillow_tables.AxisTable(stop - start, v.out_size, v.first - start, v.count, v.weights)
        assert np.array_equal(pillow_pass(rows, shifted, axis=0), _pillow(image, (out_w, out_h)))
    assert resize_plan((100, 200), (50, 60), major=13).rows_for_horizontal == (0, -1)  # vertical runs first


def test_installed_pillow_follows_its_own_rule_on_order_sensitive_cases():
    """For each case where the two orders give different bytes, the installed Pillow picks the rule's."""
    major, minor = pillow_version()
    rng = np.random.default_rng(12)
    decided = 0
    for in_w, in_h, out_w, out_h in ORDER_BOUNDARY + TALL + image_cases(13, 150)[:150]:
        image = _noise(rng, in_h, in_w)
        plan = resize_plan((in_w, in_h), (out_w, out_h), major, minor)
        h_first = _apply_order(image, plan, vertical_first=False)
        v_first = _apply_order(image, plan, vertical_first=True)
        if np.array_equal(h_first, v_first):
            continue
        decided += 1
        theirs = _pillow(image, (out_w, out_h))
        expected = v_first if vertical_first((in_w, in_h), (out_w, out_h), major, minor) else h_first
        assert np.array_equal(theirs, expected), (in_w, in_h, out_w, out_h)
    assert decided > 30


def test_pillow_13_gives_other_bytes_than_pillow_12_for_many_random_pairs():
    """DESIGN.md: about 30 % of random size pairs differ between Pillow 12.3 and 13 (all by the order)."""
    rng = np.random.default_rng(14)
    cases = image_cases(15, 200)[:200]
    differ = 0
    for in_w, in_h, out_w, out_h in cases:
        plan_12 = resize_plan((in_w, in_h), (out_w, out_h), major=12, minor=3)
        plan_13 = resize_plan((in_w, in_h), (out_w, out_h), major=13)
        if plan_12.vertical_first != plan_13.vertical_first:
            image = _noise(rng, in_h, in_w)
            differ += not np.array_equal(_apply_order(image, plan_12, plan_12.vertical_first),
                                         _apply_order(image, plan_13, plan_13.vertical_first))
    assert 0.15 * len(cases) < differ < 0.5 * len(cases)


# --- against Pillow 13 (subprocess) ---------------------------------------------------------------


def test_tables_and_pass_order_match_pillow_13():
    result = run_beside("RFPIPE_PILLOW13_PATH", "pillow==13.0.0", __file__)
    assert result["pillow"].startswith("13."), result["pillow"]
    assert result["pillow_file"].startswith(str(Path(os.environ["RFPIPE_PILLOW13_PATH"]).resolve()))
    assert result["axis_mismatches"] == []
    assert result["mismatches"] == []
    # Pillow 13 did run the vertical pass first where the rule says, on cases where it shows
    assert result["order_sensitive_vertical_first"] > 20
    assert result["order_sensitive"] > result["order_sensitive_vertical_first"]


if __name__ == "__main__":
    print(json.dumps(run_comparison()))
