"""Forward-only backends: a float32 NCHW batch on the device in, (logits, boxes) on the device out.

Each module holds one runtime (`torch`, `onnx`, `tensorrt`) and a `load_*` function returning a
callable with `name`, `device` and `__call__(batch) -> (logits [B, Q, C], boxes [B, Q, 4])`, both
float32. Backends know nothing about preprocessing or post-processing. `run_in_chunks` is the one
place where a batch larger than a runtime's limit is split (and a short piece padded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

# Aliased: importing the submodule rfpipe.backends.torch rebinds the name `torch` in this package.
import torch as _torch

# backend name -> module; imported lazily so a missing optional runtime only matters when chosen.
BACKENDS = {
    "torch": "rfpipe.backends.torch",
    "onnx": "rfpipe.backends.onnx",
    "tensorrt": "rfpipe.backends.tensorrt",
}
# Options every backend accepts at these values (Detector.load passes them to whichever loads):
# they ask for nothing a backend without compilation or reduced precision would have to do.
NEUTRAL_OPTIONS: dict[str, tuple[Any, ...]] = {"compile": (None, "none", "auto"), "dtype": (None, "float32"),
                                                "max_batch": (), "buckets": ()}

Outputs = tuple[_torch.Tensor, _torch.Tensor]


class Backend(Protocol):
    name: str
    device: _torch.device

    def __call__(self, batch: _torch.Tensor) -> tuple[_torch.Tensor, _torch.Tensor]: ...


class BackendUnavailable(RuntimeError):
    """The runtime a backend needs is not installed or cannot run on the requested device."""


def check_options(backend: str, options: dict[str, Any], accepted: Iterable[str]) -> dict[str, Any]:
    """`options` without the neutral ones this backend ignores; a `ValueError` names any it cannot honour.

    >>> check_options("onnx", {"threads": 2, "compile": "auto", "dtype": None}, ("threads",))
    {'threads': 2}
    >>> check_options("onnx", {"dtype": "float16"}, ("threads",))
    Traceback (most recent call last):
    ...
    ValueError: the onnx backend has no option dtype='float16' (its options: threads; dtype and compile need the torch backend)
    """
    accepted = tuple(accepted)
    kept = {}
    for name, value in options.items():
        if name in accepted:
            kept[name] = value
        elif name in NEUTRAL_OPTIONS and (not NEUTRAL_OPTIONS[name] or value in NEUTRAL_OPTIONS[name]):
            continue
        else:
            listed = ", ".join(accepted) or "none"
            raise ValueError(f"the {backend} backend has no option {name}={value!r} (its options: {listed}; "
                             "dtype and compile need the torch backend)")
    return kept


def run_in_chunks(run: Callable[[_torch.Tensor], Outputs], batch: _torch.Tensor, limit: int | None,
                  pad_to: Callable[[int], int] | None = None) -> Outputs:
    """`run` over pieces of at most `limit` rows, outputs concatenated; with `pad_to`, a piece of n rows
    is padded with zero rows up to `pad_to(n)` rows and the padding's outputs are dropped.

    >>> run = lambda b: (b.sum((1, 2, 3))[:, None, None], b[:, :1, :1, :4].flatten(1)[:, None, :])
    >>> logits, boxes = run_in_chunks(run, _torch.ones(5, 1, 2, 4), 2, pad_to=lambda n: 2)
    >>> logits.flatten().tolist(), boxes.shape
    ([8.0, 8.0, 8.0, 8.0, 8.0], torch.Size([5, 1, 4]))
    """
    rows = batch.shape[0]
    limit = limit or rows
    parts = []
    for start in range(0, max(rows, 1), limit):
        piece = batch[start : start + limit]
        size = piece.shape[0]
        target = pad_to(size) if pad_to is not None else size
        if target > size:
            piece = _torch.cat([piece, piece.new_zeros((target - size, *piece.shape[1:]))])
        logits, boxes = run(piece)
        parts.append((logits[:size], boxes[:size]) if target > size else (logits, boxes))
    if len(parts) == 1:
        return parts[0]
    return _torch.cat([p[0] for p in parts]), _torch.cat([p[1] for p in parts])
