"""The GPU kernels, run by Triton's interpreter on the CPU, equal the reference bit for bit.

CI has no GPU: `triton_on_cpu.run_on_cpu` runs `run`'s own layout, parameter tables and launches on
CPU tensors under TRITON_INTERPRET=1, on small images (the interpreter pays per operation). Mixed
batches go through `preprocess`'s own split by input kind (`run_by_kind`), as on the GPU.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

# conftest.py sets TRITON_INTERPRET=1 when there is no GPU, before any kernel is decorated.
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreted kernels: run without a GPU or with TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed")

from conftest import make_config, make_raw_config, random_image
from matrix import CONTRAST_VARIANTS, VARIANTS, input_forms
from table_apply import pillow_resize
from triton_on_cpu import run_on_cpu

import rfpipe
from rfpipe.geometry import plan_image, resolve_target_size
from rfpipe.preprocess import reference, run_by_kind
from rfpipe.preprocess.cuda.selfcheck import self_check
from rfpipe.preprocess.inputs import to_frames
from rfpipe.preprocess.kernels import pillow_tables
from rfpipe.preprocess.kernels.float_tables import normalization_table

# The shared matrix's large canvases (560 px targets, 1600 px center crops) take the interpreter
# tens of seconds; these stand-ins keep the same geometry cases at a tenth of the size.
SLOW = {"stretch-560", "letterbox-560-via-640x480", "center-crop-larger", "center-crop-mixed"}
SMALL_VARIANTS = {
    **{name: spec for name, spec in VARIANTS.items() if name not in SLOW},
    "letterbox-via-larger-dataset": (dict(mode="letterbox", size=(56, 56), dataset=(64, 48)), None),
    "center-crop-larger-small": (dict(mode="center-crop", size=(48, 48), dataset=(301, 233)), None),
    "center-crop-mixed-small": (dict(mode="center-crop", size=(48, 56), dataset=(300, 41)), None),
    "letterbox-area-2x": (dict(mode="letterbox", size=(40, 40), dataset=(75, 60)), None),
    "cv2-linear-stretch": (dict(size=(70, 50), resize_filter="cv2-linear"), None),
    "cv2-linear-area-2x": (dict(size=(75, 60), resize_filter="cv2-linear"), None),
    "cv2-linear-letterbox-pad": (
        dict(mode="letterbox", size=(48, 48), dataset=(90, 60), resize_filter="cv2-linear", padding_value=9), None),
    "cv2-linear-center-crop-gray": (
        dict(mode="center-crop", size=(48, 40), dataset=(100, 60), resize_filter="cv2-linear", grayscale=True), None),
    "grayscale-center-crop": (dict(mode="center-crop", size=(48, 48), dataset=(100, 60), grayscale=True), None),
    "grayscale-bgr-network-static-crop": (
        dict(size=(40, 48), grayscale=True, color_mode="bgr", static_crop=(5, 10, 95, 80)), None),
}


@pytest.fixture(scope="module")
def forms(photos):
    return input_forms(photos, small=True)


def _run_both(images, config, color="bgr", image_size=None, overrides=None, pillow=None):
    color = color or "bgr"
    frames = to_frames(images)
    target = resolve_target_size(config, image_size)
    plans = [plan_image(config, f.size, target, overrides, color, stretch_only=f.is_float_tensor) for f in frames]
    cpu = torch.device("cpu")
    ours = run_by_kind(functools.partial(run_on_cpu, pillow=pillow), frames, plans, config, cpu, color)
    expected = run_by_kind(reference.run, frames, plans, config, cpu, color)
    return ours, expected


def _assert_exact(images, config, color="bgr", image_size=None, overrides=None):
    ours, expected = _run_both(images, config, color, image_size, overrides)
    assert ours.dtype == torch.float32 and ours.is_contiguous()
    assert torch.equal(ours, expected), f"{int((ours != expected).sum())} values differ"


@pytest.mark.parametrize("variant", sorted(SMALL_VARIANTS))
def test_kernels_equal_reference_on_every_variant_with_a_mixed_batch(forms, variant):
    kwargs, image_size = SMALL_VARIANTS[variant]
    images, color = forms["list-mixed-sizes"]
    _assert_exact(images, rfpipe.ModelConfig.from_dict(make_raw_config(**kwargs)), color, image_size)


@pytest.mark.parametrize("variant", sorted(CONTRAST_VARIANTS))
def test_contrast_runs_on_the_cpu_and_the_rest_on_the_kernels_exactly(forms, variant):
    kwargs, image_size = CONTRAST_VARIANTS[variant]
    images, color = forms["list-mixed-sizes"]
    _assert_exact(images, rfpipe.ModelConfig.from_dict(make_raw_config(**kwargs, grayscale="stretch" in variant)),
                  color, image_size)


@pytest.mark.parametrize("form", sorted(input_forms({n: np.zeros((4, 4, 3), np.uint8) for n in ("chelsea", "rocket", "coffee")}, True)))
@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center-crop"])
def test_every_input_form_is_read_exactly(forms, form, mode):
    """numpy views (strided, negative strides), HWC/CHW uint8 tensors read in place, float inputs."""
    images, color = forms[form]
    dataset = None if mode == "stretch" else (130, 100)
    _assert_exact(images, make_config(mode=mode, size=(64, 56), dataset=dataset, padding_value=50), color)


def test_expanded_single_channel_tensor_is_read_through_zero_strides():
    rng = np.random.default_rng(3)
    gray = torch.from_numpy(random_image(rng, 50, 40)[:, :, :1].copy()).expand(-1, -1, 3)
    _assert_exact(gray, make_config(size=(32, 30)))
    _assert_exact(gray.permute(2, 0, 1), make_config(mode="letterbox", size=(32, 30), dataset=(60, 60)))


@pytest.mark.parametrize("color_mode", ["rgb", "bgr"])
@pytest.mark.parametrize("color", ["rgb", "bgr"])
def test_grayscale_and_channel_order_follow_input_and_network(photos, color_mode, color):
    image = photos["astronaut"][100:160, 200:270]
    for mode, dataset in (("stretch", None), ("letterbox", (90, 80)), ("center-crop", (50, 90))):
        for gray in (False, True):
            config = make_config(mode=mode, size=(40, 36), dataset=dataset, grayscale=gray, color_mode=color_mode)
            _assert_exact(image, config, color)


def test_overrides_disable_steps():
    rng = np.random.default_rng(5)
    image = random_image(rng, 60, 50)
    config = make_config(size=(40, 40), static_crop=(10, 10, 90, 90), grayscale=True, contrast="Contrast Stretching")
    for overrides in (rfpipe.Overrides(disable_static_crop=True), rfpipe.Overrides(disable_grayscale=True),
                      rfpipe.Overrides(disable_contrast=True)):
        _assert_exact(image, config, overrides=overrides)


def test_pillow_13_pass_order_is_followed_when_forced():
    """Force Pillow 13's rule and compare with the numpy table applier running that order."""
    rng = np.random.default_rng(11)
    image = random_image(rng, 61, 90)
    size = (50, 30)  # the height shrinks more than twice as much as the width: vertical pass first
    assert pillow_tables.vertical_first((61, 90), size, major=13)
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    thirteen, twelve = pillow_resize(rgb, size, major=13), pillow_resize(rgb, size, major=12)
    assert (thirteen != twelve).any(), "probe shape must tell the two orders apart"
    config = make_config(size=size)
    frames = to_frames(image)
    plans = [plan_image(config, frames[0].size, config.training_size, None, "bgr")]
    table = normalization_table(config)
    for major, expected in ((13, thirteen), (12, twelve)):
        ours = run_on_cpu(frames, plans, config, torch.device("cpu"), "bgr", pillow=(major, 0))
        want = torch.stack([table[c][torch.from_numpy(expected[:, :, c].astype(np.int64))] for c in range(3)])
        assert torch.equal(ours[0], want), f"Pillow {major} order"


