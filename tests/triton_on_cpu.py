"""Test hook: the GPU path's launch sequence on CPU tensors under `TRITON_INTERPRET=1` (no GPU).

Uses the production host preparation (`rfpipe.preprocess.cuda.host`), `BatchPlan` and `launch`;
only the CUDA runtime (stream, pinned ring, events) is left out. CPU uint8 tensors stand in for
device tensors (read in place through their strides); numpy frames go through the same rectangle
staging as on the GPU. Lives in tests/: the library never needs it.
"""

from __future__ import annotations

import numpy as np
import torch

from rfpipe.config import ModelConfig
from rfpipe.geometry import ImagePlan
from rfpipe.preprocess.cuda import host
from rfpipe.preprocess.inputs import Frame
from rfpipe.preprocess.kernels.float_tables import normalization_table


def run_on_cpu(frames: list[Frame], plans: list[ImagePlan], config: ModelConfig, device: torch.device,
               color_format: str, *, pillow: tuple[int, int] | None = None) -> torch.Tensor:
    """An implementation's `run` for uint8 frames on the CPU; `pillow` (major, minor) forces a
    Pillow pass-order rule (default: the installed Pillow's)."""
    from rfpipe.preprocess.kernels.triton_batch import BatchPlan, launch, launchers

    assert device.type == "cpu", device
    assert not any(f.is_float_tensor for f in frames), "preprocess() hands float tensors to their own kernel"
    shape = host.output_shape(plans)
    out = torch.empty(shape, dtype=torch.float32)
    jobs = host.jobs(frames, plans, color_format)
    sources, pixels = host.sources(jobs, torch.device("cpu"), in_place=lambda t: True, direct=False)
    plan = BatchPlan(sources, shape, pillow)
    buffer = torch.zeros(plan.buffer_bytes, dtype=torch.uint8)
    flat = buffer.numpy()
    flat[: plan.param_bytes] = plan.parameters(pixels, buffer.data_ptr())
    for index, offset in plan.uploads:
        source = host.upload_source(plan, index, pixels)
        np.copyto(flat[offset : offset + source.nbytes].reshape(source.shape), source)
    launch(plan, launchers(), buffer, plan.views(buffer), normalization_table(config).contiguous(), out)
    return out
