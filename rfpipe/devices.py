"""The one rule for device names: validate a device and resolve a bare ``"cuda"`` to the current GPU.

Every part of rfpipe that takes a device (preprocessing, backends, decoding, the server) goes
through `resolve_device`, so the same wrong name gets the same `ValueError` everywhere.

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device("gpu")
Traceback (most recent call last):
    ...
ValueError: unknown device 'gpu': expected 'cpu', 'cuda' or 'cuda:N'
"""

from __future__ import annotations

from typing import Any

import torch


def resolve_device(value: Any) -> torch.device:
    """A validated `torch.device`: ``cpu``, or ``cuda:N`` of a GPU this machine has.

    A bare ``"cuda"`` becomes the current GPU (tensors report ``cuda:N``, and per-device caches
    and stream lookups key on the index). A name torch does not know, a device type rfpipe does
    not run on, CUDA on a machine without it, or an index past the GPUs present is a `ValueError`
    that names the device and what exists.

    >>> resolve_device(torch.device("cpu")).type
    'cpu'
    """
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {value!r}: expected 'cpu', 'cuda' or 'cuda:N'") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {value!r}: rfpipe runs on 'cpu' or 'cuda' ('cuda:N')")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"device {value!r}: CUDA is not available on this machine (use 'cpu')")
    count = torch.cuda.device_count()
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.index >= count:
        raise ValueError(f"device {value!r}: no such GPU (this machine has {count}: cuda:0..cuda:{count - 1})")
    return device


def default_device() -> str:
    """``"cuda"`` when a GPU is present, else ``"cpu"``: the default of every command that loads a model.

    >>> default_device() in ("cpu", "cuda")
    True
    """
    return "cuda" if torch.cuda.is_available() else "cpu"
