"""Model package -> ModelConfig: parse and validate `inference_config.json` and `class_names.txt`.

Field names follow the Roboflow model package format (see DESIGN.md). Every problem is reported
as a `ConfigError` naming the file, the field and what is wrong with it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

logger = logging.getLogger("rfpipe")

CONFIG_FILE = "inference_config.json"
CLASS_NAMES_FILE = "class_names.txt"
# (means, stds) per RGB channel: what RF-DETR trains with, and so what a checkpoint's package declares.
IMAGENET_NORMALIZATION: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225),
)


class ConfigError(ValueError):
    """A model package (or config dict) is invalid; the message names file, field and problem."""


class ImageSize(NamedTuple):
    """A size as (width, height), the order DESIGN.md uses for every size."""

    width: int
    height: int


class ResizeMode(str, Enum):
    STRETCH = "stretch"
    LETTERBOX = "letterbox"
    CENTER_CROP = "center-crop"
    FIT_LONGER_EDGE = "fit-longer-edge"
    LETTERBOX_REFLECT_EDGES = "letterbox-reflect-edges"


class ContrastType(str, Enum):
    ADAPTIVE_EQUALIZATION = "Adaptive Equalization"
    CONTRAST_STRETCHING = "Contrast Stretching"
    HISTOGRAM_EQUALIZATION = "Histogram Equalization"


class ResizeFilter(str, Enum):
    """Which resampler takes the image to the network size.

    `pillow-bilinear` is what RF-DETR's inference reference does (antialiased). `cv2-linear` is
    OpenCV INTER_LINEAR on uint8, for models trained with Albumentations' resize (no antialias).
    """

    PILLOW_BILINEAR = "pillow-bilinear"
    CV2_LINEAR = "cv2-linear"


class DynamicSizeMode(str, Enum):
    DIVISIBLE = "pad-to-be-divisible"
    ANY_SIZE = "any-size"


@dataclass(frozen=True)
class StaticCrop:
    """Crop bounds in whole percent of the source width/height, as the package writes them."""

    x_min: int
    x_max: int
    y_min: int
    y_max: int


@dataclass(frozen=True)
class ModelConfig:
    """Everything rfpipe needs from a model package, validated once at load time."""

    training_size: ImageSize
    resize_mode: ResizeMode = ResizeMode.STRETCH
    color_mode: str = "rgb"
    dataset_size: ImageSize | None = None
    dynamic_size_mode: DynamicSizeMode | None = None
    dynamic_size_divisor: int | None = None
    padding_value: int = 0
    input_channels: int = 3
    scaling_factor: float | None = None
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    resize_filter: ResizeFilter = ResizeFilter.PILLOW_BILINEAR
    static_crop: StaticCrop | None = None
    contrast: ContrastType | None = None
    grayscale: bool = False
    auto_orient: bool = False
    class_names: tuple[str, ...] = ()
    removed_class_names: tuple[str, ...] = ()
    max_dynamic_batch_size: int | None = None
    source: str = "<dict>"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def dynamic_size_supported(self) -> bool:
        return self.dynamic_size_mode is not None

    @property
    def two_step(self) -> bool:
        """True when the dataset-version resize is replayed before the network resize."""
        return self.dataset_size is not None and self.resize_mode is not ResizeMode.STRETCH

    @classmethod
    def from_dict(
        cls,
        config: dict[str, Any],
        *,
        class_names: list[str] | tuple[str, ...] | None = None,
        source: str = "<dict>",
    ) -> ModelConfig:
        """Build a config from a parsed `inference_config.json`.

        >>> cfg = ModelConfig.from_dict({"network_input": {
        ...     "training_input_size": {"height": 560, "width": 560}, "resize_mode": "stretch",
        ...     "color_mode": "rgb", "input_channels": 3, "dynamic_spatial_size_supported": False}})
        >>> cfg.training_size
        ImageSize(width=560, height=560)
        """
        return _parse(config, tuple(class_names or ()), source)


def load_config(path: str | Path) -> ModelConfig:
    """Load a model package directory (or its `inference_config.json` directly).

    >>> cfg = load_config("path/to/package")  # model  # doctest: +SKIP
    """
    path = Path(path)
    config_path = path / CONFIG_FILE if path.is_dir() else path
    package_dir = config_path.parent
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: file not found (a model package needs {CONFIG_FILE})")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{config_path}: unreadable JSON ({error})") from error
    class_names: tuple[str, ...] = ()
    names_path = package_dir / CLASS_NAMES_FILE
    if names_path.is_file():
        class_names = read_class_names(names_path)
    return _parse(raw, class_names, str(config_path))


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """One class name per line; blank trailing lines are ignored, an empty file is an error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read class names ({error})") from error
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise ConfigError(f"{path}: no class names (the file is empty)")
    return names


