"""OpenCV INTER_LINEAR (uint8) coefficient tables against the installed cv2, and against OpenCV 5 in a
subprocess when `RFPIPE_OPENCV5_PATH` names a `pip install --target` directory.

tests/table_apply.py's numpy applier runs the tables (and the exact-2x area special case) on random
images; the bytes must equal `cv2.resize(..., INTER_LINEAR)`. Run as a script, this file prints the
same comparison for whichever cv2 is importable, as JSON (the subprocess mode).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
from table_apply import opencv_linear, run_beside, uniform_and_near_pairs

from rfpipe.preprocess.kernels.opencv_tables import COEF_SCALE, is_area_2x, linear_axis

ROWS = 6  # the other side of a one-axis resize (kept at ROWS -> ROWS, which OpenCV still runs)
LARGE_SIDES = [(3840, 560), (4096, 640), (2160, 560), (1920, 640), (7680, 432), (3839, 1920), (3840, 1920),
               (560, 3840), (640, 2160), (432, 4096), (1920, 3839), (4095, 4096), (4000, 1), (1, 4000)]
EDGE_SIDES = [(1, 2), (2, 1), (1, 5), (5, 1), (1, 600), (600, 1), (2, 3), (3, 2), (599, 600), (600, 599),
              (2, 4), (4, 2), (3, 9), (9, 3), (300, 100), (100, 300), (301, 100), (4, 8), (8, 4)]
# (in_w, in_h, out_w, out_h)
SPECIAL_IMAGES = [
    (200, 100, 100, 50), (202, 98, 101, 49), (2, 2, 1, 1), (6, 202, 3, 101), (398, 4, 199, 2),  # exact 2x: area
    (200, 100, 100, 51), (201, 100, 100, 50), (200, 100, 100, 100), (200, 100, 50, 50),  # 2x on one axis only
    (300, 150, 100, 50), (400, 200, 100, 50), (301, 151, 100, 50),  # exact 3x, 4x (linear), near 3x
    (100, 50, 200, 100), (99, 51, 297, 153),  # exact 2x, 3x upscales
    (97, 61, 97, 61), (1, 1, 1, 1),  # equal sizes: a copy
    (1, 1, 7, 5), (1, 50, 30, 1), (50, 1, 1, 30), (7, 5, 1, 1), (1, 80, 1, 40), (80, 1, 40, 1),  # 1-pixel sides
    (640, 480, 640, 360), (480, 640, 360, 640),
]
LARGE_IMAGES = [
    (3840, 2160, 1920, 1080),  # exact 2x: area
    (1920, 1080, 960, 540),  # exact 2x: area
    (1920, 1080, 640, 360),  # exact 3x: linear
    (1920, 1080, 640, 480), (1080, 1920, 480, 640), (3840, 2160, 640, 360), (1280, 720, 640, 427),
    (4096, 2160, 1280, 675), (640, 480, 1600, 1200),
]


def axis_cases(seed: int, count: int) -> list[tuple[int, int]]:
    """(in, out) pairs: uniform 1..600, near-equal, near and exact integer ratios, edges, 4K-ish sides."""
    rng = np.random.default_rng(seed)
    common = uniform_and_near_pairs(rng, count)
    out = rng.integers(1, 200, count - len(common))
    factor = rng.integers(2, 5, out.size)
    ratio = np.stack([out * factor + rng.integers(-1, 2, out.size), out], 1)
    ratio[::2] = ratio[::2, ::-1]  # half of them upscales
    pairs = np.concatenate([common, np.clip(ratio, 1, None)]).tolist()
    return [tuple(p) for p in pairs if p[0] != p[1]] + EDGE_SIDES + LARGE_SIDES


def image_cases(seed: int, count: int) -> list[tuple[int, int, int, int]]:
    """(in_w, in_h, out_w, out_h): up/down per axis, wide and tall, some exact 2x downscales."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        in_w, in_h, out_w, out_h = (int(v) for v in rng.integers(1, 301, 4))
        roll = rng.random()
        if roll < 0.1:  # exact 2x downscale (area path), odd and even outputs
            in_w, in_h = 2 * out_w, 2 * out_h
        elif roll < 0.35:  # elongated
            in_w, in_h = (in_w, max(1, in_h // 8)) if rng.random() < 0.5 else (max(1, in_w // 8), in_h)
        cases.append((in_w, in_h, out_w, out_h))
    return cases + SPECIAL_IMAGES + LARGE_IMAGES


def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _cv2(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def compare_axes(cases: list[tuple[int, int]], seed: int) -> list[str]:
    """Each (in, out) as a horizontal-only and a vertical-only resize; returns the mismatches."""
    rng = np.random.default_rng(seed)
    bad = []
    for in_size, out_size in cases:
        wide = _noise(rng, ROWS, in_size)
        tall = _noise(rng, in_size, ROWS)
        if not np.array_equal(opencv_linear(wide, (out_size, ROWS)), _cv2(wide, (out_size, ROWS))):
            bad.append(f"horizontal {in_size}->{out_size}")
        if not np.array_equal(opencv_linear(tall, (ROWS, out_size)), _cv2(tall, (ROWS, out_size))):
            bad.append(f"vertical {in_size}->{out_size}")
    return bad


def compare_images(cases: list[tuple[int, int, int, int]], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    bad = []
    for in_w, in_h, out_w, out_h in cases:
        image = _noise(rng, in_h, in_w)
        if not np.array_equal(opencv_linear(image, (out_w, out_h)), _cv2(image, (out_w, out_h))):
            bad.append(f"{in_w}x{in_h}->{out_w}x{out_h}")
    return bad


def run_comparison(seed: int = 2024, axis_count: int = 1500, image_count: int = 400) -> dict:
    axes = axis_cases(seed, axis_count)
    images = image_cases(seed + 1, image_count)
    return {
        "opencv": cv2.__version__,
        "opencv_file": cv2.__file__,
        "axis_pairs": len(axes),
        "image_pairs": len(images),
        "area_2x_pairs": sum(is_area_2x(c[:2], c[2:]) for c in images),
        "axis_mismatches": compare_axes(axes, seed + 2),
        "mismatches": compare_images(images, seed + 3),
    }


# --- against the installed OpenCV ---------------------------------------------------------------


def test_axis_tables_match_installed_opencv():
    cases = axis_cases(7, 1500)
    assert len(cases) > 1400
    assert compare_axes(cases, 8) == []


def test_two_axis_resizes_match_installed_opencv():
    cases = image_cases(9, 400)
    assert sum(is_area_2x(c[:2], c[2:]) for c in cases) > 30  # the area path is well covered
    assert compare_images(cases, 10) == []


def test_real_photos_match_installed_opencv():
    from rfpipe.samples import load_samples

    for name, photo in load_samples().items():
        photo = np.ascontiguousarray(photo[:480, :640])
        h, w = photo.shape[:2]
        for size in ((640, 480), (w // 2, h // 2), (w // 3, h + 17), (w + 31, h // 2), (w - 1, h - 1)):
            assert np.array_equal(opencv_linear(photo, size), _cv2(photo, size)), (name, size)


def test_installed_opencv_is_in_the_pinned_range():
    # pyproject pins opencv-python-headless>=4.8,<6
    assert int(cv2.__version__.split(".")[0]) in (4, 5)


# --- the tables by hand -------------------------------------------------------------------------


def test_downscale_by_two_axis_by_hand():
    # in 4 -> out 2: scale 2.0, f = (d + 0.5) * 2 - 0.5 = 0.5, 2.5 -> s = 0, 2 with fraction 0.5
    axis = linear_axis(4, 2, horizontal=True)
    assert axis.index.tolist() == [0, 2]
    assert axis.weights.tolist() == [[1024, 1024], [1024, 1024]]


def test_upscale_edges_clamp_differently_per_axis_by_hand():
    # in 4 -> out 8: scale 0.5, f = (d + 0.5) * 0.5 - 0.5 = -0.25, 0.25, ..., 3.25
    h = linear_axis(4, 8, horizontal=True)
    v = linear_axis(4, 8, horizontal=False)
    # horizontal: s < 0 becomes (0, f=0); s >= in - 1 becomes (in - 1, f=0)
    assert h.index.tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    assert h.weights[0].tolist() == [2048, 0] and h.weights[7].tolist() == [2048, 0]
    assert h.weights[1].tolist() == [1536, 512]  # f = 0.25: rint(0.75 * 2048), rint(0.25 * 2048)
    # vertical: s is kept (-1 and 3) and the rows are clamped when read; weights unchanged
    assert v.index.tolist() == [-1, 0, 0, 1, 1, 2, 2, 3]
    assert v.weights[0].tolist() == [512, 1536]  # f = -0.25 - (-1) = 0.75
    assert v.weights[7].tolist() == [1536, 512]
    assert (h.weights.sum(1) == COEF_SCALE).all() and (v.weights.sum(1) == COEF_SCALE).all()


def test_weights_always_sum_to_the_coefficient_scale():
    for in_size, out_size in axis_cases(3, 300):
        for horizontal in (True, False):
            assert (linear_axis(in_size, out_size, horizontal).weights.sum(1) == COEF_SCALE).all()


def test_exact_2x_detection():
    assert is_area_2x((200, 100), (100, 50))
    assert is_area_2x((2, 2), (1, 1))
    assert is_area_2x((3840, 2160), (1920, 1080))
    assert not is_area_2x((201, 100), (100, 50))  # 2.01 on x
    assert not is_area_2x((200, 100), (100, 100))  # one axis only
    assert not is_area_2x((400, 200), (100, 50))  # exact 4x runs the linear path
    assert not is_area_2x((100, 50), (200, 100))  # upscale
    assert not is_area_2x((100, 50), (100, 50))


def test_area_2x_is_the_2x2_mean_rounded_half_up():
    image = np.array([[[0], [1]], [[1], [0]]], np.uint8).repeat(3, axis=2)  # sum 2 -> (2 + 2) >> 2 = 1
    assert opencv_linear(image, (1, 1)).tolist() == [[[1, 1, 1]]]
    assert _cv2(image, (1, 1)).tolist() == [[[1, 1, 1]]]
    image = np.array([[[0], [0]], [[1], [0]]], np.uint8).repeat(3, axis=2)  # sum 1 -> (1 + 2) >> 2 = 0
    assert _cv2(image, (1, 1)).tolist() == opencv_linear(image, (1, 1)).tolist() == [[[0, 0, 0]]]


# --- against OpenCV 5 (subprocess) --------------------------------------------------------------


def test_tables_match_opencv_5():
    result = run_beside("RFPIPE_OPENCV5_PATH", "opencv-python-headless==5.0.0.93", __file__)
    assert result["opencv"].startswith("5."), result["opencv"]
    assert result["opencv_file"].startswith(str(Path(os.environ["RFPIPE_OPENCV5_PATH"]).resolve()))
    assert result["area_2x_pairs"] > 30
    assert result["axis_mismatches"] == []
    assert result["mismatches"] == []


if __name__ == "__main__":
    print(json.dumps(run_comparison()))
