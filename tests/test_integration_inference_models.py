"""rfpipe inside inference-models: its own ONNX RF-DETR model gives the same numbers with rfpipe inside.

Every comparison runs the same inference-models model (or function) without rfpipe, then with
`rfpipe.integrations.inference_models.install()`, then uninstalls: tensors `torch.equal`, metadata
equal (its own PreProcessingMetadata), detections equal. A spy on the integration's call into
`rfpipe.preprocess` proves the second run went through rfpipe.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import sys

import numpy as np
import pytest
import torch
from conftest import make_raw_config, random_image
from matrix import CONTRAST_VARIANTS, FORM_NAMES, VARIANTS, input_forms
from model_packages import packages  # noqa: F401

from rfpipe.integrations import inference_models as integration

pytestmark = pytest.mark.inference_models

PACKAGES = ("stretch", "letterbox", "center-crop", "static-crop")
PRE_PROCESSING = "inference_models.models.rfdetr.pre_processing"
COMMON = "inference_models.models.rfdetr.optimization.preprocessors.common"
CATALOG = "inference_models.models.rfdetr.optimization.catalog"
BACKEND_PATH = "inference_models.models.rfdetr.optimization.backend_path"


@pytest.fixture(autouse=True)
def _always_uninstalled():
    integration.uninstall()
    yield
    integration.uninstall()


@pytest.fixture
def rfpipe_calls(monkeypatch):
    """Counts the integration's calls into rfpipe.preprocess (which still runs for real)."""
    calls = []
    real = integration.preprocess

    def spy(*args, **kwargs):
        calls.append(kwargs.get("implementation"))
        return real(*args, **kwargs)

    monkeypatch.setattr(integration, "preprocess", spy)
    return calls


@pytest.fixture(scope="module")
def models(packages, upstream):  # noqa: F811  (upstream: fails in CI where inference-models is missing)
    from inference_models.models.rfdetr.rfdetr_object_detection_onnx import (
        RFDetrForObjectDetectionONNX,
    )

    return {
        name: RFDetrForObjectDetectionONNX.from_pretrained(
            str(packages[name]), onnx_execution_providers=["CPUExecutionProvider"], device=torch.device("cpu")
        )
        for name in PACKAGES
    }


def without_and_with(call, rfpipe_calls, implementation="auto"):
    """(call() by inference-models alone, call() with rfpipe inside)."""
    theirs = call()
    assert not rfpipe_calls
    assert integration.install(implementation=implementation)
    try:
        ours = call()
    finally:
        integration.uninstall()
    assert rfpipe_calls and set(rfpipe_calls) == {implementation}, "rfpipe did not run inside inference-models"
    return theirs, ours


def assert_preprocessed_equal(theirs, ours):
    (t, t_meta), (o, o_meta) = theirs, ours
    assert o.dtype == torch.float32 and o.is_contiguous() and o.device == t.device
    assert o.shape == t.shape
    assert torch.equal(o, t), f"max |diff| {(o - t).abs().max().item()}"
    assert type(o_meta[0]) is type(t_meta[0])
    assert list(o_meta) == list(t_meta)


def assert_detections_equal(theirs, ours):
    assert len(theirs) == len(ours)
    for a, b in zip(theirs, ours):
        assert torch.equal(a.xyxy, b.xyxy) and torch.equal(a.class_id, b.class_id)
        assert torch.equal(a.confidence, b.confidence)


def upstream_config(raw):
    from inference_models.models.common.roboflow.model_packages import InferenceConfig

    return InferenceConfig.model_validate(copy.deepcopy(raw))


# --- inference-models' own ONNX model on the untrained packages ---------------------------------------


@pytest.mark.parametrize("form", FORM_NAMES)
@pytest.mark.parametrize("package", PACKAGES)
def test_onnx_model_pre_process_is_unchanged_by_rfpipe(models, photos, rfpipe_calls, package, form):
    images, color = input_forms(photos, small=False)[form]
    model = models[package]
    theirs, ours = without_and_with(lambda: model.pre_process(images, input_color_format=color), rfpipe_calls)
    assert_preprocessed_equal(theirs, ours)


@pytest.mark.parametrize("package", PACKAGES)
def test_onnx_model_detections_are_unchanged_by_rfpipe(models, photos, rfpipe_calls, package):
    rng = np.random.default_rng(13)
    images = [photos["chelsea"], random_image(rng, 1280, 720), random_image(rng, 37, 211)]
    model = models[package]
    theirs, ours = without_and_with(lambda: model.infer(images, confidence=0.3), rfpipe_calls)
    assert sum(len(d.class_id) for d in theirs) > 0  # the untrained head does find boxes at 0.3
    assert_detections_equal(theirs, ours)


