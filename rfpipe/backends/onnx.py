"""ONNX Runtime backend: `weights.onnx` on the CPU or CUDA execution provider.

On CUDA, inputs and outputs are bound to device memory (I/O binding), so the batch never makes a
host round trip; ONNX Runtime runs on a stream of its own that first waits for the caller's
current stream (where preprocessing queued the batch), and the caller's stream then waits for
it: ordering stays on the GPU, with no host synchronisation between stages. A model exported
with a static batch size runs in chunks of that size, the last one padded (`run_in_chunks`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rfpipe.backends import BackendUnavailable, check_options, run_in_chunks
from rfpipe.devices import resolve_device

# rfdetr's exporter names its outputs; older exports are read by position (boxes first).
BOXES_OUTPUT, LOGITS_OUTPUT = "dets", "labels"


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailable(
            "the onnx backend needs onnxruntime (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
        ) from error
    return onnxruntime


class OnnxBackend:
    """Runs an RF-DETR ONNX graph: batch -> (logits, boxes) float32 on the batch's device.

    >>> backend = OnnxBackend("pkg/weights.onnx", device="cpu")  # model  # doctest: +SKIP
    >>> logits, boxes = backend(batch)  # model  # doctest: +SKIP
    """

    name = "onnx"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
                 **options):
        check_options(self.name, options, ("threads",))
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        ort = _onnxruntime()
        self.device = resolve_device(device)
        self.path = Path(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                    f"(available: {ort.get_available_providers()}); install onnxruntime-gpu"
                )
            self.stream = torch.cuda.Stream(self.device)
            cuda_options = {
                "device_id": self.device.index or 0,
                "user_compute_stream": str(self.stream.cuda_stream),
            }
            providers = [("CUDAExecutionProvider", cuda_options)]
        elif self.device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise BackendUnavailable(f"the onnx backend runs on cpu or cuda, not {self.device}")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise ValueError(f"{path}: onnxruntime cannot load it ({error})") from error

        (model_input,) = self.session.get_inputs()
        self.input_name = model_input.name
        shape = model_input.shape
        self.static_batch = shape[0] if isinstance(shape[0], int) else None
        self.input_size = (shape[3], shape[2]) if all(isinstance(s, int) for s in shape[2:]) else None  # (w, h)
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        if BOXES_OUTPUT in names and LOGITS_OUTPUT in names:
            self.boxes_name, self.logits_name = BOXES_OUTPUT, LOGITS_OUTPUT
        else:
            self.boxes_name, self.logits_name = names[0], names[1]
        self.output_dims = {o.name: o.shape[1:] for o in outputs}
        self.run_options = ort.RunOptions()
        if self.device.type == "cuda":
            # Ordering is kept with stream waits; no blocking synchronisation at the end of each run.
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def _run_cpu(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.session.run([self.logits_name, self.boxes_name], {self.input_name: batch.numpy()}, self.run_options)
        return torch.from_numpy(out[0]), torch.from_numpy(out[1])

    def _run_cuda(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # the batch was queued on the caller's stream
        n = batch.shape[0]
        with torch.cuda.stream(self.stream):
            logits = torch.empty((n, *self.output_dims[self.logits_name]), dtype=torch.float32, device=self.device)
            boxes = torch.empty((n, *self.output_dims[self.boxes_name]), dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(self.input_name, "cuda", index, np.float32, list(batch.shape), batch.data_ptr())
        binding.bind_output(self.logits_name, "cuda", index, np.float32, list(logits.shape), logits.data_ptr())
        binding.bind_output(self.boxes_name, "cuda", index, np.float32, list(boxes.shape), boxes.data_ptr())
        self.session.run_with_iobinding(binding, self.run_options)
        for tensor in (batch, logits, boxes):
            tensor.record_stream(self.stream)  # keep the allocator from reusing them before the run ends
        caller.wait_stream(self.stream)
        return logits, boxes

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.device != self.device:
            raise ValueError(f"batch is on {batch.device}, the onnx backend runs on {self.device}")
        run = self._run_cuda if self.device.type == "cuda" else self._run_cpu
        size = self.static_batch
        return run_in_chunks(lambda piece: run(piece.float().contiguous()), batch, size,
                             None if size is None else lambda rows: size)
