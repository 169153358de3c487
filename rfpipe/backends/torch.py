"""PyTorch backend: the `rfdetr` package's RF-DETR module, in eval/export mode, on the caller's stream.

Built from a package's `weights.pth` + `model_type.json` or from a training checkpoint (`model`
state dict + `args`). Runs in float32, float16 or bfloat16 (outputs always float32). Work is queued
on the current CUDA stream, so a batch that preprocessing left on that stream needs no host
synchronisation before it. (CUDA graphs cannot capture rfdetr 1.11.2's forward: it copies a CPU
tensor to the GPU inside it, measured on an H100.)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from rfpipe.backends import BackendUnavailable
from rfpipe.devices import resolve_device

logger = logging.getLogger("rfpipe")

# model_type.json value -> rfdetr class name.
MODEL_TYPES = {
    "rfdetr-nano": "RFDETRNano",
    "rfdetr-small": "RFDETRSmall",
    "rfdetr-medium": "RFDETRMedium",
    "rfdetr-large": "RFDETRLarge",
    "rfdetr-base": "RFDETRBase",
}
# rfdetr buffers that packages may lack (inference-models 0.39 refuses them).
OPTIONAL_BUFFERS = ("_kp_active_mask",)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class CheckpointInfo:
    """What a training checkpoint says about the network it holds."""

    model_name: str
    resolution: int
    size_divisor: int  # patch size x windows: the spatial sizes the network accepts
    class_names: tuple[str, ...]


def import_rfdetr():
    """The rfdetr package (imported quietly: it warns about its own use of deprecated torch APIs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import rfdetr
    except ImportError as error:
        raise BackendUnavailable(
            "the torch backend needs the rfdetr package (pip install rfdetr==1.11.2)"
        ) from error
    return rfdetr


def rfdetr_version() -> str:
    return importlib.metadata.version("rfdetr")


@contextlib.contextmanager
def quiet_rfdetr():
    """rfdetr logs and warns at length while building a model; keep that out of rfpipe's output."""
    rf_logger = logging.getLogger("rf-detr")
    level = rf_logger.level
    rf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        rf_logger.setLevel(level)


class TorchBackend:
    """Calls an RF-DETR module in export mode: batch -> (logits, boxes), float32, on `device`."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: str | torch.device = "cpu", dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.device = resolve_device(device)
        self.dtype = DTYPES[dtype]
        module = module.eval()
        if hasattr(module, "export"):
            module.export()  # single-group forward returning (boxes, logits) without auxiliary outputs
        self.module = module.to(self.device, self.dtype)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.device != self.device:
            raise ValueError(f"batch is on {batch.device}, the torch backend runs on {self.device}")
        boxes, logits = self.module(batch.to(self.dtype))[:2]
        return logits.float(), boxes.float()


def _variant(rfdetr, class_name: str):
    import rfdetr.variants

    try:
        return getattr(rfdetr.variants, class_name)
    except AttributeError:
        raise BackendUnavailable(f"rfdetr {rfdetr_version()} has no model class {class_name}") from None


def build_from_state_dict(state_dict: dict, model_type: str, resolution: int) -> torch.nn.Module:
    """An RF-DETR module of `model_type` (e.g. 'rfdetr-nano') holding `state_dict`, for `resolution`.

    The class count and the positional-encoding grid are read from the weights, so packages trained
    at any resolution load.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r} (expected one of {sorted(MODEL_TYPES)})")
    rfdetr = import_rfdetr()
    try:
        num_classes = state_dict["class_embed.bias"].shape[0] - 1
        pos = state_dict["backbone.0.encoder.encoder.embeddings.position_embeddings"].shape[1] - 1
    except KeyError as error:
        raise ValueError(f"weights are not an RF-DETR detector state dict (missing {error})") from None
    with quiet_rfdetr():
        wrapper = _variant(rfdetr, MODEL_TYPES[model_type])(
            pretrain_weights=None, resolution=resolution, num_classes=num_classes,
            positional_encoding_size=math.isqrt(pos), device="cpu",
        )
    module = wrapper.model.model
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    # Packages made for inference-models 0.39 lack rfdetr's (empty, detection-unused) keypoint mask buffer.
    missing = [k for k in missing if k not in OPTIONAL_BUFFERS]
    if missing or unexpected:
        raise ValueError(f"weights do not fit {model_type}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return module


def load_package_weights(weights_path: str | Path, model_type: str, resolution: int,
                         device: str | torch.device = "cpu", **options) -> TorchBackend:
    """The backend for a package's `weights.pth` (a dict with a `model` state dict).

    >>> backend = load_package_weights("pkg/weights.pth", "rfdetr-nano", 384)  # model  # doctest: +SKIP
    """
    checkpoint = torch.load(weights_path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"{weights_path}: expected a dict with a 'model' state dict")
    module = build_from_state_dict(checkpoint["model"], model_type, resolution)
    return TorchBackend(module, device, **options)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", **options) -> tuple[TorchBackend, CheckpointInfo]:
    """The backend and facts (resolution, class names) of an rfdetr training checkpoint.

    >>> backend, info = load_checkpoint("checkpoint_best_total.pth")  # model  # doctest: +SKIP
    """
    import_rfdetr()
    from rfdetr.detr import RFDETR

    try:
        with quiet_rfdetr():
            wrapper = RFDETR.from_checkpoint(str(path), device="cpu")
    except (ValueError, KeyError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: not a loadable rfdetr checkpoint ({error})") from error
    config = wrapper.model_config
    names = tuple(getattr(wrapper.model, "class_names", None) or ())
    if not names:
        # No names in the checkpoint: number the classes (rfdetr's own fallback would be COCO's names).
        names = tuple(f"class_{i}" for i in range(config.num_classes))
    info = CheckpointInfo(
        model_name=type(wrapper).__name__, resolution=int(config.resolution),
        size_divisor=int(config.patch_size) * int(config.num_windows), class_names=names,
    )
    logger.debug("loaded %s checkpoint %s (rfdetr %s)", info.model_name, path, rfdetr_version())
    return TorchBackend(wrapper.model.model, device, **options), info