@pytest.mark.parametrize("seed", range(8))
def test_onnx_model_random_sizes_are_unchanged_by_rfpipe(models, rfpipe_calls, seed):
    rng = np.random.default_rng(100 + seed)
    width, height = [(1, 1), (1, 57), (3840, 2160)][seed] if seed < 3 else rng.integers(1, 1400, 2)
    image = random_image(rng, int(width), int(height))
    model = models[PACKAGES[seed % len(PACKAGES)]]
    theirs, ours = without_and_with(lambda: model.pre_process(image, input_color_format="bgr"), rfpipe_calls)
    assert_preprocessed_equal(theirs, ours)


def test_onnx_model_overrides_are_unchanged_by_rfpipe(models, photos, rfpipe_calls):
    from inference_models import PreProcessingOverrides

    model = models["static-crop"]
    overrides = PreProcessingOverrides(disable_static_crop=True)
    theirs, ours = without_and_with(
        lambda: model.pre_process(photos["coffee"], pre_processing_overrides=overrides), rfpipe_calls, "cpu"
    )
    assert_preprocessed_equal(theirs, ours)
    assert ours[1][0].static_crop_offset.crop_width == photos["coffee"].shape[1]  # the crop really was off


# --- the drop-in function over the whole config matrix ---------------------------------------------------


def _drop_in_case(raw, images, color, image_size=None, overrides=None):
    config = upstream_config(raw)
    net = config.network_input
    if net.resize_mode.value == "fit-longer-edge":  # what the RF-DETR loaders substitute
        net.resize_mode = type(net.resize_mode)("stretch")
        net.padding_value = None
    module = importlib.import_module(PRE_PROCESSING)
    args = (images, config.image_pre_processing, net, torch.device("cpu"))
    kwargs = dict(input_color_format=color, image_size_wh=image_size, pre_processing_overrides=overrides)
    return module.pre_process_network_input(*args, **kwargs), integration.pre_process_network_input(*args, **kwargs)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("form", FORM_NAMES)
def test_drop_in_equals_inference_models(photos, upstream, rfpipe_calls, variant, form):
    """input_color_format=None included: the drop-in keeps upstream's reading of it on BGR networks too."""
    kwargs, image_size = VARIANTS[variant]
    images, color = input_forms(photos, small=True)[form]
    theirs, ours = _drop_in_case(make_raw_config(**kwargs), images, color, image_size)
    assert rfpipe_calls
    assert_preprocessed_equal(theirs, ours)


@pytest.mark.parametrize("variant", sorted(CONTRAST_VARIANTS))
@pytest.mark.parametrize("form", ["hwc-bgr", "hwc-none", "list-mixed-sizes", "float-tensor-chw"])
@pytest.mark.parametrize("network", ["rgb", "bgr"])
def test_drop_in_contrast_equals_inference_models(photos, upstream, rfpipe_calls, variant, form, network):
    kwargs, image_size = CONTRAST_VARIANTS[variant]
    images, color = input_forms(photos, small=True)[form]
    theirs, ours = _drop_in_case(make_raw_config(color_mode=network, **kwargs), images, color, image_size)
    assert rfpipe_calls
    assert_preprocessed_equal(theirs, ours)


@pytest.mark.parametrize("disable", ["static_crop", "grayscale", "contrast_enhancement"])
@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center-crop"])
@pytest.mark.parametrize("color", ["bgr", None])
def test_drop_in_overrides_equal_inference_models(photos, upstream, rfpipe_calls, disable, mode, color):
    from inference_models import PreProcessingOverrides

    raw = make_raw_config(
        mode=mode, size=(48, 40), dataset=(60, 50), static_crop=(10, 20, 80, 90),
        grayscale=True, contrast="Histogram Equalization", color_mode="bgr",
    )
    overrides = PreProcessingOverrides(**{f"disable_{disable}": True})
    theirs, ours = _drop_in_case(raw, photos["astronaut"][:200, :180], color, None, overrides)
    assert rfpipe_calls
    assert_preprocessed_equal(theirs, ours)


def test_drop_in_takes_an_int_image_size_as_upstream_does(photos, upstream):
    raw = make_raw_config(size=(64, 64), dynamic={"type": "pad-to-be-divisible", "value": 32})
    theirs, ours = _drop_in_case(raw, photos["chelsea"], "bgr", 70)
    assert ours[0].shape[-2:] == (96, 96)
    assert_preprocessed_equal(theirs, ours)


def test_drop_in_hands_inputs_rfpipe_refuses_back_to_inference_models(photos, upstream, rfpipe_calls, caplog):
    """int16 images: upstream casts them; rfpipe refuses them, so upstream computes them (and it is logged)."""
    image = photos["chelsea"][:50, :60].astype(np.int16)
    with caplog.at_level(logging.WARNING, logger="rfpipe"):
        theirs, ours = _drop_in_case(make_raw_config(size=(32, 32)), image, "bgr")
    assert_preprocessed_equal(theirs, ours)
    assert "inference-models' own preprocessing runs it" in caplog.text


