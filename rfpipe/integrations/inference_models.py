"""rfpipe inside inference-models 0.39.x: one call makes its RF-DETR models preprocess through rfpipe.

>>> from rfpipe.integrations import inference_models
>>> inference_models.install()  # model  # doctest: +SKIP
True
>>> model = AutoModel.from_pretrained(...)  # its RF-DETR models now preprocess exactly and fast  # model  # doctest: +SKIP
>>> inference_models.uninstall()  # model  # doctest: +SKIP

**The hook, and why this one.** inference-models 0.39.x binds RF-DETR preprocessing in two layers:

1. the module-level function `inference_models.models.rfdetr.pre_processing.pre_process_network_input`,
   imported by name into the execution plan's shared adapter
   (`...rfdetr.optimization.preprocessors.common`, which its `base` and `pillow-simd-v1`
   preprocessors run) and into every other RF-DETR task module (instance segmentation, key points
   and semantic segmentation: ONNX, TensorRT, torch, CoreML), which call it directly;
2. the execution plan's preprocessor registry, built per model by
   `...rfdetr.optimization.catalog.build_rfdetr_implementation_registry` (imported by name into
   `...optimization.backend_path`, which the ONNX, torch and CoreML object-detection classes use,
   and into `...rfdetr_object_detection_trt`). Its `auto` prefers `triton-universal-v1` on a GPU
   (stretch only; other requests fall back to the CPU chain) and `pillow-simd-v1` where Pillow-SIMD
   is installed, and ends at `base`.

Registering rfpipe as a fourth preprocessor of that registry would still mean replacing the registry
builder where it is bound (the registry is built inside each model's constructor), would reach only
the object-detection classes (the other tasks never consult it), and would tie rfpipe to the
registry's contract classes (metadata with a dozen fields, four compatibility checks), which are new
in 0.39 and still moving. The function has one stable signature and every RF-DETR class reaches it.
So `install()`:

- replaces `pre_process_network_input` wherever it is bound (found by identity in the loaded
  `inference_models` modules; a module imported later copies the replaced attribute of
  `pre_processing`), with `pre_process_network_input` below, which has upstream's signature and
  return types and hands back to the original for what rfpipe does not do (a Pillow-SIMD
  `image_module`, an implementation id other than `base`, the real fit-longer-edge two-step resize,
  inputs rfpipe refuses such as 4-channel or int16 images);
- makes the registry's `auto` choose `base` (which is now rfpipe), by wrapping the registry builder
  where it is bound and clearing its automatic preprocessor preferences through the registry's own
  `set_auto_preferences`. This reaches models created after `install()`; models created before keep
  the preprocessor they chose (through `base` they use rfpipe at once). An explicitly requested
  `triton-universal-v1` or `pillow-simd-v1` is still honoured.

Safety: `install()` refuses an inference-models version outside VERIFIED_VERSIONS (ValueError,
opt-out `allow_untested_version=True`), and first runs probe images through upstream's base and
through rfpipe; unless every tensor is `torch.equal` and every metadata equal, nothing is swapped,
the reason is logged and `install()` returns False. `uninstall()` puts the original objects back.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rfpipe.config import IMAGENET_NORMALIZATION, ConfigError, ModelConfig
from rfpipe.geometry import Overrides, PreprocessMetadata
from rfpipe.preprocess import preprocess

logger = logging.getLogger("rfpipe")

VERIFIED_VERSIONS = ((0, 39),)  # (major, minor) series whose behaviour this module was checked against
IMPLEMENTATIONS = ("auto", "reference", "cpu", "cuda")

_PRE_PROCESSING = "inference_models.models.rfdetr.pre_processing"
_FUNCTION = "pre_process_network_input"
_CATALOG = "inference_models.models.rfdetr.optimization.catalog"
_REGISTRY_BUILDER = "build_rfdetr_implementation_registry"
# Modules that bind the function or the registry builder by name, imported by install() so that
# the ones importable here are rebound now (the TensorRT ones import only where TensorRT is installed).
_BINDING_MODULES = (
    "inference_models.models.rfdetr.optimization.preprocessors.common",
    "inference_models.models.rfdetr.optimization.backend_path",
)

_lock = threading.RLock()
# While installed: the original function and registry builder, the wrapped builder, the implementation
# and the (module, attribute, original) triples that were rebound.
_state: dict[str, Any] = {}
_configs: dict[str, ModelConfig] = {}  # inference-models config contents -> rfpipe config
_handbacks: set[str] = set()  # reasons already logged (at most 100 are)
_announced: set[tuple[str, str]] = set()  # (implementation, device) pairs whose first use was logged


# --- the drop-in ----------------------------------------------------------------------------------


def pre_process_network_input(
    images: Any,
    image_pre_processing: Any,
    network_input: Any,
    target_device: torch.device,
    input_color_format: str | None = None,
    image_size_wh: int | tuple[int, int] | None = None,
    pre_processing_overrides: Any = None,
    preprocessor_implementation_id: str = "base",
    image_module: Any = None,
) -> tuple[torch.Tensor, list[Any]]:
    """inference-models' RF-DETR `pre_process_network_input`, computed by rfpipe: same arguments, same
    tensor (bit for bit), same `PreProcessingMetadata`, same handling of `input_color_format=None`.

    Uses the implementation given to `install()` ("auto" when not installed).

    >>> from inference_models.models.common.roboflow.model_packages import InferenceConfig
    >>> config = InferenceConfig.model_validate({"network_input": {
    ...     "training_input_size": {"height": 64, "width": 64}, "resize_mode": "stretch",
    ...     "color_mode": "rgb", "input_channels": 3, "dynamic_spatial_size_supported": False}})
    >>> batch, metadata = pre_process_network_input(
    ...     np.zeros((48, 80, 3), np.uint8), config.image_pre_processing, config.network_input,
    ...     torch.device("cpu"), input_color_format="bgr")
    >>> tuple(batch.shape), metadata[0].original_size
    ((1, 3, 64, 64), ImageDimensions(height=48, width=80))
    """
    original = _upstream_function()

    def upstream() -> tuple[torch.Tensor, list[Any]]:
        return original(
            images, image_pre_processing, network_input, target_device,
            input_color_format=input_color_format, image_size_wh=image_size_wh,
            pre_processing_overrides=pre_processing_overrides,
            preprocessor_implementation_id=preprocessor_implementation_id, image_module=image_module,
        )

    if preprocessor_implementation_id != "base" or image_module is not None:
        return upstream()  # its own error for unknown ids; Pillow-SIMD's numbers for pillow-simd-v1
    if _is_real_fit_longer_edge(network_input):
        return upstream()
    implementation = _state.get("implementation", "auto")
    try:
        result = _run_rfpipe(
            images, image_pre_processing, network_input, target_device, input_color_format, image_size_wh,
            pre_processing_overrides, implementation,
        )
    except _MixedNoneReadings:
        return upstream()
    except (ConfigError, TypeError, ValueError) as error:
        _note_handback(error)
        return upstream()
    if (implementation, str(target_device)) not in _announced:  # once: a user can see it is in use
        _announced.add((implementation, str(target_device)))
        logger.info("rfpipe preprocesses inference-models' RF-DETR input (implementation=%s, device=%s)",
                    implementation, target_device)
    return result


class _MixedNoneReadings(Exception):
    """A list whose items upstream reads differently for input_color_format=None."""


def _run_rfpipe(
    images: Any, image_pre_processing: Any, network_input: Any, device: torch.device, input_color_format: str | None,
    image_size_wh: Any, overrides: Any, implementation: str,
) -> tuple[torch.Tensor, list[Any]]:
    config = _rfpipe_config(image_pre_processing, network_input)
    color_format = input_color_format
    if color_format is None:
        color_format = _upstream_meaning_of_none(images, image_pre_processing, network_input, overrides)
    else:
        color_format = str(getattr(color_format, "value", color_format))
    if isinstance(image_size_wh, (int, float)):
        image_size_wh = (int(image_size_wh), int(image_size_wh))
    batch, metadata = preprocess(
        images, config, device=device, input_color_format=color_format, image_size=image_size_wh,
        overrides=_overrides(overrides), implementation=implementation,
    )
    return batch, [_upstream_metadata(m) for m in metadata]


def _upstream_function() -> Callable[..., Any]:
    original = _state.get("function")
    if original is not None:
        return original
    module = sys.modules.get(_PRE_PROCESSING) or __import__(_PRE_PROCESSING, fromlist=[_FUNCTION])
    return getattr(module, _FUNCTION)


def _note_handback(error: Exception) -> None:
    # Once per kind of reason, so a stream of such inputs does not flood the log.
    reason = f"{type(error).__name__}: {str(error).split(':')[-1].strip()[:120]}"
    if reason not in _handbacks and len(_handbacks) < 100:
        _handbacks.add(reason)
        logger.warning("rfpipe does not take this input (%s); inference-models' own preprocessing runs it", reason)


def _is_real_fit_longer_edge(network_input: Any) -> bool:
    # The loaders substitute stretch for fit-longer-edge; called directly, upstream really runs it.
    mode = getattr(network_input.resize_mode, "value", network_input.resize_mode)
    return mode == "fit-longer-edge" and network_input.dataset_version_resize_dimensions is not None


def _rfpipe_config(image_pre_processing: Any, network_input: Any) -> ModelConfig:
    raw = {
        "image_pre_processing": image_pre_processing.model_dump(by_alias=True, mode="json", exclude_none=True),
        "network_input": network_input.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    key = repr(raw)  # the pydantic objects are mutable: key on their contents
    config = _configs.get(key)
    if config is None:
        config = ModelConfig.from_dict(raw, source="inference-models config")
        if len(_configs) > 64:  # a long-lived process loading many models: keep the cache small
            _configs.clear()
        _configs[key] = config
    return config


def _overrides(overrides: Any) -> Overrides | None:
    if overrides is None:
        return None
    return Overrides(
        disable_static_crop=bool(overrides.disable_static_crop),
        disable_contrast=bool(overrides.disable_contrast_enhancement),
        disable_grayscale=bool(overrides.disable_grayscale),
    )


def _items(images: Any) -> list[Any]:
    if isinstance(images, list):
        return images
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return [images[0]] if len(images) else []
    return [images]


def _upstream_meaning_of_none(images: Any, image_pre_processing: Any, network_input: Any, overrides: Any) -> str:
    """What `input_color_format=None` means to inference-models 0.39 for this call ("bgr" or "rgb").

    Its two-step path (dataset dimensions, mode not stretch) reads None as BGR. Its single-step path
    swaps channels whenever None differs from the network's colour order, i.e. always: None means
    "the opposite of the network's order"; grayscale, when on, is converted as BGR for uint8 input and
    as RGB for float tensors (the swap after it changes nothing). A list mixing float tensors with
    other inputs where the two readings differ raises _MixedNoneReadings (upstream then runs it).
    """
    mode = getattr(network_input.resize_mode, "value", network_input.resize_mode)
    gray = image_pre_processing.grayscale
    grayscale = bool(gray and gray.enabled and not (overrides is not None and overrides.disable_grayscale))
    network = str(getattr(network_input.color_mode, "value", network_input.color_mode))
    opposite = "rgb" if network == "bgr" else "bgr"
    readings = set()
    for item in _items(images):
        if isinstance(item, torch.Tensor) and item.is_floating_point():
            readings.add("rgb" if grayscale else opposite)
        elif network_input.dataset_version_resize_dimensions is not None and mode != "stretch":
            readings.add("bgr")
        else:
            readings.add("bgr" if grayscale else opposite)
    if len(readings) > 1:
        raise _MixedNoneReadings
    return readings.pop() if readings else "bgr"


def _upstream_metadata(meta: PreprocessMetadata) -> Any:
    from inference_models.entities import ImageDimensions
    from inference_models.models.common.roboflow.model_packages import (
        PreProcessingMetadata,
        StaticCropOffset,
    )

    def dims(size: Any) -> Any:
        return None if size is None else ImageDimensions(height=size.height, width=size.width)

    crop = meta.static_crop_offset
    return PreProcessingMetadata(
        pad_left=meta.pad_left,
        pad_top=meta.pad_top,
        pad_right=meta.pad_right,
        pad_bottom=meta.pad_bottom,
        original_size=dims(meta.original_size),
        size_after_pre_processing=dims(meta.size_after_pre_processing),
        inference_size=dims(meta.inference_size),
        scale_width=meta.scale_width,
        scale_height=meta.scale_height,
        static_crop_offset=StaticCropOffset(
            offset_x=crop.offset_x, offset_y=crop.offset_y, crop_width=crop.crop_width, crop_height=crop.crop_height
        ),
        nonsquare_intermediate_size=dims(meta.nonsquare_intermediate_size),
    )


# --- install / uninstall ----------------------------------------------------------------------------


def installed() -> bool:
    """Whether inference-models' RF-DETR preprocessing currently runs through rfpipe.

    >>> installed()
    False
    """
    return bool(_state.get("rebound"))


def install(*, implementation: str = "auto", allow_untested_version: bool = False) -> bool:
    """Make inference-models' RF-DETR models preprocess through rfpipe; True once installed.

    Returns False (and logs why) when the self-check finds rfpipe's probes differ from upstream's base;
    then nothing is swapped. Installing again is harmless (it may change the implementation).

    >>> install(implementation="cpu")  # model  # doctest: +SKIP
    True
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r} (expected one of {', '.join(map(repr, IMPLEMENTATIONS))})")
    with _lock:
        _check_version(allow_untested_version)
        import importlib

        pre_processing = importlib.import_module(_PRE_PROCESSING)
        catalog = importlib.import_module(_CATALOG)
        for name in _BINDING_MODULES:
            importlib.import_module(name)
        original = _state.get("function") or getattr(pre_processing, _FUNCTION)
        builder = _state.get("builder") or getattr(catalog, _REGISTRY_BUILDER)
        problem = _self_check(original, implementation)
        if problem is not None:
            logger.warning("rfpipe.integrations.inference_models: not installed, %s", problem)
            return False
        if _state.get("rebound"):
            _state["implementation"] = implementation
            return True
        wrapped_builder = _auto_means_base(builder)
        _state.update(function=original, builder=builder, wrapped_builder=wrapped_builder, implementation=implementation)
        _state["rebound"] = _rebind(original, pre_process_network_input) + _rebind(builder, wrapped_builder)
        logger.info("rfpipe.integrations.inference_models: installed (implementation=%s)", implementation)
        return True


