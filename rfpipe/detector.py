"""`Detector`: load a model package or checkpoint, then pre -> forward -> post, each stage callable alone.

One class for every backend: the backend only runs the network; preprocessing and post-processing
are rfpipe's own, exact against the reference. On CUDA the composed call never synchronises the
host between stages: the batch is queued on the current stream and the backend orders itself
after it; only post-processing's small result copy waits for the GPU.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rfpipe.backends import BACKENDS, Backend, BackendUnavailable, run_in_chunks
from rfpipe.config import (
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    ConfigError,
    ImageSize,
    ModelConfig,
    checkpoint_config_dict,
    load_config,
)
from rfpipe.detections import Detections
from rfpipe.devices import resolve_device
from rfpipe.engine import Engine, ItemError
from rfpipe.engine import stream as engine_stream
from rfpipe.geometry import Overrides, PreprocessMetadata
from rfpipe.postprocess import DEFAULT_CONFIDENCE, Confidence, class_layout, postprocess
from rfpipe.preprocess import preprocess

__all__ = ["Detections", "Detector", "checkpoint_config", "checkpoint_config_dict"]

logger = logging.getLogger("rfpipe")

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")

# backend name -> package files it needs
BACKEND_FILES = {
    "onnx": ("weights.onnx",),
    "tensorrt": ("engine.plan", "trt_config.json"),
    "torch": ("weights.pth", "model_type.json"),
}
# backend="auto": first whose files are present and whose runtime loads on the device
AUTO_ORDER = {"cuda": ("tensorrt", "torch", "onnx"), "cpu": ("onnx", "torch")}


def checkpoint_config(resolution: int, size_divisor: int, class_names: Sequence[str], source: str) -> ModelConfig:
    """The `ModelConfig` of `checkpoint_config_dict` with the checkpoint's class names."""
    return ModelConfig.from_dict(checkpoint_config_dict(resolution, size_divisor), class_names=list(class_names),
                                 source=source)


def _read_model_type(path: Path) -> str:
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise ConfigError(f"{path}: unreadable ({error})") from error
    if not isinstance(model_type, str):
        raise ConfigError(f"{path}: expected {{\"model_type\": \"rfdetr-...\"}}")
    return model_type


def _load_backend(name: str, package: Path, config: ModelConfig, device: torch.device, options: dict) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (expected one of {sorted(BACKENDS)} or 'auto')")
    missing = [f for f in BACKEND_FILES[name] if not (package / f).is_file()]
    if missing:
        raise ConfigError(f"{package}: the {name} backend needs {', '.join(missing)}, which the package lacks")
    module = importlib.import_module(BACKENDS[name])
    if name == "onnx":
        return module.OnnxBackend(package / "weights.onnx", device, **options)
    if name == "tensorrt":
        return module.TensorRTBackend(package / "engine.plan", package / "trt_config.json", device, **options)
    model_type = _read_model_type(package / "model_type.json")
    return module.load_package_weights(package / "weights.pth", model_type, config.training_size.height, device, **options)


def _align_to_static_input(config: ModelConfig, backend: Backend) -> ModelConfig:
    """The network's static input size wins over a disagreeing config (as inference-models does)."""
    size = getattr(backend, "input_size", None)
    if size is None:
        return config
    size = ImageSize(*size)
    if size == config.training_size and not config.dynamic_size_supported:
        return config
    if size != config.training_size:
        logger.warning(
            "%s: the model takes %dx%d input but the config declares %dx%d; using the model's size",
            config.source, size.width, size.height, config.training_size.width, config.training_size.height,
        )
    return dataclasses.replace(config, training_size=size, dynamic_size_mode=None, dynamic_size_divisor=None)


