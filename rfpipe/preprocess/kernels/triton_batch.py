"""One batch on the kernels: device-buffer layout, parameter bytes and the launch sequence.

A `BatchPlan` is built from a batch *signature* (per image: output slot, resamples, and where its
pixels come from) and cached by the runtime, so a repeated shape costs a dictionary lookup, not
table building. Pixels come from one of three kinds of source:

* `RECT`: host pixels staged as a contiguous HWC rectangle into the device buffer;
* `ROWS`: pinned host rows copied as they are (the row pitch of the frame is in the signature);
* `DEVICE`: a uint8 tensor read in place through its strides (in the signature); its address is
  patched into the parameter bytes per call, relative to the buffer every launch reads from.

Device buffer: [parameters (only when patched per call) | uploads | letterbox intermediates].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rfpipe.preprocess.kernels.triton_params import (
    OPENCV_BLOCK,
    PILLOW_BLOCK,
    ImageWork,
    LaunchTables,
    Placement,
)
from rfpipe.preprocess.kernels.triton_source import FIELDS, Field

RECT, ROWS, DEVICE = "rect", "rows", "device"
ALIGN = 64


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class Source:
    """Where one image's pixels come from; `detail` is the row pitch (ROWS) or strides (DEVICE)."""

    slot: int
    work: ImageWork
    kind: str
    detail: tuple[int, ...] = ()


