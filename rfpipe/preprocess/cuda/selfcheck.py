"""The GPU path's start-up self-check: the compiled kernels against the installed Pillow and OpenCV.

Probe shapes cover a Pillow-13 pass-order case, Pillow 12.2/12.3's very tall rule, OpenCV's 2x
area case, grayscale and the letterbox step; any differing value disables the GPU path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rfpipe.config import IMAGENET_NORMALIZATION, ModelConfig
from rfpipe.geometry import ImagePlan
from rfpipe.preprocess.inputs import Frame
from rfpipe.preprocess.kernels.float_tables import normalization_table


def _probes() -> list[tuple[str, dict, tuple[int, int], str]]:
    """(name, network_input fields, source (width, height), input colour format) of each probe."""
    return [
        # Pillow 13 runs the vertical pass first here (height shrinks > 2x as much as the width).
        ("pillow-pass-order", {"size": (50, 30)}, (61, 90), "bgr"),
        # Pillow 12.2/12.3 run very tall images (height > 100 x width) vertically first, in Python.
        ("pillow-tall", {"size": (20, 30)}, (3, 400), "bgr"),
        ("pillow-upscale-gray", {"size": (64, 48), "grayscale": True}, (45, 37), "rgb"),
        ("opencv-area-2x", {"size": (40, 40), "mode": "letterbox", "dataset": (64, 48)}, (128, 96), "bgr"),
        ("opencv-linear-letterbox", {"size": (48, 48), "mode": "letterbox", "dataset": (80, 80), "padding": 114},
         (53, 41), "bgr"),
        ("opencv-final", {"size": (33, 47), "filter": "cv2-linear"}, (70, 50), "rgb"),
    ]


def _probe_config(fields: dict) -> ModelConfig:
    width, height = fields["size"]
    net: dict[str, Any] = {
        "training_input_size": {"width": width, "height": height},
        "dynamic_spatial_size_supported": False, "color_mode": "rgb",
        "resize_mode": fields.get("mode", "stretch"), "input_channels": 3,
        "normalization": IMAGENET_NORMALIZATION,
        "resize_filter": fields.get("filter", "pillow-bilinear"),
    }
    if "dataset" in fields:
        net["dataset_version_resize_dimensions"] = {"width": fields["dataset"][0], "height": fields["dataset"][1]}
    if "padding" in fields:
        net["padding_value"] = fields["padding"]
    pre = {"grayscale": {"enabled": True}} if fields.get("grayscale") else {}
    return ModelConfig.from_dict({"image_pre_processing": pre, "network_input": net}, source="<self-check>")


def _probe_expected(image: np.ndarray, plan: ImagePlan, color_format: str) -> np.ndarray:
    """uint8 HWC network-order result computed with the installed cv2 / Pillow themselves."""
    import cv2
    from PIL import Image

    if plan.grayscale:
        code = cv2.COLOR_BGR2GRAY if color_format == "bgr" else cv2.COLOR_RGB2GRAY
        image = np.repeat(cv2.cvtColor(image, code)[:, :, None], 3, axis=2)
    if plan.canvas is not None:
        canvas = plan.canvas
        placed = cv2.resize(image, tuple(canvas.placed), interpolation=cv2.INTER_LINEAR)
        full = np.full((canvas.size.height, canvas.size.width, 3), canvas.fill, np.uint8)
        left, top = canvas.offset
        full[top : top + placed.shape[0], left : left + placed.shape[1]] = placed
        image = full
    size = tuple(plan.target)
    if plan.resize_filter.value == "cv2-linear":
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    else:
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return image[:, :, ::-1] if plan.swap_channels else image


def self_check(run: Callable[[list[Frame], list[ImagePlan], ModelConfig, str], torch.Tensor]) -> str | None:
    """Run the probes through `run(frames, plans, config, color_format)` (a runtime's, or the
    interpreted entry in tests); None when every output is bit-identical to the installed
    Pillow/OpenCV, else the reason."""
    from rfpipe.geometry import plan_image

    rng = np.random.default_rng(1234)
    for name, fields, (width, height), color_format in _probes():
        config = _probe_config(fields)
        yy, xx = np.mgrid[0:height, 0:width]
        image = np.stack([xx * 255 // width, yy * 255 // height, (xx * yy) % 256], axis=2)
        image = np.clip(image + rng.integers(-30, 31, image.shape), 0, 255).astype(np.uint8)
        plan = plan_image(config, (width, height), config.training_size, None, color_format)
        expected = _probe_expected(image, plan, color_format)
        table = normalization_table(config)
        want = torch.stack([table[c][torch.from_numpy(expected[:, :, c].astype(np.int64))] for c in range(3)])
        for attempt in ("first", "repeated"):  # the first call compiles; repeats take the cached paths
            got = run([Frame(image)], [plan], config, color_format)[0].cpu()
            if not torch.equal(got, want):
                differing = int((got != want).sum())
                return (f"self-check probe {name!r} ({attempt} call) differs from the installed "
                        f"Pillow/OpenCV in {differing} values")
    return None
