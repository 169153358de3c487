"""The reference equals inference-models 0.39.x's base preprocessor, bit for bit, metadata included.

Runs whenever inference-models is importable (CI installs it). Every config variant is checked on
real photos and random images, through every input form the reference accepts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import IMAGENET, assert_metadata_equal, make_raw_config, random_image
from matrix import CONTRAST_VARIANTS, FORM_NAMES, VARIANTS, input_forms

import rfpipe

pytestmark = pytest.mark.inference_models

def _check(upstream, raw, images, color, image_size, overrides=None):
    config = rfpipe.ModelConfig.from_dict(raw)
    ours, ours_meta = rfpipe.preprocess(
        images, config, input_color_format=color, image_size=image_size,
        overrides=overrides, implementation="reference",
    )
    theirs, theirs_meta = upstream.preprocess(raw, images, color, image_size, overrides)
    assert ours.dtype == torch.float32 and ours.is_contiguous()
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs), f"max |diff| {(ours - theirs).abs().max().item()}"
    assert_metadata_equal(ours_meta, theirs_meta)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("form", FORM_NAMES)
def test_reference_equals_inference_models(upstream, photos, variant, form):
    kwargs, image_size = VARIANTS[variant]
    raw = make_raw_config(**kwargs)
    if form == "hwc-none" and kwargs.get("color_mode") == "bgr" and not raw["network_input"].get("dataset_version_resize_dimensions"):
        pytest.skip("upstream swaps channels for input_color_format=None on a BGR network (see test below)")
    images, color = input_forms(photos, small=False)[form]
    _check(upstream, raw, images, color, image_size)


@pytest.mark.parametrize("variant", sorted(CONTRAST_VARIANTS))
@pytest.mark.parametrize("form", ["hwc-bgr", "hwc-rgb", "list-mixed-sizes", "uint8-tensor-chw", "float-tensor-chw"])
def test_reference_contrast_equals_inference_models(upstream, photos, variant, form):
    kwargs, image_size = CONTRAST_VARIANTS[variant]
    images, color = input_forms(photos, small=True)[form]
    _check(upstream, make_raw_config(**kwargs), images, color, image_size)


@pytest.mark.parametrize(
    "overrides",
    [
        rfpipe.Overrides(disable_static_crop=True),
        rfpipe.Overrides(disable_grayscale=True),
        rfpipe.Overrides(disable_contrast=True),
        rfpipe.Overrides(True, True, True),
    ],
    ids=["no-crop", "no-gray", "no-contrast", "none"],
)
@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center-crop"])
def test_overrides_equal_inference_models(upstream, photos, overrides, mode):
    raw = make_raw_config(
        mode=mode, size=(48, 40), dataset=(60, 50), static_crop=(10, 20, 80, 90),
        grayscale=True, contrast="Histogram Equalization",
    )
    _check(upstream, raw, photos["astronaut"][:200, :180], "bgr", None, overrides)


@pytest.mark.parametrize("seed", range(40))
def test_random_sizes_equal_inference_models(upstream, seed):
    """Random sources (1 px to 4K, wide and tall) into random targets, every resize mode."""
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (1, 37), (53, 1), (3840, 2160), (2160, 3840)]
    width, height = shapes[seed] if seed < len(shapes) else (int(rng.integers(1, 1200)), int(rng.integers(1, 1200)))
    mode = ["stretch", "letterbox", "center-crop", "letterbox-reflect-edges"][seed % 4]
    target = (int(rng.integers(8, 200)), int(rng.integers(8, 200)))
    dataset = (int(rng.integers(16, 400)), int(rng.integers(16, 400))) if seed % 3 else None
    if mode.startswith("letterbox") and dataset is not None:
        # keep the letterboxed image at least a pixel in each direction
        scale = min(dataset[0] / width, dataset[1] / height)
        if int(width * scale) < 1 or int(height * scale) < 1:
            dataset = None
    raw = make_raw_config(mode=mode, size=target, dataset=dataset, padding_value=int(rng.integers(0, 256)))
    _check(upstream, raw, random_image(rng, width, height), "bgr", None)


def test_none_color_format_means_bgr(photos):
    """input_color_format=None is treated as 'bgr' everywhere (DESIGN.md).

    inference-models' single-step path instead swaps channels for None on a BGR network while its
    two-step path treats None as BGR; rfpipe keeps one meaning.
    """
    config = rfpipe.ModelConfig.from_dict(make_raw_config(size=(64, 64), color_mode="bgr", normalization=IMAGENET))
    image = photos["coffee"]
    as_none, _ = rfpipe.preprocess(image, config, input_color_format=None, implementation="reference")
    as_bgr, _ = rfpipe.preprocess(image, config, input_color_format="bgr", implementation="reference")
    assert torch.equal(as_none, as_bgr)
