"""The numerics the GPU kernels rely on, checked against the installed OpenCV and Pillow.

Grayscale: OpenCV's fixed-point formula on every one of the 2^24 colours. Resampling: the Triton
kernels (interpreted on the CPU, many random size pairs in one mixed launch each) against
`cv2.resize(INTER_LINEAR)` and `Image.resize(BILINEAR)` themselves, and the self-check probe.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

# conftest.py sets TRITON_INTERPRET=1 when there is no GPU, before any kernel is decorated.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
pytest.importorskip("triton", reason="triton is not installed")

from conftest import make_config  # noqa: E402

from rfpipe.config import ImageSize, ResizeFilter  # noqa: E402
from rfpipe.preprocess.kernels.triton_params import GRAY_WEIGHTS  # noqa: E402


def test_fixed_point_gray_equals_opencv_on_all_colours():
    """(c0*w0 + c1*w1 + c2*w2 + 2^14) >> 15 with the kernels' weights, for BGR2GRAY and RGB2GRAY."""
    values = np.arange(1 << 24, dtype=np.uint32)
    colours = np.stack([values & 255, (values >> 8) & 255, values >> 16], axis=1).astype(np.uint8)
    image = colours.reshape(4096, 4096, 3)
    for color_format, code in (("bgr", cv2.COLOR_BGR2GRAY), ("rgb", cv2.COLOR_RGB2GRAY)):
        w0, w1, w2 = GRAY_WEIGHTS[color_format]
        c = image.astype(np.int64)
        ours = (c[..., 0] * w0 + c[..., 1] * w1 + c[..., 2] * w2 + (1 << 14)) >> 15
        assert np.array_equal(ours, cv2.cvtColor(image, code)), color_format


interpreted = pytest.mark.skipif(not INTERPRETED, reason="interpreted kernels: run without a GPU or with TRITON_INTERPRET=1")


def _run_resamples(images: list[np.ndarray], sizes: list[tuple[int, int]], filter_: ResizeFilter,
                   gray: bool = False, color_format: str = "bgr") -> list[np.ndarray]:
    """Each image resized to its own size in ONE launch of the final-resize kernel (uint8 values back)."""
    from rfpipe.preprocess.kernels.triton_batch import launch, launchers
    from rfpipe.preprocess.kernels.triton_params import (
        LaunchTables,
        Placement,
        Resample,
    )

    resamples = [
        Resample(filter_, ImageSize(img.shape[1], img.shape[0]), ImageSize(*size), (0, 0, img.shape[1], img.shape[0]),
                 0, gray, False, color_format)
        for img, size in zip(images, sizes, strict=True)
    ]
    tables = LaunchTables(resamples)
    offsets, total = [], 0
    for img in images:
        offsets.append(total)
        total += img.nbytes
    source = torch.from_numpy(np.concatenate([img.ravel() for img in images]))
    outputs, out_total = [], 0
    for w, h in sizes:
        outputs.append(Placement(out_total, 1, w, w * h))
        out_total += 3 * w * h
    rows = torch.from_numpy(tables.finish([Placement(o, 3, img.shape[1] * 3, 1) for o, img in zip(offsets, images, strict=True)], outputs))
    out = torch.full((out_total,), -1.0)
    identity = torch.arange(256, dtype=torch.float32).repeat(3, 1).contiguous()
    coefficients = torch.from_numpy(tables.coefficients)

    class Plan:  # the final launch only, over these rows
        step = None
        final = tables
        pillow = filter_ is ResizeFilter.PILLOW_BILINEAR
        sources = resamples

    launch(Plan, launchers(), source, (rows, rows, coefficients, coefficients), identity, out)
    results = []
    for (w, h), placement in zip(sizes, outputs, strict=True):
        planes = out[placement.offset : placement.offset + 3 * w * h].view(3, h, w)
        assert (planes >= 0).all(), "every output value is written"
        results.append(planes.permute(1, 2, 0).numpy().astype(np.uint8))
    return results