def uninstall() -> None:
    """Restore inference-models' own functions (the very objects install() replaced); harmless when not installed.

    >>> uninstall()
    """
    with _lock:
        if not _state.get("rebound"):
            _state.clear()
            return
        for module, name, original in _state["rebound"]:
            setattr(module, name, original)
        # Modules imported while installed copied the replacements: give them the originals too.
        _rebind(pre_process_network_input, _state["function"])
        _rebind(_state["wrapped_builder"], _state["builder"])
        _state.clear()


def _check_version(allow_untested_version: bool) -> None:
    import inference_models

    version = str(getattr(inference_models, "__version__", "unknown"))
    try:
        series = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        series = ()
    if series in VERIFIED_VERSIONS or allow_untested_version:
        return
    verified = ", ".join(".".join(map(str, s)) + ".x" for s in VERIFIED_VERSIONS)
    raise ValueError(
        f"rfpipe.integrations.inference_models was verified with inference-models {verified}, "
        f"but {version} is installed; pass allow_untested_version=True to install anyway "
        "(the self-check still compares its base preprocessor with rfpipe first)"
    )


def _rebind(old: object, new: object) -> list[tuple[Any, str, object]]:
    """Point every loaded inference_models module attribute that *is* `old` at `new`."""
    changed = []
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "inference_models" or module_name.startswith("inference_models.")):
            continue
        for name in (_FUNCTION, _REGISTRY_BUILDER):
            if getattr(module, name, None) is old:
                setattr(module, name, new)
                changed.append((module, name, old))
    return changed


