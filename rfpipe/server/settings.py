"""Operator settings of one server: batching, limits, timeouts; the CLI fills them from flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rfpipe.engine import BATCH_POLICIES
from rfpipe.io.decode import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ServerSettings:
    """Everything a request can be refused or delayed by, in one place.

    >>> ServerSettings(model_id="cars/3", max_batch=16, max_wait_ms=4.0)  # doctest: +ELLIPSIS
    ServerSettings(model_id='cars/3', ...)
    """

    model_id: str
    max_batch: int = 8  # images per forward pass
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for company
    # "dynamic": batches run at the size that arrived; "fixed": padded to max_batch, so an image's
    # answer does not depend on what else arrived (rfpipe.engine).
    batch_policy: str = "dynamic"
    queue_size: int = 256  # images admitted (decoding or queued) before 503
    request_timeout_s: float = 30.0  # admission to result; then 504
    max_body_bytes: int = 32 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, checked from the header before decoding
    max_images: int = 16  # per request
    allow_url_input: bool = False  # fetch `url` images (public addresses only)
    url_timeout_s: float = 10.0
    body_timeout_s: float = 30.0  # to receive a whole request body (a client dripping it is cut off: 408)
    decode_threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    retry_after_s: int = 1  # Retry-After on 503
    # JPEG decoded by torchvision on a GPU (nvJPEG), not by OpenCV: NOT bit-identical (docs/serving.md).
    gpu_decode: bool = False
    gpu_decode_device: str | None = None  # where gpu_decode decodes; None: the first CUDA device served

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue_size", "max_body_bytes", "max_pixels", "max_images", "decode_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_policy not in BATCH_POLICIES:
            raise ValueError(f"batch_policy must be one of {', '.join(BATCH_POLICIES)}, got {self.batch_policy!r}")
        for name in ("max_wait_ms", "request_timeout_s", "url_timeout_s", "body_timeout_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.gpu_decode_device is not None and not self.gpu_decode:
            raise ValueError("gpu_decode_device is set but gpu_decode is off")


def decode_device(settings: ServerSettings, devices: list[str]) -> str | None:
    """Where JPEG is decoded under `settings.gpu_decode` (None: OpenCV on the CPU), serving on `devices`.

    torchvision keeps one nvJPEG decoder per process, for one device (rfpipe.io.gpu), so all
    decoding happens on the first CUDA device; workers on other devices copy the frames over.
    Raises ValueError when --gpu-decode is asked for and the server does not serve on CUDA.

    >>> decode_device(ServerSettings(model_id="cars/3", gpu_decode=True), ["cuda:1", "cuda:0"])
    'cuda:0'
    """
    if not settings.gpu_decode:
        return None
    if settings.gpu_decode_device is not None:
        return settings.gpu_decode_device
    if not devices or not all(d.startswith("cuda") for d in devices):
        raise ValueError(f"--gpu-decode decodes JPEG on a GPU: it needs the server to run on CUDA devices "
                         f"(--device cuda or cuda:0,cuda:1,...), got --device {','.join(devices)}")
    return sorted(devices)[0]
