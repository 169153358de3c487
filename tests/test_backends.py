"""Backends alone: ONNX batch handling, TensorRT's optional import and config, torch options; GPU parts skip without CUDA."""

from __future__ import annotations

import pytest
import torch

from rfpipe.backends import BackendUnavailable

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _tiny_onnx(path, batch: int | str):
    """A graph with rfdetr's I/O names: input [B, 3, 4, 4] -> dets [B, 12, 4], labels [B, 16, 3] (reshapes)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "dets_shape"], ["dets"]),
            helper.make_node("Reshape", ["input", "labels_shape"], ["labels"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 4, 4])],
        [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [batch, 12, 4]),
         helper.make_tensor_value_info("labels", TensorProto.FLOAT, [batch, 16, 3])],
        [helper.make_tensor("dets_shape", TensorProto.INT64, [3], [-1, 12, 4]),
         helper.make_tensor("labels_shape", TensorProto.INT64, [3], [-1, 16, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("static_batch", [1, 2, 4])
def test_onnx_static_batch_runs_in_padded_chunks(tmp_path, static_batch):
    pytest.importorskip("onnxruntime")
    from rfpipe.backends.onnx import OnnxBackend

    backend = OnnxBackend(_tiny_onnx(tmp_path / "m.onnx", static_batch), "cpu")
    assert backend.static_batch == static_batch and backend.input_size == (4, 4)
    batch = torch.randn(5, 3, 4, 4)
    logits, boxes = backend(batch)
    assert torch.equal(logits, batch.reshape(5, 16, 3)) and torch.equal(boxes, batch.reshape(5, 12, 4))


def test_onnx_dynamic_batch_and_output_names(tmp_path):
    pytest.importorskip("onnxruntime")
    from rfpipe.backends.onnx import OnnxBackend

    backend = OnnxBackend(_tiny_onnx(tmp_path / "m.onnx", "batch"), "cpu")
    assert backend.static_batch is None and (backend.logits_name, backend.boxes_name) == ("labels", "dets")
    batch = torch.randn(3, 3, 4, 4)
    logits, boxes = backend(batch)
    assert logits.shape == (3, 16, 3) and torch.equal(boxes, batch.reshape(3, 12, 4))
    with pytest.raises(ValueError, match="runs on cpu"):
        backend(batch.to("meta"))


def test_onnx_bad_file_is_a_clear_error(tmp_path):
    pytest.importorskip("onnxruntime")
    from rfpipe.backends.onnx import OnnxBackend

    (tmp_path / "weights.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="onnxruntime cannot load it"):
        OnnxBackend(tmp_path / "weights.onnx", "cpu")


def test_tensorrt_batch_limits_from_trt_config(tmp_path):
    from rfpipe.backends.tensorrt import read_batch_limits

    path = tmp_path / "trt_config.json"
    path.write_text('{"static_batch_size": 4}')
    assert read_batch_limits(path) == (4, 4)
    path.write_text('{"dynamic_batch_size_min": 1, "dynamic_batch_size_opt": 8, "dynamic_batch_size_max": 16}')
    assert read_batch_limits(path) == (1, 16)
    path.write_text('{"dynamic_batch_size_min": 8, "dynamic_batch_size_max": 2}')
    with pytest.raises(ValueError, match="dynamic_batch_size_min <= dynamic_batch_size_max"):
        read_batch_limits(path)
    path.write_text("[1]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_batch_limits(path)


def test_tensorrt_missing_is_a_clear_backend_unavailable(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed, even where it is
    from rfpipe.backends.tensorrt import TensorRTBackend

    (tmp_path / "trt_config.json").write_text('{"static_batch_size": 1}')
    with pytest.raises(BackendUnavailable, match="pip install tensorrt"):
        TensorRTBackend(tmp_path / "engine.plan", tmp_path / "trt_config.json", "cuda")


def test_torch_backend_options_are_checked():
    from rfpipe.backends.torch import TorchBackend

    module = torch.nn.Conv2d(3, 4, 1)
    with pytest.raises(ValueError, match="dtype must be one of"):
        TorchBackend(module, "cpu", dtype="int8")


def test_torch_backend_unknown_model_type():
    pytest.importorskip("rfdetr")
    from rfpipe.backends.torch import build_from_state_dict

    with pytest.raises(ValueError, match="unknown model_type"):
        build_from_state_dict({}, "rfdetr-huge", 320)
    with pytest.raises(ValueError, match="not an RF-DETR detector state dict"):
        build_from_state_dict({}, "rfdetr-nano", 320)


@cuda
def test_torch_float16_gives_float32_outputs_of_the_same_shape():
    pytest.importorskip("rfdetr")
    from rfpipe.backends.torch import load_checkpoint
    from rfpipe.testing.untrained import cached_packages

    checkpoint = cached_packages()["checkpoint"]
    full, _ = load_checkpoint(checkpoint, "cuda")
    half, _ = load_checkpoint(checkpoint, "cuda", dtype="float16")
    batch = torch.randn(2, 3, 320, 320, device="cuda")
    for a, b in zip(full(batch), half(batch), strict=True):
        assert b.dtype == torch.float32 and b.shape == a.shape and torch.isfinite(b).all()


@cuda
def test_onnx_cuda_io_binding_equals_cpu():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA execution provider here")
    from rfpipe.backends.onnx import OnnxBackend
    from rfpipe.testing.untrained import cached_packages

    path = cached_packages()["stretch"] / "weights.onnx"
    batch = torch.randn(2, 3, 320, 320)
    on_cpu = OnnxBackend(path, "cpu")(batch)
    on_gpu = OnnxBackend(path, "cuda")(batch.cuda())
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert (a - b.cpu()).abs().max() < 1e-2