def _random_pairs(seed: int, count: int) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    images, sizes = [], []
    for _ in range(count):
        w, h = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        sizes.append((int(rng.integers(1, 70)), int(rng.integers(1, 70))))
    return images, sizes


@interpreted
@pytest.mark.parametrize("seed", range(3))
def test_pillow_kernel_equals_installed_pillow_on_random_size_pairs(seed):
    images, sizes = _random_pairs(100 + seed, 16)
    images.append(np.random.default_rng(seed).integers(0, 256, (90, 61, 3), dtype=np.uint8))
    sizes.append((50, 30))  # the self-check's pass-order probe shape
    got = _run_resamples(images, sizes, ResizeFilter.PILLOW_BILINEAR)
    for img, size, ours in zip(images, sizes, got, strict=True):
        expected = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
        assert np.array_equal(ours, expected), f"{img.shape[1]}x{img.shape[0]} -> {size}"


@interpreted
@pytest.mark.parametrize("seed", range(3))
def test_opencv_kernel_equals_installed_opencv_on_random_size_pairs(seed):
    images, sizes = _random_pairs(200 + seed, 16)
    rng = np.random.default_rng(seed)
    for w, h in ((64, 48), (2, 2), (90, 34)):  # exact 2x downscales: OpenCV's INTER_AREA path
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        sizes.append((w // 2, h // 2))
    got = _run_resamples(images, sizes, ResizeFilter.CV2_LINEAR)
    for img, size, ours in zip(images, sizes, got, strict=True):
        expected = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(ours, expected), f"{img.shape[1]}x{img.shape[0]} -> {size}"


@interpreted
@pytest.mark.parametrize("color_format", ["bgr", "rgb"])
def test_kernel_grayscale_equals_opencv_before_the_resize(color_format):
    images, sizes = _random_pairs(300, 8)
    got = _run_resamples(images, sizes, ResizeFilter.PILLOW_BILINEAR, gray=True, color_format=color_format)
    code = cv2.COLOR_BGR2GRAY if color_format == "bgr" else cv2.COLOR_RGB2GRAY
    for img, size, ours in zip(images, sizes, got, strict=True):
        gray = np.repeat(cv2.cvtColor(img, code)[:, :, None], 3, axis=2)
        assert np.array_equal(ours, np.asarray(Image.fromarray(gray).resize(size, Image.BILINEAR)))


def test_unavailable_without_a_gpu_is_false_not_an_error():
    from rfpipe.preprocess import cuda

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cuda.available("cuda") is False
    with pytest.raises(RuntimeError, match="unavailable"):
        cuda.run([], [], None, torch.device("cuda"), "bgr")


def test_batch_plan_keeps_its_resident_parameters_itself():
    """A plan without in-place sources uploads its parameters once and reuses that copy."""
    from rfpipe.geometry import plan_image
    from rfpipe.preprocess.cuda import host
    from rfpipe.preprocess.inputs import to_frames
    from rfpipe.preprocess.kernels.triton_batch import BatchPlan

    config = make_config(size=(32, 24))
    frames = to_frames(np.zeros((40, 50, 3), np.uint8))
    plans = [plan_image(config, frames[0].size, config.training_size, None, "bgr")]
    sources, _ = host.sources(host.jobs(frames, plans, "bgr"), torch.device("cpu"), lambda t: False, direct=False)
    plan = BatchPlan(sources, host.output_shape(plans))
    uploads = []

    def upload(template, target):
        uploads.append(template.nbytes)
        target.copy_(torch.from_numpy(template))

    first = plan.resident_views(torch.device("cpu"), upload)
    second = plan.resident_views(torch.device("cpu"), upload)
    assert uploads == [plan.param_bytes] and all(a is b for a, b in zip(first, second, strict=True))
    assert first[1].numpy().tobytes() == plan.template[plan.part_offsets[1]:][: first[1].numel() * 8].tobytes()
