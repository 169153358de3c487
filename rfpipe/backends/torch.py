"""PyTorch backend: the `rfdetr` package's RF-DETR module, in eval/export mode, on the caller's stream.

Built from a package's `weights.pth` + `model_type.json` or from a training checkpoint (`model`
state dict + `args`). Runs in float32 (TF32 off or on), float16 or bfloat16 (outputs always
float32), eager or compiled per batch bucket (`rfpipe.backends.compiled`; a manual
`torch.cuda.graph` capture fails on rfdetr 1.11.2's forward, which copies a CPU tensor to the GPU,
but torch.compile's CUDA graphs capture it). Work is queued on the current CUDA stream, so a batch
that preprocessing left on that stream needs no host synchronisation before it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rfpipe.backends import BackendUnavailable, check_options
from rfpipe.backends.compiled import (
    COMPILE_MODES,
    CompiledForward,
    bucket_sizes,
    cache_facts,
    cache_key,
    cache_root,
    compile_unavailable,
    log_once,
    weights_digest,
)
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
DTYPES = {"float32": torch.float32, "tf32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The options TorchBackend takes (Detector.load passes these through; others are refused by name).
OPTIONS = ("dtype", "compile", "max_batch", "buckets", "cache_dir", "progress")


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


def set_tf32(allowed: bool) -> None:
    """TF32 for float32 matmuls and convolutions, process-wide, touching only a switch that differs:
    writing the matmul switch at all changes torch's float32 precision setting, which compiled code
    (inductor's cache, dynamo's guards) keys on, so an unneeded write recompiles models loaded before.

    >>> set_tf32(False); torch.backends.cudnn.allow_tf32
    False
    """
    for switches in (torch.backends.cuda.matmul, torch.backends.cudnn):
        try:
            current = bool(switches.allow_tf32)
        except RuntimeError:  # torch refuses to read it once both of its TF32 APIs were used: write it
            current = not allowed
        if current != allowed:
            switches.allow_tf32 = allowed


class TorchBackend:
    """Calls an RF-DETR module in export mode: batch -> (logits, boxes), float32, on `device`.

    `dtype`: "float32" (TF32 off for matmuls and convolutions), "tf32" (float32 storage, TF32 math on
    Ampere and later), "bfloat16" or "float16"; the TF32 switches are process-wide (torch.backends),
    so the last model loaded sets them. `compile`: "none" (eager), "cudagraphs" (torch.compile with
    CUDA graphs per batch bucket up to `max_batch`, see `rfpipe.backends.compiled`) or "auto" (compiled
    where CUDA, Triton and torch.compile work, else eager, logged once). `input_size` (width, height)
    is the size compiled for; `buckets` replaces the powers of two up to `max_batch` (compile only
    the batch sizes you need: each costs 30-50 s cold on an H200); `cache_dir` overrides the compile
    cache directory; `compiler` is torch.compile's backend.

    >>> backend = TorchBackend(module, "cuda", dtype="bfloat16", compile="auto", max_batch=8,
    ...                        input_size=(384, 384))  # model  # doctest: +SKIP
    """

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: str | torch.device = "cpu", dtype: str = "float32", *,
                 compile: str = "none", max_batch: int | None = None, input_size: tuple[int, int] | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True, compiler: Any = "inductor",
                 buckets: Sequence[int] | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if buckets is not None and (not buckets or not all(isinstance(b, int) and b >= 1 for b in buckets)):
            raise ValueError(f"buckets must be positive batch sizes, got {buckets!r}")
        self.device = resolve_device(device)
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        if self.device.type == "cuda" and self.dtype == torch.float32:
            set_tf32(dtype == "tf32")
        module = module.eval()
        if hasattr(module, "export"):
            module.export()  # single-group forward returning (boxes, logits) without auxiliary outputs
        self.module = module.to(self.device, self.dtype)
        self.compile_mode = "none"
        self.compiled: CompiledForward | None = None
        if compile != "none":
            why = compile_unavailable(self.device) if compiler == "inductor" else None
            if why is None and input_size is None:
                why = "the network's input size is unknown"
            if why is not None:
                if compile == "cudagraphs":
                    raise ValueError(f"compile='cudagraphs': {why}")
                log_once("rfpipe: compile='auto' runs the forward eager: %s", why, level=logging.INFO)
            else:
                sizes = tuple(sorted(set(buckets))) if buckets else bucket_sizes(max_batch or 8)
                self._compile(sizes, tuple(input_size), cache_dir, progress, compiler)

    def _compile(self, buckets: tuple[int, ...], input_size: tuple[int, int], cache_dir, progress: bool,
                 compiler: Any) -> None:
        if cache_dir is None:
            key = cache_key(weights=weights_digest(self.module), dtype=self.dtype_name, input_size=input_size,
                            facts=cache_facts(self.device))
            cache_dir = cache_root() / key
        forward = CompiledForward(self._forward, self.device, buckets=buckets, input_size=input_size,
                                  cache_dir=Path(cache_dir), compiler=compiler, progress=progress,
                                  mode="reduce-overhead" if compiler == "inductor" else None,
                                  name=f"RF-DETR {input_size[0]}x{input_size[1]} {self.dtype_name}")
        if forward.compiled:
            self.compiled = forward
            self.compile_mode = "cudagraphs"
            logger.info("rfpipe: compiled forward ready, buckets %s, warm-up %.1f s (cache %s)",
                        list(buckets), sum(forward.warm_s.values()), cache_dir)
        else:
            forward.close()

    @property
    def buckets(self) -> tuple[int, ...] | None:
        """The batch sizes the compiled forward runs at (None when eager)."""
        return self.compiled.buckets if self.compiled is not None and self.compiled.compiled else None

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, logits = self.module(batch.to(self.dtype))[:2]
        return logits.float(), boxes.float()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.device != self.device:
            raise ValueError(f"batch is on {batch.device}, the torch backend runs on {self.device}")
        if self.compiled is not None:
            return self.compiled(batch)
        return self._forward(batch)


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
    options = check_options("torch", options, OPTIONS)
    checkpoint = torch.load(weights_path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"{weights_path}: expected a dict with a 'model' state dict")
    module = build_from_state_dict(checkpoint["model"], model_type, resolution)
    return TorchBackend(module, device, input_size=(resolution, resolution), **options)


def read_checkpoint(path: str | Path):
    """rfdetr's model wrapper for a training checkpoint (on the CPU), or a `ValueError` saying why not.

    >>> wrapper = read_checkpoint("checkpoint_best_total.pth")  # model  # doctest: +SKIP
    """
    import_rfdetr()
    from rfdetr.detr import RFDETR

    try:
        with quiet_rfdetr():
            return RFDETR.from_checkpoint(str(path), device="cpu")
    except (ValueError, KeyError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: not a loadable rfdetr checkpoint ({error})") from error


def checkpoint_info(wrapper) -> CheckpointInfo:
    """Resolution, accepted size divisor and class names of an rfdetr model wrapper."""
    config = wrapper.model_config
    names = tuple(getattr(wrapper.model, "class_names", None) or ())
    if not names:
        # No names in the checkpoint: number the classes (rfdetr's own fallback would be COCO's names).
        names = tuple(f"class_{i}" for i in range(config.num_classes))
    return CheckpointInfo(
        model_name=type(wrapper).__name__, resolution=int(config.resolution),
        size_divisor=int(config.patch_size) * int(config.num_windows), class_names=names,
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", **options) -> tuple[TorchBackend, CheckpointInfo]:
    """The backend and facts (resolution, class names) of an rfdetr training checkpoint.

    >>> backend, info = load_checkpoint("checkpoint_best_total.pth")  # model  # doctest: +SKIP
    """
    options = check_options("torch", options, OPTIONS)
    wrapper = read_checkpoint(path)
    info = checkpoint_info(wrapper)
    logger.debug("loaded %s checkpoint %s (rfdetr %s)", info.model_name, path, rfdetr_version())
    size = (info.resolution, info.resolution)
    return TorchBackend(wrapper.model.model, device, input_size=size, **options), info
