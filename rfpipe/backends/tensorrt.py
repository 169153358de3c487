"""TensorRT backend: a package's `engine.plan` + `trt_config.json` (batch limits), on CUDA only.

TensorRT is optional: importing this module works without it, and loading raises
`BackendUnavailable` with the install hint. Device tensors are bound by address and the engine
is enqueued on a stream of its own that waits for the caller's current stream; the caller's
stream then waits for it, so no host synchronisation separates the stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rfpipe.backends import BackendUnavailable, check_options, run_in_chunks
from rfpipe.devices import resolve_device

BOXES_OUTPUT, LOGITS_OUTPUT = "dets", "labels"


def _tensorrt():
    try:
        import tensorrt
    except ImportError as error:
        raise BackendUnavailable(
            "the tensorrt backend needs NVIDIA TensorRT's Python package (pip install tensorrt), "
            "matching the TensorRT version the engine.plan was built with"
        ) from error
    return tensorrt


def read_batch_limits(path: str | Path) -> tuple[int, int]:
    """(min, max) batch size from `trt_config.json` (static_batch_size, or dynamic_batch_size_min/max)."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    static = config.get("static_batch_size")
    if static is not None:
        if not isinstance(static, int) or static < 1:
            raise ValueError(f"{path}: static_batch_size must be a positive integer, got {static!r}")
        return static, static
    low, high = config.get("dynamic_batch_size_min"), config.get("dynamic_batch_size_max")
    if not all(isinstance(v, int) and v >= 1 for v in (low, high)) or low > high:
        raise ValueError(
            f"{path}: needs static_batch_size or dynamic_batch_size_min <= dynamic_batch_size_max, got {config}"
        )
    return low, high


class TensorRTBackend:
    """Runs a serialized RF-DETR TensorRT engine: batch -> (logits, boxes) float32 on `device`."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, config_path: str | Path, device: str | torch.device = "cuda",
                 **options):
        check_options(self.name, options, ())
        trt = _tensorrt()
        self.device = resolve_device(device)
        if self.device.type != "cuda":
            raise BackendUnavailable(f"the tensorrt backend runs on CUDA devices only, not {self.device}")
        self.min_batch, self.max_batch = read_batch_limits(config_path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(self.device):
            self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise ValueError(f"{engine_path}: TensorRT {trt.__version__} cannot deserialize this engine")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) < 2:
            raise ValueError(f"{engine_path}: expected one input and (boxes, logits) outputs, got {names}")
        self.input_name = inputs[0]
        if BOXES_OUTPUT in outputs and LOGITS_OUTPUT in outputs:
            self.boxes_name, self.logits_name = BOXES_OUTPUT, LOGITS_OUTPUT
        else:
            self.boxes_name, self.logits_name = outputs[0], outputs[1]
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.input_size = (shape[3], shape[2]) if shape[2] > 0 and shape[3] > 0 else None  # (w, h)
        self.stream = torch.cuda.Stream(self.device)

    def _run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the piece was made on the caller's stream
        self.context.set_input_shape(self.input_name, tuple(batch.shape))
        outputs = {}
        with torch.cuda.stream(self.stream):
            for name in (self.logits_name, self.boxes_name):
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
                self.context.set_tensor_address(name, outputs[name].data_ptr())
        self.context.set_tensor_address(self.input_name, batch.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        for tensor in (batch, *outputs.values()):
            tensor.record_stream(self.stream)
        return outputs[self.logits_name], outputs[self.boxes_name]

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.device != self.device:
            raise ValueError(f"batch is on {batch.device}, the tensorrt backend runs on {self.device}")
        batch = batch.float().contiguous()
        caller = torch.cuda.current_stream(self.device)
        # A short piece is padded up to the engine's minimum batch.
        outputs = run_in_chunks(self._run, batch, self.max_batch, lambda rows: max(rows, self.min_batch))
        caller.wait_stream(self.stream)
        return outputs