def _auto_means_base(builder: Callable[..., Any]) -> Callable[..., Any]:
    from inference_models.models.optimization.contracts import OptimizationStage

    def build_rfdetr_implementation_registry(*args: Any, **kwargs: Any) -> Any:
        registry = builder(*args, **kwargs)
        # `auto` falls through to `base`, which rfpipe now computes (exactly, and faster than the others).
        registry.set_auto_preferences(stage=OptimizationStage.PREPROCESS, implementation_ids=())
        return registry

    build_rfdetr_implementation_registry.__wrapped__ = builder  # type: ignore[attr-defined]
    return build_rfdetr_implementation_registry


def _probe_calls() -> list[tuple[dict, Any, str | None, Any]]:
    """(inference_config, images, input_color_format, overrides) probes covering each path rfpipe replaces."""
    rng = np.random.default_rng(2477)
    wide = rng.integers(0, 256, (61, 97, 3), dtype=np.uint8)
    tall = rng.integers(0, 256, (133, 50, 3), dtype=np.uint8)
    imagenet = [list(row) for row in IMAGENET_NORMALIZATION]

    def net(mode: str, dataset: tuple[int, int] | None = None, color: str = "rgb", **extra: Any) -> dict:
        out = {"training_input_size": {"height": 48, "width": 64}, "resize_mode": mode, "color_mode": color,
               "input_channels": 3, "dynamic_spatial_size_supported": False, "normalization": imagenet, **extra}
        if dataset is not None:
            out["dataset_version_resize_dimensions"] = {"width": dataset[0], "height": dataset[1]}
        return out

    crop_gray = {"static-crop": {"enabled": True, "x_min": 10, "x_max": 90, "y_min": 5, "y_max": 80},
                 "grayscale": {"enabled": True}, "contrast": {"enabled": True, "type": "Histogram Equalization"}}
    return [
        ({"network_input": net("stretch")}, [wide, tall], "bgr", None),
        ({"network_input": net("stretch", color="bgr")}, wide, None, None),
        ({"network_input": net("letterbox", (80, 60), padding_value=114)}, [wide, tall], "rgb", None),
        ({"network_input": net("center-crop", (70, 40))}, [wide, tall], None, None),
        ({"network_input": net("letterbox", (72, 72)), "image_pre_processing": crop_gray}, tall, "bgr", None),
        ({"network_input": net("stretch"), "image_pre_processing": crop_gray}, wide, "rgb", "no-crop"),
    ]


