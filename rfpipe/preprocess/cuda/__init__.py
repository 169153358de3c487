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
a pinned ring buffer and from there to the device buffer on the runtime's stream. Fills use
torch's CPU copy (all intra-op threads: ~50 GB/s on the H100 host, numpy's one-thread copy ~10
GB/s, which measured slower even for a 640x480 frame). A frame of at least two chunks (a chunk is
4 MiB) goes in chunks, each chunk's DMA issued as soon as it is filled, so the DMA overlaps the
next fill; small neighbouring frames share one DMA. Numpy arrays that already live in pinned
memory (`pinned_frame`, or any pinned buffer's `.numpy()` view) are copied directly. CUDA uint8
tensors on the target device are read in place through their strides (views, permutations and
expansions included), with no copy.

Streams and events. All work of a call (parameter upload, frame uploads, kernels) is enqueued
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
import warnings
from typing import Any

import numpy as np
import torch

from rfpipe.config import IMAGENET_NORMALIZATION, ModelConfig
from rfpipe.devices import resolve_device
from rfpipe.geometry import ImagePlan
from rfpipe.preprocess import adjust
from rfpipe.preprocess.float_tensor import preprocess_float_tensor
from rfpipe.preprocess.inputs import Frame
from rfpipe.preprocess.kernels.float_tables import normalization_table

logger = logging.getLogger("rfpipe")

RING_BYTES = int(os.environ.get("RFPIPE_PINNED_RING_MB", "64")) << 20
MAX_KEPT_DEVICE_BYTES = 512 << 20  # a device buffer this large is not kept between calls
PLAN_CACHE = 64  # batch signatures whose tables and parameters stay cached per device
# Staging: images of at least two chunks go in chunks of about this many bytes (smaller ones share
# chunks). On the H100 host 2 MiB chunks measured no better (more copy issues, same overlap).
STAGE_CHUNK_BYTES = int(os.environ.get("RFPIPE_STAGE_CHUNK_KB", "4096")) << 10

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
# Host side shared by the CUDA runtime and the CPU (interpreter) entry.


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
        crop = pixels[y0:y1, x0:x1].cpu().numpy()  # CUDA input: the one download (a host sync)
    else:
        crop = pixels[y0:y1, x0:x1]
    if plan.grayscale:
        crop = adjust.grayscale(crop, color_format)
    return np.ascontiguousarray(adjust.contrast(crop, plan.contrast))


def _jobs(frames: list[Frame], plans: list[ImagePlan], color_format: str) -> tuple[list[tuple], list[int]]:
    """(slot, ImageWork, pixels) per uint8 frame, and the slots of float-tensor frames."""
    from rfpipe.preprocess.kernels.triton_params import image_work

    jobs, floats = [], []
    for slot, (frame, plan) in enumerate(zip(frames, plans, strict=True)):
        if frame.is_float_tensor:
            floats.append(slot)
            continue
        pixels = frame.pixels
        adjusted = plan.contrast is not None
        if adjusted:
            pixels = _adjusted_crop(pixels, plan, color_format)
        jobs.append((slot, image_work(plan, color_format, adjusted), pixels))
    return jobs, floats


def _is_pinned(array: np.ndarray) -> bool:
    if not array.flags.c_contiguous:
        return False
    try:
        return torch.from_numpy(array).is_pinned()
    except (RuntimeError, ValueError, TypeError):
        return False


def _sources(jobs: list[tuple], device: torch.device, in_place, direct: bool) -> tuple[tuple, list]:
    """The batch signature (a `Source` per image) and each image's pixels (tensor or numpy array)."""
    from rfpipe.preprocess.kernels.triton_batch import DEVICE, RECT, ROWS, Source

    sources, pixels = [], []
    pinned: dict[int, bool] = {}  # per underlying array: the frames of one NHWC batch share it
    for slot, work, image in jobs:
        if isinstance(image, torch.Tensor) and in_place(image):
            if image.device != device:
                image = image.to(device)
            sources.append(Source(slot, work, DEVICE, tuple(image.stride())))
        else:
            if isinstance(image, torch.Tensor):
                image = image.numpy()
            owner = id(image.base) if image.base is not None else id(image)
            if direct and image.flags.c_contiguous and owner not in pinned:
                pinned[owner] = _is_pinned(image)
            if direct and image.flags.c_contiguous and pinned[owner]:
                sources.append(Source(slot, work, ROWS, (image.strides[0],)))
            else:
                sources.append(Source(slot, work, RECT))
        pixels.append(image)
    return tuple(sources), pixels


def _upload_source(plan, index: int, pixels: list) -> np.ndarray:
    """The host bytes of upload `index`: the region rectangle (RECT) or its full rows (ROWS)."""
    from rfpipe.preprocess.kernels.triton_batch import ROWS

    source = plan.sources[index]
    x0, y0, x1, y1 = source.work.region
    if source.kind == ROWS:
        return pixels[index][y0:y1]
    return pixels[index][y0:y1, x0:x1]


def _float_frames(out: torch.Tensor, frames: list[Frame], plans: list[ImagePlan], slots: list[int],
                  config: ModelConfig, color_format: str) -> None:
    # Float tensors keep the reference's tensor semantics, computed on their own device (DESIGN.md).
    for slot in slots:
        result = preprocess_float_tensor(frames[slot].pixels, plans[slot], config, color_format)
        out[slot].copy_(result.to(out.device))


def _output_shape(plans: list[ImagePlan]) -> tuple[int, int, int, int]:
    target = plans[0].target
    return (len(plans), 3, target.height, target.width)


# --------------------------------------------------------------------------------------------
# CPU entry: the same plan and launches on CPU tensors, for Triton's interpreter in tests.


def run_on_cpu(
    frames: list[Frame], plans: list[ImagePlan], config: ModelConfig, color_format: str,
    pillow: tuple[int, int] | None = None,
) -> torch.Tensor:
    """`run`'s launch sequence on CPU tensors under `TRITON_INTERPRET=1` (tests without a GPU).

    CPU uint8 tensors stand in for device tensors (read in place through their strides); numpy
    frames go through the same rectangle staging as on the GPU. `pillow` (major, minor) forces a Pillow
    pass-order rule (default: the installed Pillow's).

    >>> batch = run_on_cpu(frames, plans, config, "bgr")  # doctest: +SKIP
    """
    from rfpipe.preprocess.kernels.triton_batch import BatchPlan, launch, launchers

    shape = _output_shape(plans)
    out = torch.empty(shape, dtype=torch.float32)
    jobs, floats = _jobs(frames, plans, color_format)
    if jobs:
        sources, pixels = _sources(jobs, torch.device("cpu"), in_place=lambda t: True, direct=False)
        plan = BatchPlan(sources, shape, pillow)
        buffer = torch.zeros(plan.buffer_bytes, dtype=torch.uint8)
        host = buffer.numpy()
        host[: plan.param_bytes] = plan.parameters(pixels, buffer.data_ptr())
        for index, offset in plan.uploads:
            source = _upload_source(plan, index, pixels)
            np.copyto(host[offset : offset + source.nbytes].reshape(source.shape), source)
        launch(plan, launchers(), buffer, plan.views(buffer), normalization_table(config).contiguous(), out)
    _float_frames(out, frames, plans, floats, config, color_format)
    return out


# --------------------------------------------------------------------------------------------
# CUDA runtime: pinned ring, staging threads, stream, device buffer, plan cache, self-check.


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
        if nbytes > self.capacity:
            raise ValueError(f"{nbytes} bytes exceed the pinned staging ring ({self.capacity} bytes)")
        start = self.head if self.head + nbytes <= self.capacity else 0
        end = start + nbytes
        while self.busy and any(s < end and start < e for s, e, _ in self.busy):
            if self.busy[0][2] is None:  # this call's own fills: issue their copies first
                drain()
                continue
            self.busy.popleft()[2].synchronize()  # the ring wrapped onto a copy still in flight
        self.head = end
        self.busy.append([start, end, None])
        return start

    def settle(self, event: torch.cuda.Event) -> None:
        """Mark the regions handed out since the last settle as free once `event` has passed."""
        for entry in reversed(self.busy):
            if entry[2] is not None:
                break
            entry[2] = event
        while self.busy and self.busy[0][2] is not None and self.busy[0][2].query():
            self.busy.popleft()


class _Stager:
    """Host-to-device copies of one call through the pinned ring.

    Fills use torch's CPU copy, which runs on all intra-op threads (numpy's copy is one thread,
    about 10 GB/s on the H100 host; torch's about 50 GB/s). Small neighbouring images share one
    DMA; an image of two chunks or more goes in chunks, each chunk's DMA issued as soon as it is
    filled, so the DMA of one chunk overlaps the fill of the next.
    """

    def __init__(self, runtime: _Runtime, buffer: torch.Tensor):
        self.ring = runtime.ring
        self.stream = runtime.stream
        self.buffer = buffer

    def _wrapped(self) -> None:
        # The ring wrapped onto this call's own copies: let them be waited for like older ones.
        event = torch.cuda.Event()
        event.record(self.stream)
        self.ring.settle(event)

    def _fill(self, at: int, source: np.ndarray) -> None:
        n = source.nbytes
        if min(source.strides) < 0:  # torch cannot view negative strides: numpy's (one-thread) copy
            np.copyto(self.ring.array[at : at + n].reshape(source.shape), source)
            return
        slot = self.ring.tensor[at : at + n].view(source.shape)
        if source.flags.writeable:
            slot.copy_(torch.from_numpy(source))
        else:
            with warnings.catch_warnings():  # read-only arrays are only read here
                warnings.simplefilter("ignore", UserWarning)
                slot.copy_(torch.from_numpy(source))

    def put(self, source: np.ndarray, target: torch.Tensor) -> None:
        """Fill `source` into the ring and issue its copy to `target` (same number of bytes)."""
        n = source.nbytes
        at = self.ring.reserve(n, self._wrapped)
        self._fill(at, source)
        target.copy_(self.ring.tensor[at : at + n], non_blocking=True)

    def _span(self, pieces: list[tuple[np.ndarray, int]]) -> None:
        # One ring region and one DMA for pieces lying in [start, end) of the device buffer.
        if not pieces:
            return
        start = pieces[0][1]
        end = pieces[-1][1] + pieces[-1][0].nbytes
        at = self.ring.reserve(end - start, self._wrapped)
        for source, offset in pieces:
            self._fill(at + offset - start, source)
        self.buffer[start:end].copy_(self.ring.tensor[at : at + end - start], non_blocking=True)

    def images(self, items: list[tuple[np.ndarray, int]]) -> None:
        """Stage HWC rectangles at their (increasing) device-buffer offsets."""
        group: list[tuple[np.ndarray, int]] = []
        for source, offset in items:
            n = source.nbytes
            if n >= 2 * STAGE_CHUNK_BYTES:
                self._span(group)
                group = []
                row = n // source.shape[0]
                rows = max(1, STAGE_CHUNK_BYTES // row)
                for r0 in range(0, source.shape[0], rows):
                    self._span([(source[r0 : r0 + rows], offset + r0 * row)])
                continue
            if group and offset + n - group[0][1] > STAGE_CHUNK_BYTES:
                self._span(group)
                group = []
            group.append((source, offset))
        self._span(group)


class _Runtime:
    """Per-device state: stream, lock, pinned ring, staging threads, device buffer, plan cache."""

    def __init__(self, device: torch.device):
        from rfpipe.preprocess.kernels.triton_batch import launchers

        self.device = device
        self.index = device.index
        self.stream = torch.cuda.Stream(device)
        self.lock = threading.Lock()
        self.ring = _PinnedRing(RING_BYTES)
        self.buffer: torch.Tensor | None = None
        self.norms: dict[ModelConfig, torch.Tensor] = {}
        self.plans: collections.OrderedDict = collections.OrderedDict()
        self.kernels = launchers()
        self.keep: collections.deque = collections.deque()  # (event, objects the GPU still reads)
        self.pillow: tuple[int, int] | None = None  # (major, minor) forces that Pillow's pass order (checks)

    def _norm(self, config: ModelConfig) -> torch.Tensor:
        table = self.norms.get(config)
        if table is None:
            table = normalization_table(config).pin_memory().to(self.device, non_blocking=True)
            self.norms[config] = table
        return table

    def _plan(self, sources: tuple, shape: tuple[int, int, int, int]):
        from rfpipe.preprocess.kernels.triton_batch import BatchPlan

        key = (sources, shape)
        plan = self.plans.get(key)
        if plan is None:
            plan = BatchPlan(sources, shape, self.pillow)
            plan.resident = None  # device copy of the parameters when they never change
            self.plans[key] = plan
            if len(self.plans) > PLAN_CACHE:
                self.plans.popitem(last=False)
        else:
            self.plans.move_to_end(key)
        return plan

    def _device_buffer(self, nbytes: int) -> torch.Tensor:
        # Reused across calls: every use is on self.stream, so stream order protects it.
        if self.buffer is not None and self.buffer.numel() >= nbytes:
            return self.buffer
        size = 1 << max(20, (nbytes - 1).bit_length())
        if size > MAX_KEPT_DEVICE_BYTES:
            return torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        self.buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
        return self.buffer

    def _enqueue(self, plan, pixels: list, buffer: torch.Tensor, norm: torch.Tensor, out: torch.Tensor) -> list:
        """Stage, copy and launch on self.stream; returns the caller's pinned arrays being copied."""
        from rfpipe.preprocess.kernels.triton_batch import ROWS, launch

        stager = _Stager(self, buffer)
        if plan.patches:  # in-place tensors: addresses change per call
            stager.put(plan.parameters(pixels, buffer.data_ptr()), buffer[: plan.param_bytes])
            params = plan.views(buffer)
        else:
            if plan.resident is None:
                resident = torch.empty(plan.param_bytes, dtype=torch.uint8, device=self.device)
                stager.put(plan.template, resident)
                plan.resident = (resident, plan.views(resident))
            params = plan.resident[1]
        direct, staged = [], []
        for index, offset in plan.uploads:
            source = _upload_source(plan, index, pixels)
            if plan.sources[index].kind == ROWS:  # pinned by the caller: one copy, no staging
                rows = torch.from_numpy(source.reshape(-1))
                buffer[offset : offset + rows.numel()].copy_(rows, non_blocking=True)
                direct.append(source)
            else:
                staged.append((source, offset))
        stager.images(staged)
        launch(plan, self.kernels, buffer, params, norm, out, self.stream.cuda_stream, self.device.index)
        return direct

    def run(self, frames: list[Frame], plans: list[ImagePlan], config: ModelConfig, color_format: str) -> torch.Tensor:
        from rfpipe.preprocess.kernels.triton_batch import DEVICE

        jobs, floats = _jobs(frames, plans, color_format)  # CPU contrast work happens outside the lock
        caller = torch.cuda.current_stream(self.index)
        shape = _output_shape(plans)
        with self.lock:
            # torch.cuda.stream() costs tens of microseconds here; set_stream is enough when the
            # caller is on this device (it would otherwise also switch the current device).
            context = None if torch.cuda.current_device() == self.index else torch.cuda.stream(self.stream)
            if context is None:
                torch.cuda.set_stream(self.stream)
            else:
                context.__enter__()
            try:
                while self.keep and self.keep[0][0].query():
                    self.keep.popleft()
                out = torch.empty(shape, dtype=torch.float32, device=self.device)
                direct = []
                if jobs:
                    sources, pixels = _sources(jobs, self.device, _on_gpu, direct=True)
                    plan = self._plan(sources, shape)
                    in_place = [p for s, p in zip(sources, pixels, strict=True) if s.kind == DEVICE]
                    if in_place:  # written on the caller's stream, read on ours
                        self.stream.wait_stream(caller)
                        for tensor in in_place:
                            tensor.record_stream(self.stream)
                    buffer = self._device_buffer(plan.buffer_bytes)
                    direct = self._enqueue(plan, pixels, buffer, self._norm(config), out)
                ready = torch.cuda.Event()
                ready.record(self.stream)
                self.ring.settle(ready)  # this call's staging regions are free once the batch is ready
                if direct:  # the caller's pinned arrays must outlive their copies
                    self.keep.append((ready, direct))
            finally:
                if context is None:
                    torch.cuda.set_stream(caller)
                else:
                    context.__exit__(None, None, None)
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


def _runtime(device: torch.device | str) -> _Runtime:
    try:
        device = resolve_device(device)
        if device.type != "cuda":
            raise ValueError(f"the cuda implementation needs a CUDA device, got {device}")
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
                problem = self_check(runtime.run)
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
        # Pillow 12.2/12.3 run very tall images (height > 100 x width) vertically first, in Python.
        ("pillow-tall", {"size": (20, 30)}, (3, 400), "bgr"),
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
        "normalization": IMAGENET_NORMALIZATION,
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


def self_check(run: Any) -> str | None:
    """Run the probes through `run` (a runtime's, or `run_on_cpu` in tests); None when every output
    is bit-identical to the installed Pillow/OpenCV, else the reason."""
    from rfpipe.geometry import plan_image

    rng = np.random.default_rng(1234)
    for name, fields, (width, height), color_format in _probes():
        config = _probe_config(fields)
        yy, xx = np.mgrid[0:height, 0:width]
        image = np.stack([xx * 255 // width, yy * 255 // height, (xx * yy) % 256], axis=2)
        image = np.clip(image + rng.integers(-30, 31, image.shape), 0, 255).astype(np.uint8)
        plan = plan_image(config, (width, height), config.training_size, None, color_format)
        expected = _probe_expected(image, plan, color_format)
        table = normalization_table(config)
        want = torch.stack([table[c][torch.from_numpy(expected[:, :, c].astype(np.int64))] for c in range(3)])
        for attempt in ("first", "repeated"):  # the first call compiles; repeats take the cached paths
            got = run([Frame(image)], [plan], config, color_format)[0].cpu()
            if not torch.equal(got, want):
                differing = int((got != want).sum())
                return (f"self-check probe {name!r} ({attempt} call) differs from the installed "
                        f"Pillow/OpenCV in {differing} values")
    return None
