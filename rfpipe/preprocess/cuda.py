"""Exact GPU preprocessing: Triton kernels bit-identical to the reference, staged and streamed.

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

Staging. Host frames (numpy, CPU tensors) are copied, only the rectangle the kernels read, into
a pinned ring buffer, in row chunks by a small thread pool; each chunk's host-to-device copy is
issued on the runtime's stream as soon as its fill is done, so filling overlaps the DMA. Numpy
arrays that already live in pinned memory (`pinned_frame`) are copied to the device directly.
CUDA uint8 tensors on the target device are read in place through their strides (views,
permutations and expansions included), with no copy.

Streams and events. All work of a call (parameter upload, frame uploads, kernels) is enqueued
on one stream per device, owned by this module, under a per-device lock (callers from several
threads are serialised on the host while they enqueue; their GPU work is ordered on the stream).
The stream first waits for the caller's current stream when CUDA tensors are read; at the end a
ready event is recorded and the caller's current stream waits on it, and the output and input
tensors are `record_stream`-ed for the streams that use them. `run` never synchronises the host,
except: (1) when the pinned ring wraps onto a region whose copy is still in flight (the event of
that copy is waited for; rare with the default 64 MiB ring), and (2) contrast on CUDA input,
which downloads the crop for the CPU step.

Buffers. One device buffer per device holds the parameters, uploaded frames and intermediates of
a call; it is reused by the next call (stream order makes that safe) and grows to fit, up to
`MAX_KEPT_DEVICE_BYTES`; larger calls use a one-off buffer. The pinned ring has a fixed capacity
(`RING_BYTES`); bigger batches stream through it. The output is a fresh tensor per call, so
outputs never alias. Tables and per-resample parameter rows are cached per shape.

Exactness. Every pixel operation is integer arithmetic identical to Pillow's / OpenCV's
(fixed-point tables built on the host as those libraries build them, same rounding at the same
places), and the only float step is a table lookup whose entries were computed on the CPU by
the reference's own float32 operations. The start-up self-check compares the compiled kernels
with the installed Pillow and OpenCV on probe shapes (a Pillow-13 pass-order shape, OpenCV's 2x
area case, grayscale); `available` is False (one log line) when Triton cannot compile or a probe
differs, and an explicit `implementation="cuda"` then raises instead of returning other bytes.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rfpipe.config import ModelConfig
from rfpipe.geometry import ImagePlan
from rfpipe.preprocess import adjust
from rfpipe.preprocess.float_tensor import preprocess_float_tensor
from rfpipe.preprocess.inputs import Frame
from rfpipe.preprocess.kernels.float_tables import normalization_table
from rfpipe.preprocess.kernels.pillow_tables import pillow_major_version

logger = logging.getLogger("rfpipe")

RING_BYTES = int(os.environ.get("RFPIPE_PINNED_RING_MB", "64")) << 20
MAX_KEPT_DEVICE_BYTES = 512 << 20
STAGE_THREADS = int(os.environ.get("RFPIPE_STAGE_THREADS", str(min(8, os.cpu_count() or 1))))
CHUNK_BYTES = 1 << 20  # fills below this size run inline; larger ones are split about this fine
ALIGN = 64

__all__ = ["available", "pinned_frame", "run", "run_on_cpu"]


def pinned_frame(height: int, width: int, channels: int = 3) -> np.ndarray:
    """A uint8 HWC numpy array in pinned host memory: decode into it, and `run` uploads it directly.

    Keep writing into a given array only after the batch made from it is ready (`preprocess`
    synchronises by default); drop it to give the memory back to torch's pinned-memory cache.

    >>> frame = pinned_frame(1080, 1920); frame[:] = decoded  # doctest: +SKIP
    >>> rfpipe.preprocess(frame, config, device="cuda")  # doctest: +SKIP
    """
    tensor = torch.empty((height, width, channels), dtype=torch.uint8, pin_memory=True)
    return tensor.numpy()


# --------------------------------------------------------------------------------------------
# Host-side batch layout, shared by the CUDA runtime and the CPU (interpreter) entry.


@dataclass
class _Job:
    """One uint8 image: its output slot, its resamples and its pixels."""

    slot: int
    work: Any  # triton_params.ImageWork
    pixels: np.ndarray | torch.Tensor


_logged: set[str] = set()
_logged_lock = threading.Lock()


def _log_once(key: str, message: str, *args: Any, level: int = logging.INFO) -> None:
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    logger.log(level, message, *args)


def _adjusted_crop(pixels: np.ndarray | torch.Tensor, plan: ImagePlan, color_format: str) -> np.ndarray:
    """Crop, grayscale and contrast on the CPU with the reference's own functions."""
    _log_once(
        "contrast",
        "rfpipe cuda: contrast (%s) runs on the CPU with the reference's scikit-image code "
        "(no exact GPU version); the adjusted crop is uploaded and the rest runs on the GPU",
        plan.contrast.value,
    )
    x0, y0, x1, y1 = plan.crop_box
    if isinstance(pixels, torch.Tensor):
        crop = pixels[y0:y1, x0:x1].cpu().numpy()
    else:
        crop = pixels[y0:y1, x0:x1]
    if plan.grayscale:
        crop = adjust.grayscale(crop, color_format)
    return np.ascontiguousarray(adjust.contrast(crop, plan.contrast))


