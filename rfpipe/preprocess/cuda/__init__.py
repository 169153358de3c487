"""Exact GPU preprocessing: Triton kernels bit-identical to the reference, staged and streamed.

Modules: `runtime` (per-device stream, lock, buffers, launches, events), `staging` (pinned frames,
the pinned ring, one call's copies), `host` (CPU contrast, batch signature, upload sources),
`selfcheck` (the start-up probes). The kernels and their tables live in `preprocess/kernels/`.

Design note
-----------
Data flow. Geometry comes from the `ImagePlan`s; `kernels/triton_params.py` turns each plan into
at most two resamples: for letterbox, OpenCV INTER_LINEAR (or its exact-2x INTER_AREA path) of
the crop into a uint8 intermediate; then the final resize (Pillow BILINEAR, both passes fused,
or OpenCV INTER_LINEAR for `cv2-linear`) from a *virtual canvas* (the source window at its pad
offset, `padding_value` elsewhere: letterbox and center-crop canvases are never built) straight
to float32 NCHW through the 256-entry per-channel normalisation table, with the static crop as
an offset, grayscale (OpenCV's fixed-point formula) applied while loading and the channel swap
folded into the output plane index. A batch of any mix of sizes is one launch per kernel: a
parameter row per image and each distinct coefficient table once, in one small upload.
Contrast steps run on the CPU with `rfpipe.preprocess.adjust` (the reference's own code; the
scikit-image float pipelines have no exact GPU twin here) and the adjusted crop is uploaded.

Staging (staging.py). Host frames (numpy, CPU tensors) are copied, only the rectangle the kernels read, into
a pinned ring buffer and from there to the device buffer on the runtime's stream. Fills use
torch's CPU copy (all intra-op threads: ~50 GB/s on the H100 host, numpy's one-thread copy ~10
GB/s, which measured slower even for a 640x480 frame). A frame of at least two chunks (a chunk is
4 MiB) goes in chunks, each chunk's DMA issued as soon as it is filled, so the DMA overlaps the
next fill; small neighbouring frames share one DMA. Numpy arrays that already live in pinned
memory (`pinned_frame`, or any pinned buffer's `.numpy()` view) are copied directly. CUDA uint8
tensors on the target device are read in place through their strides (views, permutations and
expansions included), with no copy.

Streams and events (runtime.py). All work of a call (parameter upload, frame uploads, kernels) is enqueued
on one stream per device, owned by this module, under a per-device lock (callers from several
threads are serialised on the host while they enqueue; their GPU work is ordered on the stream).
The stream first waits for the caller's current stream when CUDA tensors are read (and records
them for its use); at the end one ready event is recorded, the caller's current stream waits on
it and the output is `record_stream`-ed for the caller's stream. The same event frees the call's
pinned-ring regions and releases the caller's pinned arrays kept alive until their copy is done.
Kernels are launched through the compiled Triton kernel with the stream passed explicitly
(`kernels/triton_batch.Launcher`). `run` never synchronises the host, except: (1) when the
pinned ring wraps onto a region whose copy is still in flight (its event is waited for; rare with
the default 64 MiB ring), (2) contrast on CUDA input, which downloads the crop for the CPU step.

Buffers. One device buffer per device holds the uploaded frames and intermediates of a call (and
the parameters when they change per call); it is reused by the next call (stream order makes
that safe) and grows to fit, up to `MAX_KEPT_DEVICE_BYTES`; larger calls use a one-off buffer.
The pinned ring has a fixed capacity (`RING_BYTES`); bigger batches stream through it. Batch
plans (tables and parameter bytes, `PLAN_CACHE` signatures per device) are cached, their
parameters kept on the device when they do not change per call. The output is a fresh tensor per
call, so outputs never alias.

Exactness. Every pixel operation is integer arithmetic identical to Pillow's / OpenCV's
(fixed-point tables built on the host as those libraries build them, same rounding at the same
places), and the only float step is a table lookup whose entries were computed on the CPU by
the reference's own float32 operations. The start-up self-check (selfcheck.py) compares the compiled kernels
with the installed Pillow and OpenCV on probe shapes (a Pillow-13 pass-order shape, OpenCV's 2x
area case, grayscale); `available` is False (one log line) when Triton cannot compile or a probe
differs, and an explicit `implementation="cuda"` then raises instead of returning other bytes.
"""

from __future__ import annotations

import torch

from rfpipe.config import ModelConfig
from rfpipe.geometry import ImagePlan
from rfpipe.preprocess.cuda.staging import pinned_frame
from rfpipe.preprocess.inputs import Frame

__all__ = ["available", "pinned_frame", "run"]


def available(device: torch.device | str) -> bool:
    """Whether the exact GPU path can run on `device`: Triton compiles and the self-check passes.

    Runs the start-up self-check once per device; on failure logs one line with the reason.

    >>> available("cpu")  # a CPU is never a CUDA device
    False
    """
    from rfpipe.preprocess.cuda.runtime import runtime

    try:
        runtime(device)
    except RuntimeError:
        return False
    return True


def run(frames: list[Frame], plans: list[ImagePlan], config: ModelConfig, device: torch.device,
        color_format: str) -> torch.Tensor:
    """uint8 frames -> float32 contiguous NCHW on the GPU `device`, ordered before the caller's stream.

    >>> batch = run(frames, plans, config, torch.device("cuda"), "bgr")  # gpu  # doctest: +SKIP
    """
    from rfpipe.preprocess.cuda.runtime import runtime

    return runtime(device).run(frames, plans, config, color_format)