def test_drop_in_keeps_upstream_error_for_unknown_implementation_ids(upstream):
    from inference_models.errors import ModelRuntimeError

    config = upstream_config(make_raw_config())
    with pytest.raises(ModelRuntimeError, match="supports only"):
        integration.pre_process_network_input(
            np.zeros((8, 8, 3), np.uint8), config.image_pre_processing, config.network_input,
            torch.device("cpu"), preprocessor_implementation_id="triton-universal-v1",
        )


# --- install / uninstall ---------------------------------------------------------------------------------------


def _bindings():
    return {
        (name, attr): getattr(sys.modules[name], attr)
        for name in (PRE_PROCESSING, COMMON, CATALOG, BACKEND_PATH)
        for attr in ("pre_process_network_input", "build_rfdetr_implementation_registry")
        if hasattr(sys.modules[name], attr)
    }


def test_uninstall_restores_the_very_same_functions(upstream):
    importlib.import_module(BACKEND_PATH)
    before = _bindings()
    assert len(before) == 4
    assert integration.install()
    assert integration.install(implementation="cpu")  # installing twice is harmless
    during = _bindings()
    assert during[(COMMON, "pre_process_network_input")] is integration.pre_process_network_input
    assert during[(PRE_PROCESSING, "pre_process_network_input")] is integration.pre_process_network_input
    assert all(during[key] is not before[key] for key in before)
    integration.uninstall()
    after = _bindings()
    assert all(after[key] is before[key] for key in before)
    assert not integration.installed()


def test_a_module_imported_while_installed_gets_the_originals_back(upstream, monkeypatch):
    name = "inference_models.models.rfdetr.rfdetr_semantic_segmentation_onnx"
    original = importlib.import_module(PRE_PROCESSING).pre_process_network_input
    monkeypatch.delitem(sys.modules, name, raising=False)
    assert integration.install()
    fresh = importlib.import_module(name)
    assert fresh.pre_process_network_input is integration.pre_process_network_input
    integration.uninstall()
    assert fresh.pre_process_network_input is original


def test_install_makes_the_registry_auto_choose_base(upstream):
    from inference_models.models.optimization.contracts import OptimizationStage

    def auto_preprocessors():
        build = sys.modules[BACKEND_PATH].build_rfdetr_implementation_registry
        registry = build(device=torch.device("cpu"), backend="onnx")
        return registry.auto_preferences(stage=OptimizationStage.PREPROCESS)

    importlib.import_module(BACKEND_PATH)
    assert auto_preprocessors()[0] == "triton-universal-v1"
    assert integration.install()
    assert auto_preprocessors() == ("base",)
    integration.uninstall()
    assert auto_preprocessors()[0] == "triton-universal-v1"


def test_install_refuses_an_unverified_inference_models_version(upstream, monkeypatch):
    import inference_models

    before = _bindings()
    monkeypatch.setattr(inference_models, "__version__", "0.40.0")
    with pytest.raises(ValueError, match=r"0\.39\.x, but 0\.40\.0 is installed; pass allow_untested_version=True"):
        integration.install()
    assert _bindings() == before and not integration.installed()
    assert integration.install(allow_untested_version=True)


def test_install_refuses_when_the_self_check_finds_a_difference(upstream, monkeypatch, caplog):
    """An inference-models whose base numbers moved by one float32 ulp: nothing is swapped."""
    module = importlib.import_module(PRE_PROCESSING)
    real = module.TF

    class OneUlpOff:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def normalize(tensor, mean, std):
            out = real.normalize(tensor, mean=mean, std=std)
            return torch.nextafter(out, torch.full_like(out, float("inf")))

    before = _bindings()
    monkeypatch.setattr(module, "TF", OneUlpOff())
    with caplog.at_level(logging.WARNING, logger="rfpipe"):
        assert integration.install() is False
    assert "not installed, probe 0 (stretch, cpu): the pre-processed tensor differs" in caplog.text
    assert _bindings() == before and not integration.installed()


def test_install_rejects_unknown_implementations():
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        integration.install(implementation="fast")


# --- CUDA (runs on a GPU machine) -----------------------------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES)
def test_cuda_drop_in_equals_inference_models_on_the_gpu(packages, upstream, photos, rfpipe_calls, package):  # noqa: F811
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    config = upstream_config(json.loads((packages[package] / "inference_config.json").read_text()))
    device = torch.device("cuda", torch.cuda.current_device())
    images = [photos["chelsea"], photos["retina"], random_image(np.random.default_rng(3), 1920, 1080)]
    args = (images, config.image_pre_processing, config.network_input, device)
    theirs = importlib.import_module(PRE_PROCESSING).pre_process_network_input(*args, input_color_format="bgr")
    assert integration.install(implementation="cuda")
    ours = integration.pre_process_network_input(*args, input_color_format="bgr")
    assert set(rfpipe_calls) == {"cuda"}
    assert_preprocessed_equal(theirs, ours)