def _jobs(frames: list[Frame], plans: list[ImagePlan], color_format: str) -> tuple[list[_Job], list[int]]:
    from rfpipe.preprocess.kernels.triton_params import image_work

    jobs, floats = [], []
    for slot, (frame, plan) in enumerate(zip(frames, plans, strict=False)):
        if frame.is_float_tensor:
            floats.append(slot)
            continue
        pixels = frame.pixels
        adjusted = plan.contrast is not None
        if adjusted:
            pixels = _adjusted_crop(pixels, plan, color_format)
        jobs.append(_Job(slot, image_work(plan, color_format, adjusted), pixels))
    return jobs, floats


def _host_view(pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    return pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels


def _is_pinned(array: np.ndarray) -> bool:
    if not array.flags.c_contiguous:
        return False
    try:
        return torch.from_numpy(array).is_pinned()
    except (RuntimeError, ValueError):
        return False


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN




@dataclass
class _Upload:
    """Host pixels for `offset` of the device buffer: a rectangle to stage, or pinned rows to copy."""

    offset: int
    source: np.ndarray
    direct: bool


class _Layout:
    """One call's device buffer (parameters | uploaded pixels | intermediates) and its launches.

    `in_place(pixels)` says which tensors the kernels read where they are (CUDA tensors on the
    GPU; CPU tensors under the interpreter); `direct` allows pinned arrays to skip staging.
    """

    def __init__(self, jobs: list[_Job], device: torch.device, pillow_major: int, in_place, direct: bool):
        from rfpipe.preprocess.kernels.triton_params import LaunchTables

        self.jobs = jobs
        self.step_jobs = [j for j in jobs if j.work.step is not None]
        self.step = LaunchTables([j.work.step for j in self.step_jobs], pillow_major) if self.step_jobs else None
        self.final = LaunchTables([j.work.final for j in jobs], pillow_major)
        self.pillow = jobs[0].work.final.filter.value == "pillow-bilinear"
        parts = [
            self.step.rows.nbytes if self.step else 0,
            self.final.rows.nbytes,
            self.step.coefficients.nbytes if self.step else 0,
            self.final.coefficients.nbytes,
        ]
        self.param_offsets = []
        size = 0
        for n in parts:
            self.param_offsets.append(size)
            size += _align(n)
        self.param_bytes = size
        self.uploads: list[_Upload] = []
        self.in_place: list[torch.Tensor] = []
        self.sources: list[Any] = []  # per job: a tensor read in place, or (offset, sx, sy, sc) in the buffer
        for job in jobs:
            x0, y0, x1, y1 = job.work.region
            pixels = job.pixels
            if isinstance(pixels, torch.Tensor) and in_place(pixels):
                if pixels.device != device:
                    pixels = pixels.to(device)
                self.in_place.append(pixels)
                self.sources.append(pixels)
                continue
            array = _host_view(pixels)
            if direct and _is_pinned(array):
                rows = array[y0:y1]
                self.uploads.append(_Upload(size, rows, True))
                self.sources.append((size + x0 * 3, 3, array.shape[1] * 3, 1))
                size += _align(rows.nbytes)
            else:
                rect = array[y0:y1, x0:x1]
                self.uploads.append(_Upload(size, rect, False))
                self.sources.append((size, 3, (x1 - x0) * 3, 1))
                size += _align(rect.shape[0] * rect.shape[1] * 3)
        self.intermediates = []
        for job in self.step_jobs:
            w, h = job.work.step.out_size
            self.intermediates.append(size)
            size += _align(w * h * 3)
        self.total = max(size, ALIGN)

    def parameters(self, buffer: torch.Tensor, out: torch.Tensor) -> np.ndarray:
        """The parameter bytes of both launches, for this device buffer and output."""
        from rfpipe.preprocess.kernels.triton_params import Placement

        base = buffer.data_ptr()
        sources = []
        for job, source in zip(self.jobs, self.sources, strict=False):
            if isinstance(source, torch.Tensor):
                x0, y0 = job.work.region[:2]
                sy, sx, sc = source.stride()
                if max(abs(sy) * source.shape[0], abs(sx) * source.shape[1], abs(sc) * 3) >= 2**31:
                    raise ValueError(f"image tensor of shape {tuple(source.shape)} is too large for the GPU kernels")
                sources.append(Placement(source.data_ptr() + y0 * sy + x0 * sx - base, sx, sy, sc))
            else:
                sources.append(Placement(*source))
        _, _, height, width = out.shape
        plane = height * width
        outputs = [Placement(job.slot * 3 * plane, 1, width, plane) for job in self.jobs]
        step_rows = np.zeros(0, np.int64)
        if self.step is not None:
            position = {id(job): i for i, job in enumerate(self.jobs)}
            step_sources, step_outputs = [], []
            for job, offset in zip(self.step_jobs, self.intermediates, strict=False):
                i = position[id(job)]
                w = job.work.step.out_size.width
                step_sources.append(sources[i])
                step_outputs.append(Placement(offset, 3, w * 3, 1))
                sources[i] = step_outputs[-1]  # the final resize reads the intermediate
            step_rows = self.step.finish(step_sources, step_outputs)
        parts = [
            step_rows,
            self.final.finish(sources, outputs),
            self.step.coefficients if self.step else np.zeros(0, np.int32),
            self.final.coefficients,
        ]
        params = np.zeros(self.param_bytes, np.uint8)
        for offset, part in zip(self.param_offsets, parts, strict=False):
            raw = part.view(np.uint8).ravel()
            params[offset : offset + raw.size] = raw
        return params

    def launch(self, buffer: torch.Tensor, norm: torch.Tensor, out: torch.Tensor) -> None:
        """Enqueue the kernels on the current stream (or run them, interpreted, on CPU tensors)."""
        from rfpipe.preprocess.kernels import triton_opencv, triton_params, triton_pillow

        def view(part: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor:
            start = self.param_offsets[part]
            return buffer[start : start + nbytes].view(dtype)

        if self.step is not None:
            bv, bu = triton_params.OPENCV_BLOCK
            meta = view(0, self.step.rows.nbytes, torch.int64)
            coef = view(2, self.step.coefficients.nbytes, torch.int32)
            grid = (self.step.tiles, len(self.step_jobs))
            triton_opencv.opencv_linear_kernel[grid](buffer, coef, meta, norm, buffer, BU=bu, BV=bv, OUT_FLOAT=False)
        meta = view(1, self.final.rows.nbytes, torch.int64)
        coef = view(3, self.final.coefficients.nbytes, torch.int32)
        grid = (self.final.tiles, len(self.jobs))
        if self.pillow:
            bv, bu = triton_params.PILLOW_BLOCK
            triton_pillow.pillow_resample_kernel[grid](buffer, coef, meta, norm, out, BU=bu, BV=bv)
        else:
            bv, bu = triton_params.OPENCV_BLOCK
            triton_opencv.opencv_linear_kernel[grid](buffer, coef, meta, norm, out, BU=bu, BV=bv, OUT_FLOAT=True)


def _float_frames(out: torch.Tensor, frames: list[Frame], plans: list[ImagePlan], slots: list[int],
                  config: ModelConfig, color_format: str) -> None:
    # Float tensors keep the reference's tensor semantics, computed on their own device (DESIGN.md).
    for slot in slots:
        result = preprocess_float_tensor(frames[slot].pixels, plans[slot], config, color_format)
        out[slot].copy_(result.to(out.device))


def _empty_output(plans: list[ImagePlan], device: torch.device) -> torch.Tensor:
    target = plans[0].target
    return torch.empty((len(plans), 3, target.height, target.width), dtype=torch.float32, device=device)


# --------------------------------------------------------------------------------------------
# CPU entry: the same layout and launches on CPU tensors, for Triton's interpreter in tests.


def run_on_cpu(
    frames: list[Frame], plans: list[ImagePlan], config: ModelConfig, color_format: str,
    pillow_major: int | None = None,
) -> torch.Tensor:
    """`run`'s launch sequence on CPU tensors under `TRITON_INTERPRET=1` (tests without a GPU).

    CPU uint8 tensors stand in for device tensors (read in place through their strides); numpy
    frames go through the same rectangle staging as on the GPU. `pillow_major` forces a Pillow
    pass-order rule (default: the installed Pillow's).

    >>> batch = run_on_cpu(frames, plans, config, "bgr")  # doctest: +SKIP
    """
    major = pillow_major_version() if pillow_major is None else pillow_major
    out = _empty_output(plans, torch.device("cpu"))
    jobs, floats = _jobs(frames, plans, color_format)
    if jobs:
        layout = _Layout(jobs, torch.device("cpu"), major, in_place=lambda t: True, direct=False)
        buffer = torch.zeros(layout.total, dtype=torch.uint8)
        host = buffer.numpy()
        for upload in layout.uploads:
            target = host[upload.offset : upload.offset + upload.source.nbytes]
            np.copyto(target.reshape(upload.source.shape), upload.source)
        host[: layout.param_bytes] = layout.parameters(buffer, out)
        layout.launch(buffer, normalization_table(config).contiguous(), out)
    _float_frames(out, frames, plans, floats, config, color_format)
    return out


# --------------------------------------------------------------------------------------------
# CUDA runtime: pinned ring, staging threads, stream, device buffer, self-check.


class _PinnedRing:
    """A fixed pinned host buffer handed out in FIFO order; a region is reused once its copy is done."""

    def __init__(self, capacity: int):
        self.tensor = torch.empty(capacity, dtype=torch.uint8, pin_memory=True)
        self.array = self.tensor.numpy()
        self.capacity = capacity
        self.head = 0
        self.busy: collections.deque[list] = collections.deque()  # [start, end, event or None]

    def reserve(self, nbytes: int, drain) -> int:
        """Start of `nbytes` free bytes; `drain()` issues this call's pending copies when needed."""
        start = self.head if self.head + nbytes <= self.capacity else 0
        end = start + nbytes
        while self.busy and any(s < end and start < e for s, e, _ in self.busy):
            if self.busy[0][2] is None:  # this call's own fills: issue their copies first
                drain()
                continue
            self.busy.popleft()[2].synchronize()  # the ring wrapped onto a copy still in flight
        self.head = end
        entry = [start, end, None]
        self.busy.append(entry)
        return start

    def settle(self, event: torch.cuda.Event) -> None:
        """Mark every region handed out so far and not yet covered as freed by `event`."""
        for entry in reversed(self.busy):
            if entry[2] is not None:
                break
            entry[2] = event
        while self.busy and self.busy[0][2] is not None and self.busy[0][2].query():
            self.busy.popleft()


class _Runtime:
    """Per-device state: stream, lock, pinned ring, staging threads, device buffer, tables."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.lock = threading.Lock()
        self.major = pillow_major_version()
        self.ring: _PinnedRing | None = None
        self.buffer: torch.Tensor | None = None
        self.pool = ThreadPoolExecutor(STAGE_THREADS, "rfpipe-stage") if STAGE_THREADS > 1 else None
        self.norms: dict[ModelConfig, torch.Tensor] = {}
        self.keep: collections.deque = collections.deque()  # (event, objects) the GPU still reads

    def _norm(self, config: ModelConfig) -> torch.Tensor:
        table = self.norms.get(config)
        if table is None:
            table = normalization_table(config).to(self.device, non_blocking=False)
            self.norms[config] = table
        return table

    def _device_buffer(self, nbytes: int) -> torch.Tensor:
        # Reused across calls: every use is on self.stream, so stream order protects it.
        if self.buffer is not None and self.buffer.numel() >= nbytes:
            return self.buffer
        size = 1 << max(20, (nbytes - 1).bit_length())
        if size > MAX_KEPT_DEVICE_BYTES:
            return torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        self.buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
        return self.buffer

    def _upload(self, layout: _Layout, params: np.ndarray, buffer: torch.Tensor) -> None:
        if self.ring is None:
            self.ring = _PinnedRing(RING_BYTES)
        ring = self.ring
        pending: list[tuple[Any, int, int, int]] = []  # (fill future or None, ring offset, buffer offset, bytes)

        def drain() -> None:
            for future, at, to, n in pending:
                if future is not None:
                    future.result()
                buffer[to : to + n].copy_(ring.tensor[at : at + n], non_blocking=True)
            pending.clear()
            event = torch.cuda.Event()
            event.record(self.stream)
            ring.settle(event)

        def stage(source: np.ndarray, to: int, asynchronous: bool) -> None:
            n = source.shape[0] * source.shape[1] * source.shape[2]
            if n > ring.capacity:
                raise ValueError(f"a staging chunk of {n} bytes exceeds the pinned ring ({ring.capacity} bytes)")
            at = ring.reserve(n, drain)
            target = ring.array[at : at + n].reshape(source.shape)
            if asynchronous:
                pending.append((self.pool.submit(np.copyto, target, source), at, to, n))
            else:
                np.copyto(target, source)
                pending.append((None, at, to, n))

        at = ring.reserve(params.size, drain)
        ring.array[at : at + params.size] = params
        pending.append((None, at, 0, params.size))
        staged = [u for u in layout.uploads if not u.direct]
        staged_bytes = sum(u.source.nbytes for u in staged)
        threaded = self.pool is not None and staged_bytes >= 2 * CHUNK_BYTES
        chunk = max(CHUNK_BYTES, staged_bytes // (4 * STAGE_THREADS)) if threaded else ring.capacity
        for upload in layout.uploads:
            if upload.direct:
                rows = torch.from_numpy(upload.source.reshape(-1))
                buffer[upload.offset : upload.offset + rows.numel()].copy_(rows, non_blocking=True)
                continue
            rect = upload.source
            row_bytes = rect.shape[1] * 3
            step = max(1, min(chunk, ring.capacity) // row_bytes)
            for r0 in range(0, rect.shape[0], step):
                stage(rect[r0 : r0 + step], upload.offset + r0 * row_bytes, threaded)
        drain()
        direct = [u.source for u in layout.uploads if u.direct]
        if direct:  # the caller's pinned arrays must outlive their copies
            event = torch.cuda.Event()
            event.record(self.stream)
            self.keep.append((event, direct))

    def run(self, frames: list[Frame], plans: list[ImagePlan], config: ModelConfig, color_format: str) -> torch.Tensor:
        jobs, floats = _jobs(frames, plans, color_format)  # CPU contrast work happens outside the lock
        caller = torch.cuda.current_stream(self.device)
        with self.lock, torch.cuda.stream(self.stream):
            while self.keep and self.keep[0][0].query():
                self.keep.popleft()
            out = _empty_output(plans, self.device)
            if jobs:
                layout = _Layout(jobs, self.device, self.major, in_place=_on_gpu, direct=True)
                if layout.in_place:  # written on the caller's stream, read on ours
                    self.stream.wait_stream(caller)
                    for tensor in layout.in_place:
                        tensor.record_stream(self.stream)
                buffer = self._device_buffer(layout.total)
                params = layout.parameters(buffer, out)
                self._upload(layout, params, buffer)
                layout.launch(buffer, self._norm(config), out)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        caller.wait_event(ready)
        out.record_stream(caller)
        if floats:
            _float_frames(out, frames, plans, floats, config, color_format)
        return out


def _on_gpu(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cuda"


_runtimes: dict[torch.device, _Runtime] = {}
_failures: dict[torch.device, str] = {}
_runtimes_lock = threading.Lock()


def _cuda_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"the cuda implementation needs a CUDA device, got {device}")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _runtime(device: torch.device | str) -> _Runtime:
    try:
        device = _cuda_device(device)
    except Exception as error:  # not a CUDA device, or no GPU at all
        raise RuntimeError(f"rfpipe cuda preprocessing is unavailable on {device}: {error}") from error
    runtime = _runtimes.get(device)
    if runtime is not None:
        return runtime
    with _runtimes_lock:
        if device in _runtimes:
            return _runtimes[device]
        if device not in _failures:
            problem = None
            try:
                runtime = _Runtime(device)
                problem = self_check(runtime)
            except Exception as error:  # Triton missing, cannot compile or launch here
                problem = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            if problem is None:
                _runtimes[device] = runtime
                return runtime
            _failures[device] = problem
            logger.warning(
                "rfpipe cuda: GPU preprocessing disabled on %s (%s); implementation='auto' uses the exact CPU path",
                device, problem,
            )
        raise RuntimeError(f"rfpipe cuda preprocessing is unavailable on {device}: {_failures[device]}")


def available(device: torch.device | str) -> bool:
    """Whether the exact GPU path can run on `device`: Triton compiles and the self-check passes.

    Runs the start-up self-check once per device; on failure logs one line with the reason.

    >>> available(torch.device("cuda"))  # doctest: +SKIP
    True
    """
    try:
        _runtime(device)
    except RuntimeError:
        return False
    return True


def run(frames: list[Frame], plans: list[ImagePlan], config: ModelConfig, device: torch.device,
        color_format: str) -> torch.Tensor:
    """Preprocess on the GPU: float32 contiguous NCHW on `device`, ordered before the caller's stream.

    >>> batch = run(frames, plans, config, torch.device("cuda"), "bgr")  # doctest: +SKIP
    """
    return _runtime(device).run(frames, plans, config, color_format)


# --------------------------------------------------------------------------------------------
# Self-check: the compiled kernels against the installed Pillow and OpenCV.


def _probes() -> list[tuple[str, dict, tuple[int, int], str]]:
    """(name, network_input fields, source (width, height), input colour format) of each probe."""
    return [
        # Pillow 13 runs the vertical pass first here (height shrinks > 2x as much as the width).
        ("pillow-pass-order", {"size": (50, 30)}, (61, 90), "bgr"),
        ("pillow-upscale-gray", {"size": (64, 48), "grayscale": True}, (45, 37), "rgb"),
        ("opencv-area-2x", {"size": (40, 40), "mode": "letterbox", "dataset": (64, 48)}, (128, 96), "bgr"),
        ("opencv-linear-letterbox", {"size": (48, 48), "mode": "letterbox", "dataset": (80, 80), "padding": 114},
         (53, 41), "bgr"),
        ("opencv-final", {"size": (33, 47), "filter": "cv2-linear"}, (70, 50), "rgb"),
    ]


def _probe_config(fields: dict) -> ModelConfig:
    width, height = fields["size"]
    net: dict[str, Any] = {
        "training_input_size": {"width": width, "height": height},
        "dynamic_spatial_size_supported": False, "color_mode": "rgb",
        "resize_mode": fields.get("mode", "stretch"), "input_channels": 3,
        "normalization": [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]],
        "resize_filter": fields.get("filter", "pillow-bilinear"),
    }
    if "dataset" in fields:
        net["dataset_version_resize_dimensions"] = {"width": fields["dataset"][0], "height": fields["dataset"][1]}
    if "padding" in fields:
        net["padding_value"] = fields["padding"]
    pre = {"grayscale": {"enabled": True}} if fields.get("grayscale") else {}
    return ModelConfig.from_dict({"image_pre_processing": pre, "network_input": net}, source="<self-check>")


def _probe_expected(image: np.ndarray, plan: ImagePlan, color_format: str) -> np.ndarray:
    """uint8 HWC network-order result computed with the installed cv2 / Pillow themselves."""
    import cv2
    from PIL import Image

    if plan.grayscale:
        code = cv2.COLOR_BGR2GRAY if color_format == "bgr" else cv2.COLOR_RGB2GRAY
        image = np.repeat(cv2.cvtColor(image, code)[:, :, None], 3, axis=2)
    if plan.canvas is not None:
        canvas = plan.canvas
        placed = cv2.resize(image, tuple(canvas.placed), interpolation=cv2.INTER_LINEAR)
        full = np.full((canvas.size.height, canvas.size.width, 3), canvas.fill, np.uint8)
        left, top = canvas.offset
        full[top : top + placed.shape[0], left : left + placed.shape[1]] = placed
        image = full
    size = tuple(plan.target)
    if plan.resize_filter.value == "cv2-linear":
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    else:
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return image[:, :, ::-1] if plan.swap_channels else image


def self_check(runtime: _Runtime) -> str | None:
    """Run the probes through `runtime`; None when every output is bit-identical, else the reason."""
    from rfpipe.geometry import plan_image

    rng = np.random.default_rng(1234)
    for name, fields, (width, height), color_format in _probes():
        config = _probe_config(fields)
        yy, xx = np.mgrid[0:height, 0:width]
        image = np.stack([xx * 255 // width, yy * 255 // height, (xx * yy) % 256], axis=2)
        image = np.clip(image + rng.integers(-30, 31, image.shape), 0, 255).astype(np.uint8)
        plan = plan_image(config, (width, height), config.training_size, None, color_format)
        got = runtime.run([Frame(image)], [plan], config, color_format)
        torch.cuda.current_stream(runtime.device).synchronize()
        expected = _probe_expected(image, plan, color_format)
        table = normalization_table(config)
        want = torch.stack([table[c][torch.from_numpy(expected[:, :, c].astype(np.int64))] for c in range(3)])
        if not torch.equal(got[0].cpu(), want):
            differing = int((got[0].cpu() != want).sum())
            return f"self-check probe {name!r} differs from the installed Pillow/OpenCV in {differing} values"
    return None