class BatchPlan:
    """Tables, parameter template, uploads and buffer layout for one batch signature.

    >>> plan = BatchPlan((Source(0, work, RECT),), (1, 3, 560, 560), pillow=(12, 3))  # sketch  # doctest: +SKIP
    """

    def __init__(self, sources: tuple[Source, ...], out_shape: tuple[int, int, int, int],
                 pillow: tuple[int, int] | None = None):
        self.sources = sources
        step_index = [i for i, s in enumerate(sources) if s.work.step is not None]
        self.step = LaunchTables([sources[i].work.step for i in step_index], pillow) if step_index else None
        self.final = LaunchTables([s.work.final for s in sources], pillow)
        self.pillow = sources[0].work.final.filter.value == "pillow-bilinear"
        self.step_count = len(step_index)
        parts = [self.step.rows if self.step else np.zeros(0, np.int64), None,
                 self.step.coefficients if self.step else np.zeros(0, np.int32), self.final.coefficients]
        parts[1] = self.final.rows  # placeholder size; filled below
        self.part_offsets, self.part_bytes = [], []
        size = 0
        for part in parts:
            self.part_offsets.append(size)
            self.part_bytes.append(part.nbytes)
            size += _align(part.nbytes)
        self.param_bytes = size

        # Buffer layout after the parameter region, and each image's placement in it.
        placements: list[Placement] = []
        self.uploads: list[tuple[int, int]] = []  # (source index, buffer offset) for RECT and ROWS
        self.patches: list[tuple[int, int]] = []  # (source index, byte position of its SRC_OFF)
        for i, source in enumerate(sources):
            x0, y0, x1, y1 = source.work.region
            if source.kind == DEVICE:
                sy, sx, sc = source.detail
                placements.append(Placement(y0 * sy + x0 * sx, sx, sy, sc))  # + address - base, per call
            elif source.kind == ROWS:
                (pitch,) = source.detail
                self.uploads.append((i, size))
                placements.append(Placement(size + x0 * 3, 3, pitch, 1))
                size += _align((y1 - y0) * pitch)
            else:
                self.uploads.append((i, size))
                placements.append(Placement(size, 3, (x1 - x0) * 3, 1))
                size += _align((y1 - y0) * (x1 - x0) * 3)
        n, _, height, width = out_shape
        plane = height * width
        outputs = [Placement(s.slot * 3 * plane, 1, width, plane) for s in sources]
        step_rows = np.zeros((0, FIELDS), np.int64)
        if self.step is not None:
            step_sources, step_outputs = [], []
            for row, i in enumerate(step_index):
                w, h = sources[i].work.step.out_size
                step_sources.append(placements[i])
                if sources[i].kind == DEVICE:
                    self.patches.append((i, self.part_offsets[0] + (row * FIELDS + Field.SRC_OFF) * 8))
                placements[i] = Placement(size, 3, w * 3, 1)  # the final resize reads the intermediate
                step_outputs.append(placements[i])
                size += _align(w * h * 3)
            step_rows = self.step.finish(step_sources, step_outputs)
        for i, source in enumerate(sources):
            if source.kind == DEVICE and source.work.step is None:
                self.patches.append((i, self.part_offsets[1] + (i * FIELDS + Field.SRC_OFF) * 8))
        self.buffer_bytes = max(size, ALIGN)
        template = np.zeros(self.param_bytes, np.uint8)
        final_rows = self.final.finish(placements, outputs)
        for offset, part in zip(self.part_offsets, (step_rows, final_rows, parts[2], parts[3]), strict=True):
            raw = part.view(np.uint8).ravel()
            template[offset : offset + raw.size] = raw
        self.template = template
        self._views = None
        self._resident: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    def parameters(self, pixels: list, base: int) -> np.ndarray:
        """The parameter bytes for this call: template plus in-place addresses relative to `base`."""
        if not self.patches:
            return self.template
        params = self.template.copy()
        words = params.view(np.int64)
        for i, position in self.patches:
            words[position // 8] += pixels[i].data_ptr() - base
        return params

    def resident_views(self, device: torch.device,
                       upload: Callable[[np.ndarray, torch.Tensor], None]) -> tuple[torch.Tensor, ...]:
        """`views` of a device copy of the parameters made on first use with `upload(template, target)`.

        Only for plans without in-place sources (`patches`), whose parameter bytes never change:
        later calls reuse the copy and upload nothing.
        """
        if self.patches:
            raise ValueError("this batch plan patches tensor addresses per call; its parameters cannot stay resident")
        if self._resident is None:
            resident = torch.empty(self.param_bytes, dtype=torch.uint8, device=device)
            upload(self.template, resident)
            self._resident = (resident, self._typed_views(resident))
        return self._resident[1]

    def _typed_views(self, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtypes = (torch.int64, torch.int64, torch.int32, torch.int32)
        return tuple(
            params[o : o + max(n, 8)].view(t) for o, n, t in zip(self.part_offsets, self.part_bytes, dtypes, strict=True)
        )

    def views(self, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(step rows, final rows, step tables, final tables) as typed views of device parameter bytes."""
        key = (params.data_ptr(), params.numel())
        if self._views is None or self._views[0] != key:  # the same buffer call after call: reuse
            self._views = (key, self._typed_views(params))
        return self._views[1]


class Launcher:
    """Launches a Triton kernel; after the first (compiling) launch, calls the compiled kernel directly.

    The JIT entry re-derives the specialisation from every argument on every call (tens of
    microseconds); the arguments here never change kind (16-byte aligned tensors), so the compiled
    kernel is reused with the stream passed explicitly. Falls back to the JIT entry if the
    installed Triton's compiled-kernel call differs.
    """

    def __init__(self, kernel, **constexprs):
        self.kernel = kernel
        self.constexprs = constexprs
        self.compiled: dict[int, object] = {}  # device index -> compiled kernel
        self.direct = True

    def __call__(self, grid: tuple[int, int], stream: int | None, device: int, *args) -> None:
        compiled = self.compiled.get(device) if self.direct and stream is not None else None
        if compiled is not None:
            try:
                compiled[(grid[0], grid[1], 1)](*args, *self.constexprs.values(), stream=stream)
                return
            except Exception:  # an API difference between Triton versions: use the JIT entry from now on
                self.direct = False
        kernel = self.kernel[grid](*args, **self.constexprs)
        if stream is not None and hasattr(kernel, "__getitem__"):
            self.compiled[device] = kernel


def launchers() -> dict[str, Launcher]:
    """One launcher per kernel variant: Pillow to float, OpenCV to uint8, OpenCV to float."""
    from rfpipe.preprocess.kernels import triton_opencv, triton_pillow

    pv, pu = PILLOW_BLOCK
    ov, ou = OPENCV_BLOCK
    return {
        "pillow": Launcher(triton_pillow.pillow_resample_kernel, BU=pu, BV=pv),
        "opencv-uint8": Launcher(triton_opencv.opencv_linear_kernel, BU=ou, BV=ov, OUT_FLOAT=False),
        "opencv-float": Launcher(triton_opencv.opencv_linear_kernel, BU=ou, BV=ov, OUT_FLOAT=True),
    }


def launch(plan: BatchPlan, kernels: dict[str, Launcher], buffer: torch.Tensor, params: tuple[torch.Tensor, ...],
           norm: torch.Tensor, out: torch.Tensor, stream: int | None = None, device: int = 0) -> None:
    """Enqueue the batch's kernels (on `stream`, else the current stream; interpreted on CPU tensors)."""
    step_rows, final_rows, step_tables, final_tables = params
    if plan.step is not None:
        grid = (plan.step.tiles, plan.step_count)
        kernels["opencv-uint8"](grid, stream, device, buffer, step_tables, step_rows, norm, buffer)
    grid = (plan.final.tiles, len(plan.sources))
    kernel = kernels["pillow" if plan.pillow else "opencv-float"]
    kernel(grid, stream, device, buffer, final_tables, final_rows, norm, out)
