"""The CUDA runtime of the GPU path: per device one stream, lock, pinned ring, device buffer, plans.

All work of a call (parameter upload, frame uploads, kernels) is enqueued on the runtime's stream
under its lock; one ready event at the end orders the caller's stream after it, frees the call's
ring regions and releases the caller's pinned arrays (see the package docstring).
"""

from __future__ import annotations

import collections
import logging
import threading

import torch

from rfpipe.config import ModelConfig
from rfpipe.devices import resolve_device
from rfpipe.geometry import ImagePlan
from rfpipe.preprocess.cuda import host
from rfpipe.preprocess.cuda.selfcheck import self_check
from rfpipe.preprocess.cuda.staging import RING_BYTES, PinnedRing, Stager
from rfpipe.preprocess.inputs import Frame
from rfpipe.preprocess.kernels.float_tables import normalization_table

logger = logging.getLogger("rfpipe")

MAX_KEPT_DEVICE_BYTES = 512 << 20  # a device buffer this large is not kept between calls
PLAN_CACHE = 64  # batch signatures whose tables and parameters stay cached per device


def on_gpu(tensor: torch.Tensor) -> bool:
    """Whether a uint8 tensor is read in place (it is on a GPU) rather than staged from the host."""
    return tensor.device.type == "cuda"


class Runtime:
    """Per-device state: stream, lock, pinned ring, device buffer, plan cache."""

    def __init__(self, device: torch.device):
        from rfpipe.preprocess.kernels.triton_batch import launchers

        self.device = device
        self.index = device.index
        self.stream = torch.cuda.Stream(device)
        self.lock = threading.Lock()
        self.ring = PinnedRing(RING_BYTES)
        self.buffer: torch.Tensor | None = None
        self.norms: dict[ModelConfig, torch.Tensor] = {}
        self.plans: collections.OrderedDict = collections.OrderedDict()
        self.kernels = launchers()
        self.keep: collections.deque = collections.deque()  # (event, objects the GPU still reads)
        self.pillow: tuple[int, int] | None = None  # (major, minor) forces that Pillow's pass order (checks)

    def norm(self, config: ModelConfig) -> torch.Tensor:
        """The config's 256-entry normalisation table on the device (uploaded once per config)."""
        table = self.norms.get(config)
        if table is None:
            table = normalization_table(config).pin_memory().to(self.device, non_blocking=True)
            self.norms[config] = table
        return table

    def plan(self, sources: tuple, shape: tuple[int, int, int, int]):
        """The cached `BatchPlan` of a batch signature (built on first use, least recent evicted)."""
        from rfpipe.preprocess.kernels.triton_batch import BatchPlan

        key = (sources, shape)
        plan = self.plans.get(key)
        if plan is None:
            plan = BatchPlan(sources, shape, self.pillow)
            self.plans[key] = plan
            if len(self.plans) > PLAN_CACHE:
                self.plans.popitem(last=False)
        else:
            self.plans.move_to_end(key)
        return plan

    def device_buffer(self, nbytes: int) -> torch.Tensor:
        """A device buffer of at least `nbytes`, reused across calls (stream order protects it)."""
        if self.buffer is not None and self.buffer.numel() >= nbytes:
            return self.buffer
        size = 1 << max(20, (nbytes - 1).bit_length())
        if size > MAX_KEPT_DEVICE_BYTES:
            return torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        self.buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
        return self.buffer

    def enqueue(self, plan, pixels: list, buffer: torch.Tensor, norm: torch.Tensor, out: torch.Tensor) -> list:
        """Stage, copy and launch on self.stream; returns the caller's pinned arrays being copied."""
        from rfpipe.preprocess.kernels.triton_batch import ROWS, launch

        stager = Stager(self.ring, self.stream, buffer)
        if plan.patches:  # in-place tensors: addresses change per call
            stager.put(plan.parameters(pixels, buffer.data_ptr()), buffer[: plan.param_bytes])
            params = plan.views(buffer)
        else:
            params = plan.resident_views(self.device, stager.put)
        direct, staged = [], []
        for index, offset in plan.uploads:
            source = host.upload_source(plan, index, pixels)
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
        """uint8 frames -> float32 NCHW on the device, ordered before the caller's current stream."""
        from rfpipe.preprocess.kernels.triton_batch import DEVICE

        jobs = host.jobs(frames, plans, color_format)  # CPU contrast work happens outside the lock
        caller = torch.cuda.current_stream(self.index)
        shape = host.output_shape(plans)
        with self.lock:
            # torch.cuda.stream() costs tens of microseconds here; set_stream is enough when the
            # caller is on this device (it would otherwise also switch the current device).
            context = None if torch.cuda.current_device() == self.index else torch.cuda.stream(self.stream)
            if context is None:
                torch.cuda.set_stream(self.stream)
            else:
                context.__enter__()
            try:
                # Allocated on our stream (its pool, so a block the caller's queued work still reads
                # is never handed out here), in the caller's inference mode. The runtime's own buffers
                # (the pinned ring, the device buffer, resident parameters) persist across calls made
                # inside and outside inference mode, so every in-place update of them runs inside it.
                out = torch.empty(shape, dtype=torch.float32, device=self.device)
                with torch.inference_mode():
                    while self.keep and self.keep[0][0].query():
                        self.keep.popleft()
                    sources, pixels = host.sources(jobs, self.device, on_gpu, direct=True)
                    plan = self.plan(sources, shape)
                    in_place = [p for s, p in zip(sources, pixels, strict=True) if s.kind == DEVICE]
                    if in_place:  # written on the caller's stream, read on ours
                        self.stream.wait_stream(caller)
                        for tensor in in_place:
                            tensor.record_stream(self.stream)
                    buffer = self.device_buffer(plan.buffer_bytes)
                    direct = self.enqueue(plan, pixels, buffer, self.norm(config), out)
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
        return out


_runtimes: dict[torch.device, Runtime] = {}
_failures: dict[torch.device, str] = {}
_runtimes_lock = threading.Lock()


def runtime(device: torch.device | str) -> Runtime:
    """The device's runtime, created and self-checked on first use; RuntimeError (with the reason)
    when the GPU path cannot run there."""
    try:
        device = resolve_device(device)
        if device.type != "cuda":
            raise ValueError(f"the cuda implementation needs a CUDA device, got {device}")
    except Exception as error:  # not a CUDA device, or no GPU at all
        raise RuntimeError(f"rfpipe cuda preprocessing is unavailable on {device}: {error}") from error
    found = _runtimes.get(device)
    if found is not None:
        return found
    with _runtimes_lock:
        if device in _runtimes:
            return _runtimes[device]
        if device not in _failures:
            problem = None
            try:
                created = Runtime(device)
                problem = self_check(created.run)
            except Exception as error:  # Triton missing, cannot compile or launch here
                problem = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            if problem is None:
                _runtimes[device] = created
                return created
            _failures[device] = problem
            logger.warning(
                "rfpipe cuda: GPU preprocessing disabled on %s (%s); implementation='auto' uses the exact CPU path",
                device, problem,
            )
        raise RuntimeError(f"rfpipe cuda preprocessing is unavailable on {device}: {_failures[device]}")


