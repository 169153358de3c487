"""The exact CPU path equals the reference bit for bit: full matrix, real photos, random sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_config, make_raw_config, random_image
from matrix import CONTRAST_VARIANTS, FORM_NAMES, VARIANTS, input_forms

import rfpipe
from rfpipe.preprocess import cpu
from rfpipe.preprocess.kernels import pillow_tables


def _assert_cpu_equals_reference(config, images, color="bgr", image_size=None, overrides=None):
    expected, expected_meta = rfpipe.preprocess(
        images, config, input_color_format=color, image_size=image_size, overrides=overrides, implementation="reference"
    )
    actual, actual_meta = rfpipe.preprocess(
        images, config, input_color_format=color, image_size=image_size, overrides=overrides, implementation="cpu"
    )
    assert actual.dtype == torch.float32 and actual.is_contiguous()
    assert torch.equal(actual, expected), f"max |diff| {(actual - expected).abs().max().item()}"
    assert actual_meta == expected_meta


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("form", FORM_NAMES)
def test_cpu_equals_reference_on_matrix(photos, variant, form):
    kwargs, image_size = VARIANTS[variant]
    images, color = input_forms(photos, small=False)[form]
    _assert_cpu_equals_reference(rfpipe.ModelConfig.from_dict(make_raw_config(**kwargs)), images, color, image_size)


@pytest.mark.parametrize("variant", sorted(CONTRAST_VARIANTS))
def test_cpu_equals_reference_with_contrast(photos, variant):
    kwargs, image_size = CONTRAST_VARIANTS[variant]
    images, color = input_forms(photos, small=True)["list-mixed-sizes"]
    _assert_cpu_equals_reference(rfpipe.ModelConfig.from_dict(make_raw_config(**kwargs)), images, color, image_size)


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center-crop"])
@pytest.mark.parametrize("filter_", ["pillow-bilinear", "cv2-linear"])
def test_cpu_equals_reference_with_grayscale_and_filters(photos, mode, filter_):
    dataset = None if mode == "stretch" else (240, 180)
    for color_mode in ("rgb", "bgr"):
        config = make_config(mode=mode, size=(200, 150), dataset=dataset, grayscale=True,
                             color_mode=color_mode, resize_filter=filter_, padding_value=127)
        for color in ("bgr", "rgb"):
            _assert_cpu_equals_reference(config, list(photos.values()), color)


def test_cpu_equals_reference_on_real_sizes(photos):
    """Full-size photos into the real RF-DETR sizes, every mode, a mixed-size batch."""
    images = list(photos.values())
    for config in (
        make_config(size=(560, 560)),
        make_config(size=(384, 384), mode="letterbox", dataset=(640, 480)),
        make_config(size=(576, 576), mode="center-crop", dataset=(640, 640)),
        make_config(size=(640, 360), resize_filter="cv2-linear"),
    ):
        _assert_cpu_equals_reference(config, images)


@pytest.mark.parametrize("seed", range(60))
def test_cpu_equals_reference_on_random_sizes(seed):
    """1 px to 4K, wide and tall, down- and up-scaling, both filters, every mode."""
    rng = np.random.default_rng(1000 + seed)
    shapes = [(1, 1), (1, 480), (640, 1), (3840, 2160), (2160, 3840), (2, 2), (1920, 1080), (2, 293), (4, 1000), (7, 1500)]
    if seed < len(shapes):
        width, height = shapes[seed]
    else:
        width, height = (int(rng.integers(1, 1500)), int(rng.integers(1, 1500)))
    mode = ["stretch", "letterbox", "center-crop", "letterbox-reflect-edges"][seed % 4]
    target = (int(rng.integers(1, 700)), int(rng.integers(1, 700)))
    dataset = None
    if seed % 3 and mode != "stretch":
        dataset = (int(rng.integers(1, 800)), int(rng.integers(1, 800)))
        if mode.startswith("letterbox"):
            scale = min(dataset[0] / width, dataset[1] / height)
            if int(width * scale) < 1 or int(height * scale) < 1:
                dataset = None
    config = make_config(mode=mode, size=target, dataset=dataset, padding_value=int(rng.integers(0, 256)),
                         resize_filter="cv2-linear" if seed % 5 == 0 else None,
                         grayscale=seed % 7 == 0, color_mode="bgr" if seed % 2 else "rgb")
    _assert_cpu_equals_reference(config, random_image(rng, width, height), "rgb" if seed % 6 == 0 else "bgr")


def test_cpu_follows_pillow13_pass_order_when_asked(monkeypatch):
    """Both pass orders are implemented: forcing Pillow 13's rule changes the bytes as it should."""
    from table_apply import pillow_resize

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (301, 97, 3), dtype=np.uint8)  # height shrinks far more than width
    lut = np.tile(np.arange(256, dtype=np.float32), (3, 1))
    original = pillow_tables.resize_plan
    for major in (12, 13):
        plan = original((97, 301), (90, 50), major)
        monkeypatch.setattr(pillow_tables, "resize_plan", lambda a, b, major=None, _p=plan: _p)
        out = np.empty((3, 50, 90), dtype=np.float32)
        cpu._pillow_resize_into(image, out, lut, cpu.IDENTITY, 2)
        expected = pillow_resize(image, (90, 50), major=major)
        assert np.array_equal(out.transpose(1, 2, 0), expected.astype(np.float32)), major
    assert pillow_tables.vertical_first((97, 301), (90, 50), 13) and not pillow_tables.vertical_first((97, 301), (90, 50), 12)


def test_cpu_self_check_passes_with_installed_pillow():
    assert cpu.available()


def test_batches_larger_than_the_thread_count_are_split_per_image(photos):
    images = [p[:200, :300] for p in photos.values()] * 2
    _assert_cpu_equals_reference(make_config(size=(128, 96)), images)
