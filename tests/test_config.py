"""Model packages -> ModelConfig: realistic packages parse as inference-models parses them, and every
invalid package gets a ConfigError naming the file, the field and the problem."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

import rfpipe
from rfpipe.config import (
    ConfigError,
    ContrastType,
    DynamicSizeMode,
    ImageSize,
    ModelConfig,
    ResizeFilter,
    ResizeMode,
    StaticCrop,
    load_config,
)

IMAGENET = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]

# Packages as Roboflow writes them: hyphenated pre-processing keys, explicit nulls for unset
# fields (pydantic dumps with aliases), extra sections rfpipe does not read.
PLAIN_STRETCH = {
    "image_pre_processing": {"auto-orient": {"enabled": True}, "static-crop": None, "contrast": None, "grayscale": None},
    "network_input": {
        "training_input_size": {"height": 560, "width": 560},
        "dataset_version_resize_dimensions": None,
        "dynamic_spatial_size_supported": False,
        "dynamic_spatial_size_mode": None,
        "color_mode": "rgb",
        "resize_mode": "stretch",
        "padding_value": None,
        "input_channels": 3,
        "scaling_factor": 255,
        "normalization": IMAGENET,
    },
    "forward_pass": {"static_batch_size": None, "max_dynamic_batch_size": 16},
    "post_processing": {"type": "sigmoid", "fused": False},
    "model_initialization": None,
    "class_names_operations": None,
}

EVERYTHING_ON = {
    "image_pre_processing": {
        "auto-orient": {"enabled": True},
        "static-crop": {"enabled": True, "x_min": 10, "x_max": 90, "y_min": 5, "y_max": 95},
        "contrast": {"enabled": True, "type": "Adaptive Equalization"},
        "grayscale": {"enabled": True},
    },
    "network_input": {
        "training_input_size": {"height": 432, "width": 576},
        "dataset_version_resize_dimensions": {"height": 480, "width": 640},
        "dynamic_spatial_size_supported": True,
        "dynamic_spatial_size_mode": {"type": "pad-to-be-divisible", "value": 32},
        "color_mode": "bgr",
        "resize_mode": "letterbox",
        "padding_value": 127,
        "input_channels": 3,
        "scaling_factor": 255,
        "normalization": [[0.5, 0.4, 0.3], [0.2, 0.25, 0.3]],
    },
    "forward_pass": {"static_batch_size": 1},
    "post_processing": {"type": "sigmoid", "fused": False},
    "class_names_operations": [
        {"type": "class_name_removal", "class_name": "background"},
        {"type": "class_name_removal", "class_name": "unlabeled"},
    ],
}

DISABLED_STEPS_CENTER_CROP_ANY_SIZE = {
    "image_pre_processing": {
        "auto-orient": {"enabled": False},
        # Disabled steps are not read further, whatever their settings say.
        "static-crop": {"enabled": False, "x_min": 0, "x_max": 0, "y_min": 0, "y_max": 0},
        "contrast": {"enabled": False, "type": "Histogram Equalization"},
        "grayscale": {"enabled": False},
    },
    "network_input": {
        "training_input_size": {"height": 384, "width": 384},
        "dataset_version_resize_dimensions": {"height": 300, "width": 500},
        "dynamic_spatial_size_supported": True,
        "dynamic_spatial_size_mode": {"type": "any-size"},
        "color_mode": "rgb",
        "resize_mode": "center-crop",
        "input_channels": 3,
    },
}

CONTRAST_STRETCHING_REFLECT = {
    "image_pre_processing": {"contrast": {"enabled": True, "type": "Contrast Stretching"}},
    "network_input": {
        "training_input_size": {"height": 640, "width": 640},
        "dataset_version_resize_dimensions": {"height": 640, "width": 640},
        "dynamic_spatial_size_supported": False,
        "color_mode": "rgb",
        "resize_mode": "letterbox-reflect-edges",
        "padding_value": 0,
        "input_channels": 3,
        "scaling_factor": 1,
        "normalization": None,
    },
}

FIT_LONGER_EDGE = {
    "network_input": {
        "training_input_size": {"height": 512, "width": 512},
        "dataset_version_resize_dimensions": {"height": 480, "width": 640},
        "dynamic_spatial_size_supported": False,
        "color_mode": "rgb",
        "resize_mode": "fit-longer-edge",
        "padding_value": 255,
        "input_channels": 3,
        "normalization": IMAGENET,
    },
}

REALISTIC = {
    "plain-stretch": PLAIN_STRETCH,
    "everything-on": EVERYTHING_ON,
    "disabled-steps-center-crop-any-size": DISABLED_STEPS_CENTER_CROP_ANY_SIZE,
    "contrast-stretching-reflect": CONTRAST_STRETCHING_REFLECT,
    "fit-longer-edge": FIT_LONGER_EDGE,
}


def write_package(directory: Path, config, class_names: str | None = "car\ntruck\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (directory / "inference_config.json").write_text(text, encoding="utf-8")
    if class_names is not None:
        (directory / "class_names.txt").write_text(class_names, encoding="utf-8")
    return directory


def with_change(base: dict, path: str, value) -> dict:
    """A deep copy of `base` with the dotted `path` set to `value` (or removed when value is DELETE)."""
    result = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = result
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return result


DELETE = object()


# --- realistic packages ----------------------------------------------------------------------


def test_plain_stretch_package_fields():
    cfg = ModelConfig.from_dict(PLAIN_STRETCH, class_names=["car", "truck"])
    assert cfg.training_size == ImageSize(width=560, height=560)
    assert cfg.resize_mode is ResizeMode.STRETCH
    assert cfg.color_mode == "rgb"
    assert cfg.dataset_size is None
    assert cfg.dynamic_size_mode is None and cfg.dynamic_size_divisor is None
    assert not cfg.dynamic_size_supported
    assert cfg.padding_value == 0
    assert cfg.scaling_factor == 255
    assert cfg.normalization == (tuple(IMAGENET[0]), tuple(IMAGENET[1]))
    assert cfg.resize_filter is ResizeFilter.PILLOW_BILINEAR
    assert cfg.static_crop is None and cfg.contrast is None and not cfg.grayscale
    assert cfg.auto_orient
    assert cfg.class_names == ("car", "truck")
    assert cfg.removed_class_names == ()
    assert cfg.max_dynamic_batch_size == 16
    assert not cfg.two_step


def test_everything_on_package_fields():
    cfg = ModelConfig.from_dict(EVERYTHING_ON, class_names=("background", "car", "unlabeled"))
    assert cfg.training_size == ImageSize(width=576, height=432)
    assert cfg.dataset_size == ImageSize(width=640, height=480)
    assert cfg.resize_mode is ResizeMode.LETTERBOX and cfg.two_step
    assert cfg.color_mode == "bgr"
    assert cfg.dynamic_size_mode is DynamicSizeMode.DIVISIBLE and cfg.dynamic_size_divisor == 32
    assert cfg.padding_value == 127
    assert cfg.static_crop == StaticCrop(x_min=10, x_max=90, y_min=5, y_max=95)
    assert cfg.contrast is ContrastType.ADAPTIVE_EQUALIZATION
    assert cfg.grayscale and cfg.auto_orient
    assert cfg.removed_class_names == ("background", "unlabeled")
    assert cfg.max_dynamic_batch_size is None


def test_disabled_steps_are_off_and_not_validated():
    cfg = ModelConfig.from_dict(DISABLED_STEPS_CENTER_CROP_ANY_SIZE)
    assert cfg.static_crop is None and cfg.contrast is None
    assert not cfg.grayscale and not cfg.auto_orient
    assert cfg.resize_mode is ResizeMode.CENTER_CROP and cfg.two_step
    assert cfg.dynamic_size_mode is DynamicSizeMode.ANY_SIZE and cfg.dynamic_size_divisor is None
    assert cfg.normalization is None and cfg.scaling_factor is None


def test_letterbox_reflect_edges_and_contrast_stretching():
    cfg = ModelConfig.from_dict(CONTRAST_STRETCHING_REFLECT)
    assert cfg.resize_mode is ResizeMode.LETTERBOX_REFLECT_EDGES and cfg.two_step
    assert cfg.contrast is ContrastType.CONTRAST_STRETCHING
    assert cfg.scaling_factor == 1 and cfg.normalization is None


def test_fit_longer_edge_is_stretch_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="rfpipe"):
        cfg = ModelConfig.from_dict(FIT_LONGER_EDGE, source="pkg/inference_config.json")
    assert cfg.resize_mode is ResizeMode.STRETCH
    assert not cfg.two_step  # the dataset dims are not replayed for stretch
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "fit-longer-edge" in warnings[0].getMessage()
    assert "pkg/inference_config.json" in warnings[0].getMessage()


def test_defaults_for_absent_optional_fields():
    cfg = ModelConfig.from_dict({"network_input": {"training_input_size": {"height": 48, "width": 64}}})
    assert cfg.training_size == ImageSize(64, 48)
    assert cfg.resize_mode is ResizeMode.STRETCH
    assert cfg.color_mode == "rgb"
    assert cfg.input_channels == 3
    assert cfg.padding_value == 0
    assert cfg.class_names == ()


def test_integral_floats_are_accepted_as_integers():
    raw = with_change(PLAIN_STRETCH, "network_input.training_input_size", {"height": 560.0, "width": 320.0})
    cfg = ModelConfig.from_dict(raw)
    assert cfg.training_size == ImageSize(320, 560)
    assert isinstance(cfg.training_size.width, int)


def test_config_is_hashable_and_equal_by_value():
    a = ModelConfig.from_dict(EVERYTHING_ON)
    b = ModelConfig.from_dict(copy.deepcopy(EVERYTHING_ON))
    assert a == b and hash(a) == hash(b)
    assert a.raw == EVERYTHING_ON


def test_cv2_linear_resize_filter():
    cfg = ModelConfig.from_dict(with_change(PLAIN_STRETCH, "network_input.resize_filter", "cv2-linear"))
    assert cfg.resize_filter is ResizeFilter.CV2_LINEAR


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_load_config_from_directory_and_file(tmp_path, name):
    package = write_package(tmp_path / name, REALISTIC[name], class_names="car\n  traffic light  \n\n\nperson\n\n")
    from_dir = load_config(package)
    from_file = load_config(package / "inference_config.json")
    source = str(package / "inference_config.json")
    expected = ModelConfig.from_dict(REALISTIC[name], class_names=["car", "traffic light", "person"], source=source)
    assert from_dir == expected and from_file == expected
    assert from_dir.class_names == ("car", "traffic light", "person")
    assert rfpipe.load_config(str(package)) == expected


def test_package_without_class_names_file_has_no_names(tmp_path):
    package = write_package(tmp_path / "p", PLAIN_STRETCH, class_names=None)
    assert load_config(package).class_names == ()


def test_class_names_keep_order_and_duplicates(tmp_path):
    package = write_package(tmp_path / "p", PLAIN_STRETCH, class_names="b\na\r\nb\n")
    assert load_config(package).class_names == ("b", "a", "b")


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_parse_matches_inference_models(name):
    """The fields inference-models reads from the same dict, after the RF-DETR loaders' substitution."""
    pytest.importorskip("inference_models", reason="inference-models is not installed")
    from inference_models.models.common.roboflow.model_packages import (
        AnySizePadding,
        DivisiblePadding,
        InferenceConfig,
    )

    raw = REALISTIC[name]
    theirs = InferenceConfig.model_validate(copy.deepcopy(raw))
    ours = ModelConfig.from_dict(raw)
    net, pre = theirs.network_input, theirs.image_pre_processing
    assert ours.training_size == ImageSize(net.training_input_size.width, net.training_input_size.height)
    if net.dataset_version_resize_dimensions is None:
        assert ours.dataset_size is None
    else:
        dims = net.dataset_version_resize_dimensions
        assert ours.dataset_size == ImageSize(dims.width, dims.height)
    mode = "stretch" if net.resize_mode.value == "fit-longer-edge" else net.resize_mode.value
    assert ours.resize_mode.value == mode
    assert ours.color_mode == net.color_mode.value
    assert ours.dynamic_size_supported == net.dynamic_spatial_size_supported
    if isinstance(net.dynamic_spatial_size_mode, DivisiblePadding):
        assert ours.dynamic_size_mode is DynamicSizeMode.DIVISIBLE
        assert ours.dynamic_size_divisor == net.dynamic_spatial_size_mode.value
    elif isinstance(net.dynamic_spatial_size_mode, AnySizePadding):
        assert ours.dynamic_size_mode is DynamicSizeMode.ANY_SIZE
    if mode != "stretch":  # stretch never pads (the loaders reset it to None)
        assert ours.padding_value == (net.padding_value or 0)
    assert ours.scaling_factor == net.scaling_factor
    if net.normalization is None:
        assert ours.normalization is None
    else:
        assert ours.normalization == (tuple(net.normalization[0]), tuple(net.normalization[1]))
    crop = pre.static_crop
    if crop is not None and crop.enabled:
        assert ours.static_crop == StaticCrop(crop.x_min, crop.x_max, crop.y_min, crop.y_max)
    else:
        assert ours.static_crop is None
    contrast = pre.contrast
    assert ours.contrast == (ContrastType(contrast.type.value) if contrast is not None and contrast.enabled else None)
    assert ours.grayscale == bool(pre.grayscale is not None and pre.grayscale.enabled)
    assert ours.auto_orient == bool(pre.auto_orient is not None and pre.auto_orient.enabled)
    removed = tuple(op.class_name for op in theirs.class_names_operations or [])
    assert ours.removed_class_names == removed
    assert ours.max_dynamic_batch_size == theirs.forward_pass.max_dynamic_batch_size


