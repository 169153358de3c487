"""The reference equals inference-models 0.39.x's base preprocessor, bit for bit, metadata included.

Runs whenever inference-models is importable (CI installs it). Every config variant is checked on
real photos and random images, through every input form the reference accepts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import IMAGENET, assert_metadata_equal, make_raw_config, random_image

import rfpipe

pytestmark = pytest.mark.inference_models

# name -> (config kwargs, image_size or None). Sizes are (width, height).
VARIANTS = {
    "stretch": (dict(size=(96, 80)), None),
    "stretch-560": (dict(size=(560, 560)), None),
    "stretch-bgr-network": (dict(size=(96, 80), color_mode="bgr"), None),
    "stretch-with-dataset-dims": (dict(size=(96, 80), dataset=(120, 90)), None),
    "fit-longer-edge": (dict(mode="fit-longer-edge", size=(72, 96), dataset=(120, 90)), None),
    "letterbox": (dict(mode="letterbox", size=(96, 96), dataset=(128, 96)), None),
    "letterbox-560-via-640x480": (dict(mode="letterbox", size=(560, 560), dataset=(640, 480)), None),
    "letterbox-pad127-bgr-network": (
        dict(mode="letterbox", size=(80, 64), dataset=(100, 140), padding_value=127, color_mode="bgr"), None),
    "letterbox-reflect-edges-pad255": (
        dict(mode="letterbox-reflect-edges", size=(64, 64), dataset=(90, 60), padding_value=255), None),
    "letterbox-without-dataset-dims": (dict(mode="letterbox", size=(64, 48)), None),
    "center-crop-smaller": (dict(mode="center-crop", size=(64, 64), dataset=(101, 77)), None),
    "center-crop-larger": (dict(mode="center-crop", size=(96, 96), dataset=(1601, 1333)), None),
    "center-crop-mixed": (dict(mode="center-crop", size=(64, 80), dataset=(2001, 99)), None),
    "static-crop-stretch": (dict(size=(80, 64), static_crop=(10, 5, 90, 78)), None),
    "static-crop-letterbox": (dict(mode="letterbox", size=(64, 64), dataset=(96, 72), static_crop=(25, 0, 75, 100)), None),
    "static-crop-center-crop": (dict(mode="center-crop", size=(64, 64), dataset=(150, 50), static_crop=(3, 7, 97, 93)), None),
    "grayscale-stretch": (dict(size=(80, 64), grayscale=True), None),
    "grayscale-letterbox-bgr-network": (dict(mode="letterbox", size=(64, 64), dataset=(96, 72), grayscale=True, color_mode="bgr"), None),
    "no-normalization": (dict(size=(80, 64), normalization=None), None),
    "scaling-factor-1": (dict(size=(80, 64), normalization=None, scaling_factor=1), None),
    "scaling-factor-255": (dict(size=(80, 64), normalization=None, scaling_factor=255), None),
    "scaling-factor-with-normalization": (dict(size=(80, 64), scaling_factor=1, normalization=[[0.5, 0.4, 0.3], [0.2, 0.25, 0.3]]), None),
    "dynamic-divisible": (dict(size=(64, 64), dynamic={"type": "pad-to-be-divisible", "value": 32}), (100, 70)),
    "dynamic-any-size": (dict(mode="letterbox", size=(64, 64), dataset=(96, 72), dynamic={"type": "any-size"}), (90, 50)),
    "dynamic-unsupported-ignored": (dict(size=(64, 64)), (128, 128)),
}

CONTRAST_VARIANTS = {
    f"contrast-{kind.split()[0].lower()}-{mode}": (
        dict(mode=mode, size=(48, 40), contrast=kind, **({"dataset": (60, 50)} if mode != "stretch" else {})), None)
    for kind in ("Adaptive Equalization", "Contrast Stretching", "Histogram Equalization")
    for mode in ("stretch", "letterbox", "center-crop")
}


def _forms(photos: dict[str, np.ndarray], small: bool) -> dict[str, tuple[object, str | None]]:
    names = ["chelsea", "rocket", "coffee"]
    imgs = [photos[n][:120, :150] if small else photos[n] for n in names]
    rng = np.random.default_rng(7)
    same = [img[:110, :140] for img in imgs]
    hwc = imgs[1]
    return {
        "hwc-bgr": (hwc, "bgr"),
        "hwc-rgb": (np.ascontiguousarray(hwc[:, :, ::-1]), "rgb"),
        "hwc-none": (hwc, None),
        "nhwc": (np.stack(same), "bgr"),
        "list-mixed-sizes": (imgs + [random_image(rng, 37, 211)], "bgr"),
        "non-contiguous": (imgs[2][::2, 1::3], "bgr"),
        "negative-stride": (imgs[0][::-1, ::-1], "bgr"),
        "uint8-tensor-hwc": (torch.from_numpy(hwc.copy()), "bgr"),
        "uint8-tensor-chw": (torch.from_numpy(hwc.copy()).permute(2, 0, 1), "bgr"),
        "uint8-tensor-nchw": (torch.from_numpy(np.stack(same)).permute(0, 3, 1, 2), "bgr"),
        "float-numpy": (hwc.astype(np.float32) / 255 + np.float32(0.0013), "bgr"),
        "float-tensor-chw": (torch.from_numpy(hwc.astype(np.float32) / 255).permute(2, 0, 1), "bgr"),
    }


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
@pytest.mark.parametrize("form", sorted(_forms({n: np.zeros((4, 4, 3), np.uint8) for n in ("chelsea", "rocket", "coffee")}, True)))
def test_reference_equals_inference_models(upstream, photos, variant, form):
    kwargs, image_size = VARIANTS[variant]
    raw = make_raw_config(**kwargs)
    if form == "hwc-none" and kwargs.get("color_mode") == "bgr" and not raw["network_input"].get("dataset_version_resize_dimensions"):
        pytest.skip("upstream swaps channels for input_color_format=None on a BGR network (see test below)")
    images, color = _forms(photos, small=False)[form]
    _check(upstream, raw, images, color, image_size)


@pytest.mark.parametrize("variant", sorted(CONTRAST_VARIANTS))
@pytest.mark.parametrize("form", ["hwc-bgr", "hwc-rgb", "list-mixed-sizes", "uint8-tensor-chw", "float-tensor-chw"])
def test_reference_contrast_equals_inference_models(upstream, photos, variant, form):
    kwargs, image_size = CONTRAST_VARIANTS[variant]
    images, color = _forms(photos, small=True)[form]
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
