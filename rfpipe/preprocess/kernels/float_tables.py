"""uint8 -> float32 network values as a 256-entry table per channel.

The table is computed on the CPU with the reference's own float32 operations (to_tensor's
`div(255)`, then normalize's `sub(mean)` and `div(std)`, or the `255 / scaling_factor` multiply),
one correctly rounded op at a time. Looking values up instead of recomputing them keeps every
device bit-identical: CUDA divides by a scalar through its reciprocal and may fuse multiply-adds.
"""

from __future__ import annotations

import functools

import torch

from rfpipe.config import ModelConfig


def apply_float_ops(values: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The reference's float steps (normalize, or the scaling factor) on a float32 CHW tensor in [0, 1]."""
    if config.normalization is not None:
        mean = torch.as_tensor(config.normalization[0], dtype=torch.float32, device=values.device)
        std = torch.as_tensor(config.normalization[1], dtype=torch.float32, device=values.device)
        mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
        return values.sub(mean).div(std)
    if config.scaling_factor is not None and config.scaling_factor != 255:
        return values * (255.0 / config.scaling_factor)
    return values


@functools.lru_cache(maxsize=32)
def _table(config: ModelConfig) -> torch.Tensor:
    levels = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)
    table = apply_float_ops(levels.view(1, 1, 256).expand(3, 1, 256).contiguous(), config)
    return table.view(3, 256).contiguous()


def normalization_table(config: ModelConfig) -> torch.Tensor:
    """float32 [3, 256] on the CPU: row c maps a uint8 value of network channel c to its input value.

    >>> cfg = ModelConfig.from_dict({"network_input": {"training_input_size": {"width": 64, "height": 64},
    ...     "normalization": [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]}})
    >>> normalization_table(cfg)[0, 255]  # (1 - 0.485) / 0.229
    tensor(2.2489)
    """
    return _table(config)