# --- invalid packages: ConfigError naming field and problem ---------------------------------

# (base, dotted field path to change, new value, field named in the message, problem words)
INVALID = {
    "unknown-resize-mode": (PLAIN_STRETCH, "network_input.resize_mode", "squash", "network_input.resize_mode", "unknown value 'squash'"),
    "null-resize-mode": (PLAIN_STRETCH, "network_input.resize_mode", None, "network_input.resize_mode", "unknown value None"),
    "missing-training-size": (PLAIN_STRETCH, "network_input.training_input_size", DELETE, "network_input.training_input_size", "missing"),
    "training-size-without-height": (PLAIN_STRETCH, "network_input.training_input_size", {"width": 560}, "network_input.training_input_size", "needs both width and height"),
    "training-size-zero": (PLAIN_STRETCH, "network_input.training_input_size", {"width": 560, "height": 0}, "network_input.training_input_size.height", "must be >= 1"),
    "training-size-fractional": (PLAIN_STRETCH, "network_input.training_input_size", {"width": 560.5, "height": 560}, "network_input.training_input_size.width", "expected an integer"),
    "training-size-list": (PLAIN_STRETCH, "network_input.training_input_size", [560, 560], "network_input.training_input_size", "expected an object"),
    "dataset-dims-string": (PLAIN_STRETCH, "network_input.dataset_version_resize_dimensions", {"width": "640", "height": 480}, "network_input.dataset_version_resize_dimensions.width", "expected an integer"),
    "missing-network-input": (PLAIN_STRETCH, "network_input", DELETE, "network_input", "missing"),
    "normalization-two-channels": (PLAIN_STRETCH, "network_input.normalization", [[0.5, 0.5], [0.2, 0.2]], "network_input.normalization", "expected [[3 means], [3 stds]]"),
    "normalization-flat": (PLAIN_STRETCH, "network_input.normalization", [0.485, 0.456, 0.406], "network_input.normalization", "expected [[3 means], [3 stds]]"),
    "normalization-three-rows": (PLAIN_STRETCH, "network_input.normalization", [[0.5] * 3, [0.2] * 3, [0.1] * 3], "network_input.normalization", "expected [[3 means], [3 stds]]"),
    "normalization-zero-std": (PLAIN_STRETCH, "network_input.normalization", [[0.5] * 3, [0.2, 0.0, 0.2]], "network_input.normalization", "stds must be non-zero"),
    "normalization-string": (PLAIN_STRETCH, "network_input.normalization", [["a", 0.5, 0.5], [0.2] * 3], "network_input.normalization", "means must be finite numbers"),
    "normalization-nan": (PLAIN_STRETCH, "network_input.normalization", [[0.5] * 3, [0.2, float("nan"), 0.2]], "network_input.normalization", "stds must be finite numbers"),
    "three-channels-only": (PLAIN_STRETCH, "network_input.input_channels", 1, "network_input.input_channels", "only 3-channel networks"),
    "four-channels": (PLAIN_STRETCH, "network_input.input_channels", 4, "network_input.input_channels", "only 3-channel networks"),
    "unknown-color-mode": (PLAIN_STRETCH, "network_input.color_mode", "grayscale", "network_input.color_mode", "unknown value 'grayscale'"),
    "upper-case-color-mode": (PLAIN_STRETCH, "network_input.color_mode", "RGB", "network_input.color_mode", "unknown value 'RGB'"),
    "padding-named": (PLAIN_STRETCH, "network_input.padding_value", "black edges", "network_input.padding_value", "expected an integer"),
    "padding-too-large": (PLAIN_STRETCH, "network_input.padding_value", 256, "network_input.padding_value", "must be in 0..255"),
    "padding-negative": (PLAIN_STRETCH, "network_input.padding_value", -1, "network_input.padding_value", "must be in 0..255"),
    "scaling-factor-zero": (PLAIN_STRETCH, "network_input.scaling_factor", 0, "network_input.scaling_factor", "must be non-zero"),
    "scaling-factor-string": (PLAIN_STRETCH, "network_input.scaling_factor", "255", "network_input.scaling_factor", "expected a finite number"),
    "unknown-resize-filter": (PLAIN_STRETCH, "network_input.resize_filter", "lanczos", "network_input.resize_filter", "unknown value 'lanczos'"),
    "dynamic-flag-string": (PLAIN_STRETCH, "network_input.dynamic_spatial_size_supported", "yes", "network_input.dynamic_spatial_size_supported", "expected true or false"),
    "dynamic-mode-missing": (PLAIN_STRETCH, "network_input.dynamic_spatial_size_supported", True, "network_input.dynamic_spatial_size_mode", "missing"),
    "dynamic-mode-unknown": (EVERYTHING_ON, "network_input.dynamic_spatial_size_mode", {"type": "pad-to-be-square"}, "network_input.dynamic_spatial_size_mode.type", "unknown value 'pad-to-be-square'"),
    "dynamic-divisor-missing": (EVERYTHING_ON, "network_input.dynamic_spatial_size_mode", {"type": "pad-to-be-divisible"}, "network_input.dynamic_spatial_size_mode.value", "missing"),
    "dynamic-divisor-zero": (EVERYTHING_ON, "network_input.dynamic_spatial_size_mode", {"type": "pad-to-be-divisible", "value": 0}, "network_input.dynamic_spatial_size_mode.value", "must be >= 1"),
    "dynamic-mode-not-object": (EVERYTHING_ON, "network_input.dynamic_spatial_size_mode", "any-size", "network_input.dynamic_spatial_size_mode", "expected an object"),
    "unknown-contrast-type": (EVERYTHING_ON, "image_pre_processing.contrast", {"enabled": True, "type": "Gamma"}, "image_pre_processing.contrast.type", "unknown value 'Gamma'"),
    "contrast-type-missing": (EVERYTHING_ON, "image_pre_processing.contrast", {"enabled": True}, "image_pre_processing.contrast.type", "unknown value None"),
    "enabled-not-bool": (EVERYTHING_ON, "image_pre_processing.grayscale", {"enabled": "true"}, "image_pre_processing.grayscale.enabled", "expected true or false"),
    "pre-step-not-object": (EVERYTHING_ON, "image_pre_processing.grayscale", True, "image_pre_processing.grayscale", "expected an object"),
    "crop-above-100": (EVERYTHING_ON, "image_pre_processing.static-crop.x_max", 101, "image_pre_processing.static-crop.x_max", "percentage in 0..100"),
    "crop-negative": (EVERYTHING_ON, "image_pre_processing.static-crop.y_min", -5, "image_pre_processing.static-crop.y_min", "percentage in 0..100"),
    "crop-fractional": (EVERYTHING_ON, "image_pre_processing.static-crop.x_min", 12.5, "image_pre_processing.static-crop.x_min", "expected an integer"),
    "crop-missing-bound": (EVERYTHING_ON, "image_pre_processing.static-crop.y_max", DELETE, "image_pre_processing.static-crop.y_max", "missing"),
    "crop-x-min-equals-max": (EVERYTHING_ON, "image_pre_processing.static-crop.x_min", 90, "image_pre_processing.static-crop", "x_min (90) must be below x_max (90)"),
    "crop-y-min-above-max": (EVERYTHING_ON, "image_pre_processing.static-crop.y_min", 96, "image_pre_processing.static-crop", "y_min (96) must be below y_max (95)"),
    "class-op-unknown-type": (PLAIN_STRETCH, "class_names_operations", [{"type": "class_name_rename", "class_name": "a"}], "class_names_operations[0]", "class_name_removal"),
    "class-op-not-list": (PLAIN_STRETCH, "class_names_operations", {"type": "class_name_removal", "class_name": "a"}, "class_names_operations", "expected a list"),
    "batch-size-zero": (PLAIN_STRETCH, "forward_pass.max_dynamic_batch_size", 0, "forward_pass.max_dynamic_batch_size", "must be >= 1"),
    "pre-processing-not-object": (PLAIN_STRETCH, "image_pre_processing", ["grayscale"], "image_pre_processing", "expected an object"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_package_error_names_file_field_and_problem(tmp_path, name):
    base, path, value, field, problem = INVALID[name]
    raw = with_change(base, path, value)
    with pytest.raises(ConfigError) as from_dict:
        ModelConfig.from_dict(raw, source="my/inference_config.json")
    message = str(from_dict.value)
    assert message.startswith("my/inference_config.json: "), message
    assert f" {field}: " in message, message
    assert problem in message, message
    # the same package on disk names the real file
    package = write_package(tmp_path / "pkg", json.dumps(raw, allow_nan=True))
    with pytest.raises(ConfigError) as from_disk:
        load_config(package)
    assert str(package / "inference_config.json") in str(from_disk.value)
    assert problem in str(from_disk.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("name", ["unknown-resize-mode", "missing-network-input", "unknown-contrast-type", "dynamic-mode-unknown"])
def test_invalid_packages_inference_models_also_rejects(name):
    """Our refusals where the schema is the same are refusals upstream too (no stricter-by-mistake drift)."""
    pytest.importorskip("inference_models", reason="inference-models is not installed")
    from inference_models.models.common.roboflow.model_packages import InferenceConfig
    from pydantic import ValidationError

    base, path, value, _, _ = INVALID[name]
    with pytest.raises(ValidationError):
        InferenceConfig.model_validate(with_change(base, path, value))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found") as error:
        load_config(tmp_path)
    assert str(tmp_path / "inference_config.json") in str(error.value)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "does-not-exist")


def test_unreadable_json(tmp_path):
    package = write_package(tmp_path / "p", '{"network_input": {"training_input_size": ')
    with pytest.raises(ConfigError, match="unreadable JSON") as error:
        load_config(package)
    assert str(package / "inference_config.json") in str(error.value)


def test_json_that_is_not_utf8(tmp_path):
    package = tmp_path / "p"
    package.mkdir()
    (package / "inference_config.json").write_bytes(b'{"network_input": "\xff\xfe"}')
    with pytest.raises(ConfigError, match="unreadable JSON"):
        load_config(package)


@pytest.mark.parametrize("text, kind", [("[1, 2]", "list"), ('"config"', "str"), ("null", "NoneType"), ("42", "int")])
def test_json_that_is_not_an_object(tmp_path, text, kind):
    package = write_package(tmp_path / "p", text)
    with pytest.raises(ConfigError, match=f"expected a JSON object at the top level, got {kind}") as error:
        load_config(package)
    assert str(package / "inference_config.json") in str(error.value)


def test_from_dict_refuses_non_dict():
    with pytest.raises(ConfigError, match="expected a JSON object at the top level, got list"):
        ModelConfig.from_dict([PLAIN_STRETCH])


@pytest.mark.parametrize("content", ["", "\n\n", "   \n\t\n"])
def test_empty_class_names_file(tmp_path, content):
    package = write_package(tmp_path / "p", PLAIN_STRETCH, class_names=content)
    with pytest.raises(ConfigError, match="no class names") as error:
        load_config(package)
    assert str(package / "class_names.txt") in str(error.value)


def test_class_names_file_not_utf8(tmp_path):
    package = write_package(tmp_path / "p", PLAIN_STRETCH, class_names=None)
    (package / "class_names.txt").write_bytes(b"car\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read class names") as error:
        load_config(package)
    assert "class_names.txt" in str(error.value)


def test_config_error_in_package_names_the_config_file(tmp_path):
    raw = with_change(PLAIN_STRETCH, "network_input.resize_mode", "squash")
    package = write_package(tmp_path / "pkg", raw)
    with pytest.raises(ConfigError) as error:
        load_config(package)
    assert str(error.value).startswith(f"{package / 'inference_config.json'}: network_input.resize_mode: ")


def test_imagenet_normalization_is_written_once_in_config():
    """The normalisation RF-DETR trains with: one constant, used by the checkpoint config (a direct load and
    `rfpipe export` alike) and the GPU self-check."""
    from rfpipe.config import IMAGENET_NORMALIZATION, checkpoint_config_dict

    assert IMAGENET_NORMALIZATION == (tuple(IMAGENET[0]), tuple(IMAGENET[1]))
    raw = checkpoint_config_dict(320, 32)
    assert raw["network_input"]["normalization"] == [list(row) for row in IMAGENET_NORMALIZATION]
    assert ModelConfig.from_dict(raw).normalization == IMAGENET_NORMALIZATION