def test_mixed_pass_orders_in_one_batch_under_pillow_13():
    rng = np.random.default_rng(12)
    images = [random_image(rng, 61, 90), random_image(rng, 90, 61), random_image(rng, 45, 45)]
    config = make_config(size=(50, 30))
    frames = to_frames(images)
    plans = [plan_image(config, f.size, config.training_size, None, "rgb") for f in frames]
    ours = run_on_cpu(frames, plans, config, torch.device("cpu"), "rgb", pillow=(13, 0))
    table = normalization_table(config)
    for i, image in enumerate(images):
        expected = pillow_resize(image, (50, 30), major=13)
        want = torch.stack([table[c][torch.from_numpy(expected[:, :, c].astype(np.int64))] for c in range(3)])
        assert torch.equal(ours[i], want), f"image {i}"


def test_random_sizes_and_modes(photos):
    """Random source sizes (1 px upwards), targets and dataset sizes, both filters, every mode."""
    rng = np.random.default_rng(2024)
    modes = ["stretch", "letterbox", "center-crop", "letterbox-reflect-edges"]
    for case in range(12):
        width, height = (1, 1) if case == 0 else (int(rng.integers(1, 80)), int(rng.integers(1, 80)))
        mode = modes[case % 4]
        dataset = None if mode == "stretch" else (int(rng.integers(4, 90)), int(rng.integers(4, 90)))
        target = (int(rng.integers(1, 56)), int(rng.integers(1, 56)))
        config = make_config(mode=mode, size=target, dataset=dataset, padding_value=int(rng.integers(0, 256)),
                             resize_filter=["pillow-bilinear", "cv2-linear"][case % 3 == 0])
        try:
            ours, expected = _run_both(random_image(rng, width, height), config)
        except ValueError as error:  # too elongated to letterbox: geometry refuses it for every implementation
            assert "too elongated" in str(error)
            continue
        assert torch.equal(ours, expected), f"case {case}: {width}x{height} {mode} -> {target} via {dataset}"


@pytest.mark.parametrize("source, size", [((2, 293), (77, 90)), ((4, 1000), (32, 32)), ((3, 400), (20, 30))])
def test_very_tall_images_follow_the_installed_pillow_pass_order(source, size):
    """Pillow 12.2/12.3 resize images over 100x taller than wide vertically first (a Python-side
    rule): the kernels must follow the installed version's minor number too, not only its major."""
    rng = np.random.default_rng(21)
    _assert_exact(random_image(rng, *source), make_config(size=size))


def test_self_check_probes_pass_through_the_interpreted_kernels():
    """The start-up probes (including the very tall one) agree with the installed Pillow/OpenCV."""
    def run(frames, plans, config, color_format):
        return run_on_cpu(frames, plans, config, torch.device("cpu"), color_format)

    assert self_check(run) is None
