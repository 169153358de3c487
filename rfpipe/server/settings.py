"""Operator settings of one server: batching, limits, timeouts; the CLI fills them from flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rfpipe.decode import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ServerSettings:
    """Everything a request can be refused or delayed by, in one place.

    >>> ServerSettings(model_id="cars/3", max_batch=16, max_wait_ms=4.0)  # doctest: +ELLIPSIS
    ServerSettings(model_id='cars/3', ...)
    """

    model_id: str
    max_batch: int = 8  # images per forward pass
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for company
    queue_size: int = 256  # images admitted (decoding or queued) before 503
    request_timeout_s: float = 30.0  # admission to result; then 504
    max_body_bytes: int = 32 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, checked from the header before decoding
    max_images: int = 16  # per request
    allow_url_input: bool = False  # fetch `url` images (public addresses only)
    url_timeout_s: float = 10.0
    decode_threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    retry_after_s: int = 1  # Retry-After on 503

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue_size", "max_body_bytes", "max_pixels", "max_images", "decode_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "request_timeout_s", "url_timeout_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