def _self_check(original: Callable[..., Any], implementation: str) -> str | None:
    """None when rfpipe equals upstream's base on every probe, else the reason it does not."""
    from inference_models import PreProcessingOverrides
    from inference_models.models.common.roboflow.model_packages import InferenceConfig

    devices = [torch.device("cpu")]
    if implementation in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda", torch.cuda.current_device()))
    if implementation == "cuda" and len(devices) == 1:
        return "implementation 'cuda' needs a CUDA GPU, and none is available"
    try:
        for number, (raw, images, color, overrides) in enumerate(_probe_calls()):
            config = InferenceConfig.model_validate(raw)
            upstream_overrides = PreProcessingOverrides(disable_static_crop=True) if overrides else None
            for device in devices:
                if device.type == "cpu" and implementation == "cuda":
                    continue
                args = (images, config.image_pre_processing, config.network_input, device)
                kwargs = dict(input_color_format=color, pre_processing_overrides=upstream_overrides)
                theirs, theirs_meta = original(*args, **kwargs)
                ours, ours_meta = _run_rfpipe(*args, color, None, upstream_overrides, implementation)
                where = f"probe {number} ({config.network_input.resize_mode.value}, {device})"
                if ours.shape != theirs.shape or not torch.equal(ours, theirs.to(ours.device)):
                    return f"{where}: the pre-processed tensor differs from inference-models' base"
                if list(ours_meta) != list(theirs_meta):
                    return f"{where}: the metadata differs from inference-models' base"
    except Exception as error:  # a probe that fails on either side means the two are not interchangeable
        return f"the self-check failed: {type(error).__name__}: {error}"
    return None