class Detector:
    """An RF-DETR detector: `Detector.load(path)(images)` -> one `Detections` per image.

    >>> model = rfpipe.Detector.load("path/to/package", device="cuda")  # model  # doctest: +SKIP
    >>> model(frame_bgr, confidence=0.5)[0].xyxy  # model  # doctest: +SKIP
    """

    def __init__(self, config: ModelConfig, backend: Backend, device: str | torch.device = "cpu"):
        self.config = config
        self.backend = backend
        self.device = resolve_device(device)
        self.backend_name = backend.name
        self.class_names, _ = class_layout(config)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu", backend: str = "auto",
             compile: str | None = None, dtype: str | None = None, max_batch: int | None = None,
             **options: Any) -> Detector:
        """Load a package directory or an rfdetr training checkpoint (`.pth` with `model` and `args`).

        `backend` is 'auto', 'onnx', 'tensorrt' or 'torch'. Torch backend: `dtype` ('float32', 'tf32',
        'bfloat16', 'float16'), `compile` ('none', 'cudagraphs', 'auto': see `rfpipe.backends.compiled`)
        and `max_batch` (the largest compiled batch bucket, default 8). Other `options` go to the backend
        (onnx: threads=N). A backend refuses an option it cannot honour with a `ValueError` naming it;
        compile='auto' and dtype='float32' mean nothing to backends without those choices.

        >>> model = Detector.load("checkpoint_best_total.pth", device="cpu")  # model  # doctest: +SKIP
        >>> model = Detector.load("pkg", device="cuda", backend="torch", compile="auto", dtype="bfloat16",
        ...                       max_batch=32)  # model  # doctest: +SKIP
        """
        for name, value in (("compile", compile), ("dtype", dtype), ("max_batch", max_batch)):
            if value is not None:
                options[name] = value
        path = Path(path)
        device = resolve_device(device)
        if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
            if backend not in ("auto", "torch"):
                raise ValueError(f"{path}: a training checkpoint runs on the torch backend, not {backend!r}; "
                                 "write a package with `rfpipe export` for other backends")
            from rfpipe.backends import torch as torch_backend

            net, info = torch_backend.load_checkpoint(path, device, **options)
            config = checkpoint_config(info.resolution, info.size_divisor, info.class_names, str(path))
            return cls(config, net, device)
        if not path.is_dir():
            raise ConfigError(f"{path}: not found (expected a package directory or a checkpoint .pth file)")
        config = load_config(path)
        if not config.class_names:
            raise ConfigError(f"{path}: the package has no {CLASS_NAMES_FILE} (needed to name the classes)")
        if backend == "auto":
            names = AUTO_ORDER["cuda" if device.type == "cuda" else "cpu"]
            present = [n for n in names if all((path / f).is_file() for f in BACKEND_FILES[n])]
            if not present:
                wanted = " or ".join(" + ".join(BACKEND_FILES[n]) for n in names)
                raise ConfigError(f"{path}: no weights for {device.type} (expected {wanted} beside {CONFIG_FILE})")
            errors = []
            for name in present:
                try:
                    net = _load_backend(name, path, config, device, options)
                    break
                except BackendUnavailable as error:
                    errors.append(f"{name}: {error}")
            else:
                raise BackendUnavailable(f"{path}: no backend could load: " + "; ".join(errors))
        else:
            net = _load_backend(backend, path, config, device, options)
        return cls(_align_to_static_input(config, net), net, device)

    def preprocess(
        self,
        images: Any,
        *,
        input_color_format: str | None = "bgr",
        overrides: Overrides | None = None,
        image_size: int | tuple[int, int] | None = None,
        implementation: str = "auto",
        synchronize: bool = True,
    ) -> tuple[torch.Tensor, list[PreprocessMetadata]]:
        """The network batch on this detector's device and per-image metadata (see `rfpipe.preprocess`)."""
        return preprocess(
            images, self.config, device=self.device, input_color_format=input_color_format, image_size=image_size,
            overrides=overrides, implementation=implementation, synchronize=synchronize,
        )

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, Q, C], boxes [B, Q, 4]) on the device; batches over the package's limit run in chunks."""
        return run_in_chunks(self.backend, batch, self.config.max_dynamic_batch_size)

    def postprocess(
        self, logits: torch.Tensor, boxes: torch.Tensor, metadata: Sequence[PreprocessMetadata], *,
        confidence: Confidence = DEFAULT_CONFIDENCE,
    ) -> list[Detections]:
        """Detections in original-image pixels (see `rfpipe.postprocess`)."""
        return postprocess(logits, boxes, metadata, self.config, confidence=confidence)

    def __call__(
        self,
        images: Any,
        *,
        confidence: Confidence = DEFAULT_CONFIDENCE,
        input_color_format: str | None = "bgr",
        overrides: Overrides | None = None,
        image_size: int | tuple[int, int] | None = None,
        implementation: str = "auto",
    ) -> list[Detections]:
        """Pre -> forward -> post; one `Detections` per image."""
        batch, metadata = self.preprocess(
            images, input_color_format=input_color_format, overrides=overrides, image_size=image_size,
            implementation=implementation, synchronize=False,
        )
        logits, boxes = self.forward(batch)
        return self.postprocess(logits, boxes, metadata, confidence=confidence)

    def stream(
        self,
        items: Iterable[Any],
        *,
        confidence: Confidence | None = None,
        input_color_format: str | None = "bgr",
        overrides: Overrides | None = None,
        max_batch: int = 8,
        max_wait_ms: float = 2.0,
        batch_policy: str = "dynamic",
        errors: str = "yield",
    ) -> Iterator[Detections | ItemError]:
        """Detections for each item of `items` (frames or encoded image bytes), in input order.

        Items are batched internally (`max_batch`, `max_wait_ms`, `batch_policy`: see `rfpipe.engine`).
        A bad item yields an `ItemError` naming its index and problem in its place and the stream goes
        on (`errors="raise"` raises it instead).

        >>> for detections in model.stream(frames, confidence=0.5):  # model  # doctest: +SKIP
        ...     print(len(detections.xyxy))
        """
        engine = Engine(self, max_batch=max_batch, max_wait_ms=max_wait_ms, batch_policy=batch_policy,
                        queue_size=max(256, 4 * max_batch))
        try:
            yield from engine_stream(engine, items, errors=errors, confidence=confidence,
                                     input_color_format=input_color_format, overrides=overrides)
        finally:
            engine.close(drain=False)

    def __repr__(self) -> str:
        size = self.config.training_size
        return (f"Detector(backend={self.backend_name!r}, device={str(self.device)!r}, "
                f"input={size.width}x{size.height}, classes={len(self.class_names)})")
