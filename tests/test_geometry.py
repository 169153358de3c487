"""Geometry: hand-computed plans for every mode, dynamic sizes, overrides and errors, plus properties
that hold for any size and mode (hypothesis)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import make_config
from hypothesis import event, given, settings
from hypothesis import strategies as st

import rfpipe
from rfpipe.config import ContrastType, ResizeFilter
from rfpipe.geometry import (
    Canvas,
    ImageSize,
    Overrides,
    StaticCropOffset,
    plan_image,
    resolve_target_size,
)

TARGET = ImageSize(64, 64)


# --- letterbox ---------------------------------------------------------------------------------


def test_letterbox_192x168_into_64x96():
    cfg = make_config(mode="letterbox", size=(64, 64), dataset=(64, 96), padding_value=127)
    plan = plan_image(cfg, ImageSize(192, 168), TARGET)
    # s = min(64/192, 96/168) = min(0.3333, 0.5714) = 64/192
    # new size = (int(192 * 64/192), int(168 * 64/192)) = (int(64.0), int(56.0)) = (64, 56)
    # pad_left = int((64 - 64) / 2) = 0, pad_right = 64 - 0 - 64 = 0
    # pad_top = int((96 - 56) / 2) = 20, pad_bottom = 96 - 20 - 56 = 20
    assert plan.canvas == Canvas(
        size=ImageSize(64, 96), src_box=(0, 0, 192, 168), placed=ImageSize(64, 56), offset=(0, 20), fill=127
    )
    assert plan.canvas.resizes
    m = plan.metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (0, 20, 0, 20)
    assert m.scale_width == m.scale_height == 64 / 192
    assert m.original_size == ImageSize(192, 168)
    assert m.size_after_pre_processing == ImageSize(192, 168)
    assert m.nonsquare_intermediate_size == ImageSize(64, 96)
    assert m.inference_size == TARGET
    assert m.static_crop_offset == StaticCropOffset(0, 0, 192, 168)
    assert plan.resize_from == ImageSize(64, 96)
    assert plan.target == TARGET
    assert plan.crop_box == (0, 0, 192, 168)


def test_letterbox_odd_padding_goes_right_and_bottom():
    cfg = make_config(mode="letterbox", size=(64, 64), dataset=(64, 97))
    # 100x100 into 64x97: s = min(0.64, 0.97) = 0.64, new (64, 64);
    # pad_top = int((97 - 64) / 2) = int(16.5) = 16, pad_bottom = 97 - 16 - 64 = 17
    m = plan_image(cfg, ImageSize(100, 100), TARGET).metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (0, 16, 0, 17)

    cfg = make_config(mode="letterbox", size=(64, 64), dataset=(97, 64))
    # 50x100 into 97x64: s = min(1.94, 0.64) = 0.64, new (int(32.0), int(64.0)) = (32, 64);
    # pad_left = int((97 - 32) / 2) = int(32.5) = 32, pad_right = 97 - 32 - 32 = 33
    plan = plan_image(cfg, ImageSize(50, 100), TARGET)
    m = plan.metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (32, 0, 33, 0)
    assert plan.canvas.offset == (32, 0) and plan.canvas.placed == ImageSize(32, 64)


def test_letterbox_truncation_can_leave_the_long_side_one_pixel_short():
    cfg = make_config(mode="letterbox", size=(64, 64), dataset=(20, 20))
    # 77x40 into 20x20: s = min(20/77, 20/40) = 20/77; 77 * (20/77) = 19.999999999999996 in
    # float64, so new width = int(...) = 19 (not 20); new height = int(40 * 20/77) = int(10.39) = 10.
    # pad_left = int(1 / 2) = 0, pad_right = 1; pad_top = int(10 / 2) = 5, pad_bottom = 5
    plan = plan_image(cfg, ImageSize(77, 40), TARGET)
    assert plan.canvas.placed == ImageSize(19, 10)
    m = plan.metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (0, 5, 1, 5)
    assert m.scale_width == 20 / 77


def test_letterbox_upscales_small_images():
    cfg = make_config(mode="letterbox", size=(64, 64), dataset=(100, 60))
    # 20x10 into 100x60: s = min(5.0, 6.0) = 5.0, new (100, 50); pad_top = int(10/2) = 5, bottom 5
    plan = plan_image(cfg, ImageSize(20, 10), TARGET)
    assert plan.canvas.placed == ImageSize(100, 50)
    m = plan.metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (0, 5, 0, 5)
    assert m.scale_width == m.scale_height == 5.0


def test_letterbox_same_aspect_has_no_resize_when_sizes_match():
    cfg = make_config(mode="letterbox", size=(64, 64), dataset=(80, 60))
    plan = plan_image(cfg, ImageSize(80, 60), TARGET)
    assert plan.canvas.placed == ImageSize(80, 60) and not plan.canvas.resizes
    m = plan.metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (0, 0, 0, 0)
    assert m.scale_width == 1.0


def test_letterbox_reflect_edges_plans_like_letterbox():
    a = plan_image(make_config(mode="letterbox", size=(64, 64), dataset=(90, 60), padding_value=255), ImageSize(123, 45), TARGET)
    b = plan_image(make_config(mode="letterbox-reflect-edges", size=(64, 64), dataset=(90, 60), padding_value=255), ImageSize(123, 45), TARGET)
    assert a == b


def test_letterbox_too_elongated_is_an_error():
    cfg = make_config(mode="letterbox", size=(64, 64), dataset=(64, 96))
    # 1000x1: s = min(0.064, 96) = 0.064, new height int(1 * 0.064) = 0
    with pytest.raises(ValueError, match="1000x1 is too elongated to letterbox into 64x96.*64x0"):
        plan_image(cfg, ImageSize(1000, 1), TARGET)


# --- center-crop -------------------------------------------------------------------------------


def test_center_crop_when_image_is_larger():
    cfg = make_config(mode="center-crop", size=(64, 64), dataset=(101, 77))
    plan = plan_image(cfg, ImageSize(200, 150), TARGET)
    # x: cut 200 - 101 = 99, floor half left = 49, right 50: window x 49..150
    # y: cut 150 - 77 = 73, floor half top = 36, bottom 37: window y 36..113
    assert plan.canvas == Canvas(ImageSize(101, 77), (49, 36, 150, 113), ImageSize(101, 77), (0, 0), 0)
    assert not plan.canvas.resizes
    m = plan.metadata
    # cropping is reported as negative pads
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (-49, -36, -50, -37)
    assert m.scale_width == m.scale_height == 1.0
    assert m.nonsquare_intermediate_size == ImageSize(101, 77)
    assert plan.resize_from == ImageSize(101, 77)


def test_center_crop_when_image_is_smaller_pads_with_zero():
    cfg = make_config(mode="center-crop", size=(64, 64), dataset=(101, 77), padding_value=127)
    plan = plan_image(cfg, ImageSize(50, 40), TARGET)
    # x: pad 101 - 50 = 51: left 25, right 26; y: pad 77 - 40 = 37: top 18, bottom 19
    # the canvas is zeros whatever padding_value says (as in the reference)
    assert plan.canvas == Canvas(ImageSize(101, 77), (0, 0, 50, 40), ImageSize(50, 40), (25, 18), 0)
    m = plan.metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (25, 18, 26, 19)


def test_center_crop_mixed_crops_one_axis_and_pads_the_other():
    cfg = make_config(mode="center-crop", size=(64, 64), dataset=(101, 77))
    plan = plan_image(cfg, ImageSize(200, 40), TARGET)
    # x cropped as above (49 | 101 | 50), y padded (18 | 40 | 19)
    assert plan.canvas == Canvas(ImageSize(101, 77), (49, 0, 150, 40), ImageSize(101, 40), (0, 18), 0)
    m = plan.metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (-49, 18, -50, 19)


def test_center_crop_equal_size_is_identity():
    cfg = make_config(mode="center-crop", size=(64, 64), dataset=(101, 77))
    plan = plan_image(cfg, ImageSize(101, 77), TARGET)
    assert plan.canvas == Canvas(ImageSize(101, 77), (0, 0, 101, 77), ImageSize(101, 77), (0, 0), 0)
    m = plan.metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (0, 0, 0, 0)


# --- static crop, overrides, single step --------------------------------------------------------


def test_static_crop_bounds_are_int_of_percent_times_dim():
    cfg = make_config(size=(64, 48), static_crop=(10, 5, 90, 95))  # x_min, y_min, x_max, y_max
    plan = plan_image(cfg, ImageSize(333, 211), ImageSize(64, 48))
    # x0 = int(10/100*333) = int(33.300000000000004) = 33;  x1 = int(90/100*333) = int(299.7) = 299
    # y0 = int(5/100*211) = int(10.55) = 10;                y1 = int(95/100*211) = int(200.45) = 200
    assert plan.crop_box == (33, 10, 299, 200)
    assert plan.crop_size == ImageSize(266, 190)
    m = plan.metadata
    assert m.static_crop_offset == StaticCropOffset(33, 10, 266, 190)
    assert m.original_size == ImageSize(333, 211)
    assert m.size_after_pre_processing == ImageSize(266, 190)
    assert m.scale_width == 64 / 266 and m.scale_height == 48 / 190
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (0, 0, 0, 0)
    assert m.nonsquare_intermediate_size is None
    assert plan.canvas is None and plan.resize_from == ImageSize(266, 190)


def test_static_crop_keeps_the_reference_operation_order():
    # 29/100*100 = 28.999999999999996 in float64, so the bound is 28, not round(29.0)
    cfg = make_config(size=(64, 48), static_crop=(29, 0, 100, 100))
    assert plan_image(cfg, ImageSize(100, 10), ImageSize(64, 48)).crop_box == (28, 0, 100, 10)


def test_static_crop_then_letterbox_uses_the_crop_size():
    cfg = make_config(mode="letterbox", size=(64, 64), dataset=(96, 72), static_crop=(25, 0, 75, 100))
    plan = plan_image(cfg, ImageSize(200, 100), TARGET)
    # crop x 50..150 -> 100x100; s = min(0.96, 0.72) = 0.72, new (72, 72); pads left 12 right 12
    assert plan.crop_box == (50, 0, 150, 100)
    assert plan.canvas.src_box == (0, 0, 100, 100)
    assert plan.canvas.placed == ImageSize(72, 72)
    m = plan.metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (12, 0, 12, 0)
    assert m.static_crop_offset == StaticCropOffset(50, 0, 100, 100)
    assert m.size_after_pre_processing == ImageSize(100, 100)


def test_empty_static_crop_is_an_error():
    cfg = make_config(size=(64, 48), static_crop=(0, 0, 1, 100))
    # x1 = int(1/100*50) = int(0.5) = 0: no columns left
    with pytest.raises(ValueError, match=r"static crop of a 50x20 image leaves no pixels \(crop box \(0, 0, 0, 20\)\)"):
        plan_image(cfg, ImageSize(50, 20), ImageSize(64, 48))


def test_overrides_disable_each_step():
    cfg = make_config(size=(64, 48), static_crop=(10, 10, 90, 90), grayscale=True, contrast="Histogram Equalization")
    full = plan_image(cfg, ImageSize(100, 50), ImageSize(64, 48))
    assert full.crop_box == (10, 5, 90, 45) and full.grayscale
    assert full.contrast is ContrastType.HISTOGRAM_EQUALIZATION

    no_crop = plan_image(cfg, ImageSize(100, 50), ImageSize(64, 48), Overrides(disable_static_crop=True))
    assert no_crop.crop_box == (0, 0, 100, 50)
    assert no_crop.metadata.static_crop_offset == StaticCropOffset(0, 0, 100, 50)
    assert no_crop.metadata.scale_width == 64 / 100
    assert no_crop.grayscale and no_crop.contrast is ContrastType.HISTOGRAM_EQUALIZATION

    no_gray = plan_image(cfg, ImageSize(100, 50), ImageSize(64, 48), Overrides(disable_grayscale=True))
    assert not no_gray.grayscale and no_gray.crop_box == full.crop_box and no_gray.contrast is not None

    no_contrast = plan_image(cfg, ImageSize(100, 50), ImageSize(64, 48), Overrides(disable_contrast=True))
    assert no_contrast.contrast is None and no_contrast.grayscale


def test_stretch_ignores_dataset_dims_and_letterbox_without_them_is_single_step():
    for cfg in (make_config(size=(64, 48), dataset=(120, 90)), make_config(mode="letterbox", size=(64, 48))):
        plan = plan_image(cfg, ImageSize(300, 100), ImageSize(64, 48))
        assert plan.canvas is None
        m = plan.metadata
        assert m.nonsquare_intermediate_size is None
        assert m.scale_width == 64 / 300 and m.scale_height == 48 / 100


def test_fit_longer_edge_plans_as_stretch():
    cfg = make_config(mode="fit-longer-edge", size=(64, 48), dataset=(120, 90))
    plan = plan_image(cfg, ImageSize(300, 100), ImageSize(64, 48))
    assert plan.canvas is None and plan.metadata.nonsquare_intermediate_size is None


def test_stretch_only_plans_skip_the_dataset_step():
    cfg = make_config(mode="letterbox", size=(64, 64), dataset=(64, 96), static_crop=(0, 10, 100, 90))
    plan = plan_image(cfg, ImageSize(192, 170), TARGET, stretch_only=True)
    # crop y = int(0.1*170) = 17 .. int(0.9*170) = 153 -> 192x136, stretched straight to 64x64
    assert plan.canvas is None
    assert plan.crop_box == (0, 17, 192, 153)
    assert plan.resize_from == ImageSize(192, 136)
    m = plan.metadata
    assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (0, 0, 0, 0)
    assert m.scale_width == 64 / 192 and m.scale_height == 64 / 136
    assert m.nonsquare_intermediate_size is None


@pytest.mark.parametrize(
    "source, network, swap", [("bgr", "rgb", True), ("rgb", "rgb", False), ("bgr", "bgr", False), ("rgb", "bgr", True)]
)
def test_swap_channels_when_source_and_network_orders_differ(source, network, swap):
    cfg = make_config(size=(32, 32), color_mode=network)
    assert plan_image(cfg, ImageSize(10, 10), ImageSize(32, 32), input_color_format=source).swap_channels is swap


def test_resize_filter_is_carried_into_the_plan():
    cfg = make_config(size=(32, 32), resize_filter="cv2-linear")
    assert plan_image(cfg, ImageSize(10, 10), ImageSize(32, 32)).resize_filter is ResizeFilter.CV2_LINEAR


def test_plan_accepts_a_plain_tuple_source_size():
    cfg = make_config(mode="letterbox", size=(64, 64), dataset=(64, 96))
    assert plan_image(cfg, (192, 168), TARGET) == plan_image(cfg, ImageSize(192, 168), TARGET)


# --- target size -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested, expected",
    [
        ((100, 70), (128, 96)),  # ceil(100/32)*32 = 128, ceil(70/32)*32 = 96
        ((64, 64), (64, 64)),
        ((96, 97), (96, 128)),
        ((1, 1), (32, 32)),
        (100, (128, 128)),
        ([33, 31], (64, 32)),
    ],
)
def test_divisible_dynamic_size_rounds_each_side_up(requested, expected):
    cfg = make_config(size=(64, 64), dynamic={"type": "pad-to-be-divisible", "value": 32})
    assert resolve_target_size(cfg, requested) == ImageSize(*expected)


def test_any_size_dynamic_takes_the_size_as_given():
    cfg = make_config(size=(64, 64), dynamic={"type": "any-size"})
    assert resolve_target_size(cfg, (90, 50)) == ImageSize(90, 50)
    assert resolve_target_size(cfg, 77) == ImageSize(77, 77)
    assert resolve_target_size(cfg, None) == ImageSize(64, 64)


def test_unsupported_dynamic_size_is_ignored_with_one_warning(caplog):
    cfg = rfpipe.ModelConfig.from_dict(
        {"network_input": {"training_input_size": {"width": 64, "height": 48}}}, source="one-warning-test.json"
    )
    with caplog.at_level(logging.WARNING, logger="rfpipe"):
        for _ in range(5):
            assert resolve_target_size(cfg, (128, 128)) == ImageSize(64, 48)
        assert resolve_target_size(cfg, (64, 48)) == ImageSize(64, 48)  # equal to training: no warning
        image = np.zeros((30, 40, 3), np.uint8)
        for _ in range(3):
            batch, _ = rfpipe.preprocess(image, cfg, image_size=(128, 128), implementation="reference")
            assert batch.shape == (1, 3, 48, 64)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "(128, 128)" in warnings[0] and "one-warning-test.json" in warnings[0]


@pytest.mark.parametrize("bad", [0, -3, (0, 10), (10, -1), (1, 2, 3), (10,), (10.0, 5), (True, 5)])
def test_bad_image_size_values(bad):
    cfg = make_config(size=(64, 64), dynamic={"type": "any-size"})
    with pytest.raises(ValueError, match="image_size must be positive integers"):
        resolve_target_size(cfg, bad)


@pytest.mark.parametrize("bad", ["big", 1.5, True, {"w": 1}])
def test_bad_image_size_types(bad):
    cfg = make_config(size=(64, 64), dynamic={"type": "any-size"})
    with pytest.raises(TypeError, match="image_size must be an int or a"):
        resolve_target_size(cfg, bad)


def test_preprocess_returns_the_plan_metadata():
    cfg = make_config(mode="letterbox", size=(48, 40), dataset=(64, 96), static_crop=(5, 10, 95, 90))
    images = [np.zeros((168, 192, 3), np.uint8), np.zeros((50, 300, 3), np.uint8)]
    _, metadata = rfpipe.preprocess(images, cfg, implementation="reference")
    expected = [plan_image(cfg, ImageSize(192, 168), ImageSize(48, 40)).metadata,
                plan_image(cfg, ImageSize(300, 50), ImageSize(48, 40)).metadata]
    assert metadata == expected


# --- properties for any size and mode -----------------------------------------------------------

sides = st.integers(1, 5000)
small_sides = st.integers(1, 700)


@st.composite
def configs(draw):
    # weighted towards the two-step modes, which have the most geometry
    mode = draw(st.sampled_from(
        ["stretch", "letterbox", "letterbox", "letterbox-reflect-edges", "center-crop", "center-crop", "fit-longer-edge"]
    ))
    dataset = draw(st.tuples(small_sides, small_sides)) if draw(st.integers(0, 3)) else None
    crop = None
    if draw(st.booleans()):
        x_min, x_max = sorted(draw(st.lists(st.integers(0, 100), min_size=2, max_size=2, unique=True)))
        y_min, y_max = sorted(draw(st.lists(st.integers(0, 100), min_size=2, max_size=2, unique=True)))
        crop = (x_min, y_min, x_max, y_max)
    padding = draw(st.none() | st.integers(0, 255))
    size = draw(st.tuples(small_sides, small_sides))
    return make_config(mode=mode, size=size, dataset=dataset, static_crop=crop, padding_value=padding)


@settings(max_examples=400, deadline=None)
@given(cfg=configs(), width=sides, height=sides, target=st.tuples(small_sides, small_sides),
       stretch_only=st.sampled_from([False, False, False, True]), overrides=st.builds(Overrides, st.booleans(), st.booleans(), st.booleans()))
def test_plan_is_internally_consistent(cfg, width, height, target, stretch_only, overrides):
    target = ImageSize(*target)
    try:
        plan = plan_image(cfg, ImageSize(width, height), target, overrides, stretch_only=stretch_only)
    except ValueError as error:
        # only the two documented refusals, and only when they are true
        message = str(error)
        if "leaves no pixels" in message:
            event("refused: empty static crop")
            assert cfg.static_crop is not None and not overrides.disable_static_crop
            return
        event("refused: too elongated")
        assert "too elongated" in message and cfg.two_step and not stretch_only
        return

    m = plan.metadata
    x0, y0, x1, y1 = plan.crop_box
    # the crop lies inside the source and is what the metadata reports
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert m.static_crop_offset == StaticCropOffset(x0, y0, x1 - x0, y1 - y0)
    assert m.original_size == ImageSize(width, height)
    assert m.size_after_pre_processing == plan.crop_size
    assert m.inference_size == target and plan.target == target
    if cfg.static_crop is None or overrides.disable_static_crop:
        assert plan.crop_box == (0, 0, width, height)
    crop_w, crop_h = plan.crop_size

    if plan.canvas is None:
        event("single step")
        assert not cfg.two_step or stretch_only
        assert (m.pad_left, m.pad_top, m.pad_right, m.pad_bottom) == (0, 0, 0, 0)
        assert m.scale_width == target.width / crop_w and m.scale_height == target.height / crop_h
        assert m.nonsquare_intermediate_size is None
        assert plan.resize_from == plan.crop_size
        return

    canvas = plan.canvas
    assert cfg.two_step and not stretch_only
    assert canvas.size == cfg.dataset_size == m.nonsquare_intermediate_size == plan.resize_from
    sx0, sy0, sx1, sy1 = canvas.src_box
    assert 0 <= sx0 < sx1 <= crop_w and 0 <= sy0 < sy1 <= crop_h  # the window lies inside the crop
    left, top = canvas.offset
    # the placed window lies inside the canvas
    assert 0 <= left and left + canvas.placed.width <= canvas.size.width
    assert 0 <= top and top + canvas.placed.height <= canvas.size.height

    if cfg.resize_mode.value == "center-crop":
        event("center-crop")
        assert canvas.fill == 0 and not canvas.resizes
        assert canvas.placed == ImageSize(min(crop_w, canvas.size.width), min(crop_h, canvas.size.height))
        assert m.scale_width == m.scale_height == 1.0
        for pad_a, pad_b, src, dst, start, end, offset in (
            (m.pad_left, m.pad_right, crop_w, canvas.size.width, sx0, sx1, left),
            (m.pad_top, m.pad_bottom, crop_h, canvas.size.height, sy0, sy1, top),
        ):
            if dst > src:  # padding: pads are the canvas margins, odd pixel after
                assert pad_a + src + pad_b == dst and pad_b - pad_a in (0, 1)
                assert (start, end) == (0, src) and offset == pad_a
            else:  # cropping: pads are minus the cut margins, odd pixel after
                assert -pad_a - pad_b + dst == src and pad_a - pad_b in (0, 1)
                assert (start, end) == (-pad_a, src + pad_b) and offset == 0
    else:  # letterbox
        event("letterbox")
        assert canvas.src_box == (0, 0, crop_w, crop_h)
        assert canvas.fill == cfg.padding_value
        scale = min(canvas.size.width / crop_w, canvas.size.height / crop_h)
        assert m.scale_width == m.scale_height == scale
        assert m.pad_left + canvas.placed.width + m.pad_right == canvas.size.width
        assert m.pad_top + canvas.placed.height + m.pad_bottom == canvas.size.height
        assert m.pad_right - m.pad_left in (0, 1) and m.pad_bottom - m.pad_top in (0, 1)
        assert canvas.offset == (m.pad_left, m.pad_top)
        # the placed size is the scaled crop, truncated (within float error of the exact product)
        assert abs(canvas.placed.width - crop_w * scale) < 1 + 1e-9
        assert abs(canvas.placed.height - crop_h * scale) < 1 + 1e-9
        # one side fills its canvas side (to within the truncation of w * (D / w))
        assert canvas.size.width - canvas.placed.width <= 1 or canvas.size.height - canvas.placed.height <= 1


@settings(max_examples=200, deadline=None)
@given(cfg=configs(), width=sides, height=sides)
def test_plans_are_pure(cfg, width, height):
    """Same inputs, same plan: no hidden state between calls (implementations rely on it)."""
    target = cfg.training_size
    try:
        a = plan_image(cfg, ImageSize(width, height), target)
    except ValueError:
        with pytest.raises(ValueError):
            plan_image(cfg, ImageSize(width, height), target)
        return
    assert plan_image(cfg, ImageSize(width, height), target) == a


@settings(max_examples=300, deadline=None)
@given(divisor=st.integers(1, 128), requested=st.tuples(st.integers(1, 4000), st.integers(1, 4000)))
def test_divisible_target_is_the_smallest_multiple_not_below_the_request(divisor, requested):
    cfg = make_config(size=(64, 64), dynamic={"type": "pad-to-be-divisible", "value": divisor})
    target = resolve_target_size(cfg, requested)
    if tuple(requested) == (64, 64):
        # Asking for the training size is not a dynamic request: the reference keeps it as it is,
        # divisible or not.
        assert target == cfg.training_size
        return
    for got, want in zip(target, requested, strict=True):
        assert got % divisor == 0 and want <= got < want + divisor