# --- parsing -------------------------------------------------------------------------------


class _Reader:
    """Reads fields with errors that name the file and the dotted field path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {problem}")

    def section(self, parent: dict, key: str, path: str, required: bool = False) -> dict | None:
        value = parent.get(key)
        if value is None:
            if required:
                raise self.fail(path, "missing")
            return None
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object, got {type(value).__name__}")
        return value

    def integer(self, parent: dict, key: str, path: str, minimum: int | None = None) -> int | None:
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise self.fail(path, f"expected an integer, got {value!r}")
        value = int(value)
        if minimum is not None and value < minimum:
            raise self.fail(path, f"must be >= {minimum}, got {value}")
        return value

    def number(self, parent: dict, key: str, path: str) -> float | None:
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(path, f"expected a finite number, got {value!r}")
        return value

    def flag(self, parent: dict, key: str, path: str) -> bool:
        value = parent.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {value!r}")
        return value

    def size(self, parent: dict, key: str, path: str) -> ImageSize | None:
        section = self.section(parent, key, path)
        if section is None:
            return None
        width = self.integer(section, "width", f"{path}.width", minimum=1)
        height = self.integer(section, "height", f"{path}.height", minimum=1)
        if width is None or height is None:
            raise self.fail(path, "needs both width and height")
        return ImageSize(width, height)

    def enum(self, enum_type: type[Enum], value: Any, path: str) -> Any:
        try:
            return enum_type(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in enum_type)
            raise self.fail(path, f"unknown value {value!r} (expected one of {allowed})") from None


def _enabled(reader: _Reader, pre: dict, key: str) -> dict | None:
    section = reader.section(pre, key, f"image_pre_processing.{key}")
    if section is None or not reader.flag(section, "enabled", f"image_pre_processing.{key}.enabled"):
        return None
    return section


def _parse_static_crop(reader: _Reader, section: dict) -> StaticCrop:
    base = "image_pre_processing.static-crop"
    values = {}
    for key in ("x_min", "x_max", "y_min", "y_max"):
        value = reader.integer(section, key, f"{base}.{key}")
        if value is None:
            raise reader.fail(f"{base}.{key}", "missing")
        if not 0 <= value <= 100:
            raise reader.fail(f"{base}.{key}", f"must be a percentage in 0..100, got {value}")
        values[key] = value
    for axis in ("x", "y"):
        if values[f"{axis}_min"] >= values[f"{axis}_max"]:
            raise reader.fail(
                base, f"{axis}_min ({values[f'{axis}_min']}) must be below {axis}_max ({values[f'{axis}_max']})"
            )
    return StaticCrop(**values)


def _parse_normalization(reader: _Reader, value: Any, channels: int) -> tuple | None:
    path = "network_input.normalization"
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (list, tuple)) and len(v) == channels for v in value)
    ):
        raise reader.fail(path, f"expected [[{channels} means], [{channels} stds]], got {value!r}")
    for part, name in zip(value, ("means", "stds")):
        for v in part:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise reader.fail(path, f"{name} must be finite numbers, got {v!r}")
    if any(s == 0 for s in value[1]):
        raise reader.fail(path, f"stds must be non-zero, got {list(value[1])}")
    return tuple(value[0]), tuple(value[1])


def _parse(raw: Any, class_names: tuple[str, ...], source: str) -> ModelConfig:
    reader = _Reader(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object at the top level, got {type(raw).__name__}")
    pre = reader.section(raw, "image_pre_processing", "image_pre_processing") or {}
    net = reader.section(raw, "network_input", "network_input", required=True)

    channels = reader.integer(net, "input_channels", "network_input.input_channels")
    if channels is None:
        channels = 3
    if channels != 3:
        raise reader.fail("network_input.input_channels", f"only 3-channel networks are supported, got {channels}")

    training_size = reader.size(net, "training_input_size", "network_input.training_input_size")
    if training_size is None:
        raise reader.fail("network_input.training_input_size", "missing (RF-DETR needs a training size)")
    dataset_size = reader.size(
        net, "dataset_version_resize_dimensions", "network_input.dataset_version_resize_dimensions"
    )

    mode_value = net.get("resize_mode", "stretch")
    resize_mode = reader.enum(ResizeMode, mode_value, "network_input.resize_mode")
    if resize_mode is ResizeMode.FIT_LONGER_EDGE:
        # RF-DETR loaders substitute stretch: fit-longer-edge cannot give a fixed-size batch.
        logger.warning("%s: resize_mode 'fit-longer-edge' is applied as 'stretch' for RF-DETR", source)
        resize_mode = ResizeMode.STRETCH

    color_mode = net.get("color_mode", "rgb")
    if color_mode not in ("rgb", "bgr"):
        raise reader.fail("network_input.color_mode", f"unknown value {color_mode!r} (expected 'rgb' or 'bgr')")

    dynamic_mode = dynamic_divisor = None
    if reader.flag(net, "dynamic_spatial_size_supported", "network_input.dynamic_spatial_size_supported"):
        spec = reader.section(net, "dynamic_spatial_size_mode", "network_input.dynamic_spatial_size_mode", required=True)
        dynamic_mode = reader.enum(DynamicSizeMode, spec.get("type"), "network_input.dynamic_spatial_size_mode.type")
        if dynamic_mode is DynamicSizeMode.DIVISIBLE:
            dynamic_divisor = reader.integer(spec, "value", "network_input.dynamic_spatial_size_mode.value", minimum=1)
            if dynamic_divisor is None:
                raise reader.fail("network_input.dynamic_spatial_size_mode.value", "missing")

    padding = reader.integer(net, "padding_value", "network_input.padding_value")
    if padding is not None and not 0 <= padding <= 255:
        raise reader.fail("network_input.padding_value", f"must be in 0..255, got {padding}")

    scaling = reader.number(net, "scaling_factor", "network_input.scaling_factor")
    if scaling is not None and scaling == 0:
        raise reader.fail("network_input.scaling_factor", "must be non-zero")

    resize_filter = reader.enum(
        ResizeFilter, net.get("resize_filter", ResizeFilter.PILLOW_BILINEAR.value), "network_input.resize_filter"
    )

    crop_section = _enabled(reader, pre, "static-crop")
    contrast_section = _enabled(reader, pre, "contrast")
    contrast = None
    if contrast_section is not None:
        contrast = reader.enum(ContrastType, contrast_section.get("type"), "image_pre_processing.contrast.type")

    removed = []
    operations = raw.get("class_names_operations") or []
    if not isinstance(operations, list):
        raise reader.fail("class_names_operations", f"expected a list, got {type(operations).__name__}")
    for i, op in enumerate(operations):
        path = f"class_names_operations[{i}]"
        if not isinstance(op, dict) or op.get("type") != "class_name_removal" or not isinstance(op.get("class_name"), str):
            raise reader.fail(path, f"expected {{'type': 'class_name_removal', 'class_name': str}}, got {op!r}")
        removed.append(op["class_name"])

    forward = reader.section(raw, "forward_pass", "forward_pass") or {}
    max_batch = reader.integer(forward, "max_dynamic_batch_size", "forward_pass.max_dynamic_batch_size", minimum=1)

    return ModelConfig(
        training_size=training_size,
        resize_mode=resize_mode,
        color_mode=color_mode,
        dataset_size=dataset_size,
        dynamic_size_mode=dynamic_mode,
        dynamic_size_divisor=dynamic_divisor,
        padding_value=padding or 0,
        input_channels=channels,
        scaling_factor=scaling,
        normalization=_parse_normalization(reader, net.get("normalization"), channels),
        resize_filter=resize_filter,
        static_crop=_parse_static_crop(reader, crop_section) if crop_section is not None else None,
        contrast=contrast,
        grayscale=_enabled(reader, pre, "grayscale") is not None,
        auto_orient=_enabled(reader, pre, "auto-orient") is not None,
        class_names=tuple(class_names),
        removed_class_names=tuple(removed),
        max_dynamic_batch_size=max_batch,
        source=source,
        raw=raw,
    )


def checkpoint_config_dict(resolution: int, size_divisor: int) -> dict:
    """The `inference_config.json` a training checkpoint implies (what `rfpipe export` writes): stretch
    to its square resolution, RGB, ImageNet normalisation, and other sizes allowed when divisible by
    the patch grid, as rfdetr's own `predict(shape=...)` accepts them. A backend whose graph has a
    static input size (rfdetr's ONNX export) still runs at that size only.

    >>> checkpoint_config_dict(384, 24)["network_input"]["dynamic_spatial_size_mode"]
    {'type': 'pad-to-be-divisible', 'value': 24}
    """
    return {
        "image_pre_processing": {},
        "network_input": {
            "training_input_size": {"width": resolution, "height": resolution},
            "dynamic_spatial_size_supported": True,
            "dynamic_spatial_size_mode": {"type": "pad-to-be-divisible", "value": size_divisor},
            "resize_mode": "stretch",
            "color_mode": "rgb",
            "input_channels": 3,
            "normalization": [list(row) for row in IMAGENET_NORMALIZATION],
        },
    }
