"""The shared test matrix: config variants and input forms every implementation is checked on."""

from __future__ import annotations

import numpy as np
import torch
from conftest import random_image

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


def input_forms(photos: dict[str, np.ndarray], small: bool) -> dict[str, tuple[object, str | None]]:
    """Every input form the API accepts, built from real photos (and one random image)."""
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



FORM_NAMES = sorted(input_forms({n: np.zeros((4, 4, 3), np.uint8) for n in ("chelsea", "rocket", "coffee")}, True))
