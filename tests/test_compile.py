"""The compiled forward's machinery on the CPU: buckets, padding that never leaks, the disk cache key,
the eager fallback (no CUDA here; a compiler that fails), backend options refused by name, and the one
checkpoint config that a direct load and `rfpipe export` share."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time

import pytest
import torch
from model_packages import packages  # noqa: F401  (the fixture)

import rfpipe
from rfpipe.backends import check_options, run_in_chunks
from rfpipe.backends.compiled import (
    CompiledForward,
    bucket_for,
    bucket_sizes,
    cache_facts,
    cache_key,
    cache_turn,
    weights_digest,
)
from rfpipe.backends.torch import TorchBackend


class RowWise(torch.nn.Module):
    """A stand-in with RF-DETR's interface (export(), (boxes, logits) out) whose rows are independent."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)

    def export(self):
        pass

    def forward(self, x):
        features = self.conv(x).mean((2, 3))  # [B, 4]
        logits = features[:, None, :].repeat(1, 5, 1) * torch.arange(1, 6, dtype=x.dtype)[None, :, None]
        boxes = torch.sigmoid(features[:, None, :]).repeat(1, 5, 1)
        return boxes, logits


def test_buckets_are_powers_of_two_up_to_the_max_batch():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert bucket_sizes(24) == (1, 2, 4, 8, 16, 24)
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8, 20)] == [1, 2, 4, 8, 8, 8]
    with pytest.raises(ValueError, match="max_batch"):
        bucket_sizes(0)


def test_padding_to_buckets_never_reaches_the_outputs():
    seen = []

    def run(batch):
        seen.append(batch.shape[0])
        return batch.flatten(1)[:, None, :3] * 2, batch.flatten(1)[:, None, :4]

    batch = torch.arange(11 * 3 * 2 * 2, dtype=torch.float32).reshape(11, 3, 2, 2) + 1
    logits, boxes = run_in_chunks(run, batch, 4, lambda rows: bucket_for(rows, (1, 2, 4)))
    assert seen == [4, 4, 4]  # 4 + 4 + 3 padded to 4
    assert logits.shape == (11, 1, 3) and boxes.shape == (11, 1, 4)
    assert torch.equal(logits, batch.flatten(1)[:, None, :3] * 2)
    assert torch.equal(boxes, batch.flatten(1)[:, None, :4])


def test_compiled_forward_pads_to_its_bucket_and_returns_only_the_real_rows():
    torch.manual_seed(0)
    module = RowWise().eval()

    def eager(batch):
        boxes, logits = module(batch)
        return logits, boxes

    forward = CompiledForward(eager, torch.device("cpu"), buckets=(1, 2, 4), input_size=(12, 10),
                              compiler="eager", mode=None, progress=False)
    try:
        assert forward.compiled and set(forward.warm_s) == {1, 2, 4}
        with torch.inference_mode():
            for rows in (1, 3, 4, 7):
                batch = torch.rand(rows, 3, 10, 12)
                logits, boxes = forward(batch)
                want = eager(batch)
                assert logits.shape[0] == rows and boxes.shape[0] == rows
                assert torch.allclose(logits, want[0], atol=1e-6) and torch.allclose(boxes, want[1], atol=1e-6)
            # Another spatial size than the compiled one runs eager, with the same answers.
            other = torch.rand(2, 3, 14, 12)
            assert torch.allclose(forward(other)[0], eager(other)[0], atol=1e-6)
    finally:
        forward.close()


def test_a_cold_cache_is_compiled_by_one_process_at_a_time_and_marked_warm_only_on_success(tmp_path):
    order = []
    inside = threading.Event()

    def first():
        with cache_turn(tmp_path, (1, 8)) as warm:
            order.append(("first", warm))
            inside.set()
            time.sleep(0.3)  # the second start must wait here for the lock
            order.append(("first done", warm))

    def second():
        inside.wait()
        with cache_turn(tmp_path, (1, 8)) as warm:
            order.append(("second", warm))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert order == [("first", False), ("first done", False), ("second", True)]
    # Starts that waited for a cold compile then load together, not one at a time.
    spans = {}
    directory = tmp_path / "together"

    def start(name, hold):
        with cache_turn(directory, (1,)) as warm:
            began = time.monotonic()
            time.sleep(hold)
            spans[name] = (warm, began, time.monotonic())

    compiler = threading.Thread(target=start, args=("compiler", 0.3))
    compiler.start()
    time.sleep(0.1)
    loaders = [threading.Thread(target=start, args=(f"loader{i}", 0.3)) for i in range(2)]
    for thread in loaders:
        thread.start()
    for thread in [compiler, *loaders]:
        thread.join(10)
    assert [spans[n][0] for n in ("compiler", "loader0", "loader1")] == [False, True, True]
    (_, a0, a1), (_, b0, b1) = spans["loader0"], spans["loader1"]
    assert a0 < b1 and b0 < a1, f"the loads ran one after the other: {spans}"
    # A mark names what was compiled: another model in the same directory is not warm.
    with cache_turn(directory, (1,), tag="another") as warm:
        assert not warm
    # A failed warm-up leaves no mark: the next start compiles again.
    with pytest.raises(RuntimeError), cache_turn(tmp_path, (2,)):
        raise RuntimeError("compile failed")
    with cache_turn(tmp_path, (2,)) as warm:
        assert not warm
    with cache_turn(tmp_path, (2, 8)) as warm:
        assert warm


def test_a_cache_directory_without_locks_still_compiles(tmp_path, monkeypatch):
    from rfpipe.backends import compiled

    if compiled.fcntl is None:
        pytest.skip("no fcntl here")

    def refuse(file, operation):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(compiled.fcntl, "flock", refuse)
    with cache_turn(tmp_path, (4,)) as warm:
        assert not warm
    with cache_turn(tmp_path, (4,)) as warm:
        assert warm


def test_a_second_compiled_forward_on_the_same_cache_directory_starts_warm(tmp_path, monkeypatch):
    module = RowWise().eval()

    def eager(batch):
        boxes, logits = module(batch)
        return logits, boxes

    def start() -> tuple[bool, bool]:
        forward = CompiledForward(eager, torch.device("cpu"), buckets=(1, 2), input_size=(12, 10), cache_dir=tmp_path,
                                  compiler="eager", mode=None, progress=False)
        forward.close()
        return forward.compiled, forward.cache_warm

    assert [start(), start()] == [(True, False), (True, True)]
    # inductor's settings from the environment shape what it compiles: not warm under other ones
    monkeypatch.setenv("TORCHINDUCTOR_DETERMINISTIC", "1")
    assert [start(), start()] == [(True, False), (True, True)]


def test_each_bucket_compiles_once_whatever_kind_of_batch_arrives():
    """Batches made in or out of inference mode, contiguous or not, at every bucket: one graph per bucket
    (a second graph for the same bucket is a full recompile on the GPU, 30-50 s)."""
    module = RowWise().eval()
    graphs = []

    def counting(graph, example_inputs):
        graphs.append(tuple(example_inputs[0].shape) if example_inputs else None)
        return graph.forward

    def eager(batch):
        boxes, logits = module(batch)
        return logits, boxes

    torch._dynamo.reset()
    forward = CompiledForward(eager, torch.device("cpu"), buckets=(1, 2, 4), input_size=(12, 10),
                              compiler=counting, mode=None, progress=False)
    try:
        assert forward.compiled and len(graphs) == 3
        for rows in (1, 2, 3, 4):
            plain = torch.rand(rows, 3, 10, 12)
            strided = torch.rand(rows, 10, 12, 3).permute(0, 3, 1, 2)  # channels-last strides
            with torch.inference_mode():
                inference = torch.rand(rows, 3, 10, 12)
                every_other = torch.rand(2 * rows, 3, 10, 12)[::2]  # a batch stride is_contiguous() ignores at 1 row
            for batch in (plain, strided, inference, every_other):
                with torch.inference_mode():
                    want = eager(batch)
                logits, boxes = forward(batch)
                assert torch.allclose(logits, want[0], atol=1e-6) and torch.allclose(boxes, want[1], atol=1e-6)
        assert len(graphs) == 3, f"recompiled: {graphs}"
    finally:
        forward.close()
        torch._dynamo.reset()


def test_a_compiler_failure_falls_back_to_eager_with_one_log_line(caplog, monkeypatch):
    from rfpipe.backends import compiled

    monkeypatch.setattr(compiled, "_logged", set())

    def broken(graph, example_inputs):
        raise RuntimeError("this compiler is broken on purpose")

    torch.manual_seed(0)
    module = RowWise()
    with caplog.at_level(logging.WARNING, logger="rfpipe"):
        backend = TorchBackend(module, "cpu", compile="cudagraphs", compiler=broken, buckets=(1, 2),
                               input_size=(12, 10), cache_dir=None, progress=False)
    assert backend.compile_mode == "none" and backend.buckets is None
    failures = [r for r in caplog.records if "compiling the forward" in r.getMessage()]
    assert len(failures) == 1 and "running it eager" in failures[0].getMessage()
    batch = torch.rand(3, 3, 10, 12)
    boxes, logits = module(batch)
    got_logits, got_boxes = backend(batch)
    assert torch.equal(got_logits, logits) and torch.equal(got_boxes, boxes)


def test_without_cuda_auto_runs_eager_logged_once_and_cudagraphs_is_refused(caplog, monkeypatch):
    from rfpipe.backends import compiled

    if torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU absent: this checks the fallback of machines without one")
    monkeypatch.setattr(compiled, "_logged", set())  # what this process logged before this test
    with caplog.at_level(logging.INFO, logger="rfpipe"):
        backend = TorchBackend(RowWise(), "cpu", compile="auto", max_batch=4, input_size=(12, 10))
        again = TorchBackend(RowWise(), "cpu", compile="auto", max_batch=4, input_size=(12, 10))
    assert backend.compile_mode == again.compile_mode == "none"
    assert sum("runs the forward eager" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="compile='cudagraphs'.*CUDA"):
        TorchBackend(RowWise(), "cpu", compile="cudagraphs", input_size=(12, 10))
    for bad in ({"compile": "fast"}, {"dtype": "float64"}, {"max_batch": 0}, {"buckets": (0,)}):
        with pytest.raises(ValueError):
            TorchBackend(RowWise(), "cpu", input_size=(12, 10), **bad)


def test_the_cache_key_changes_with_model_dtype_bucket_input_and_versions():
    torch.manual_seed(0)
    a, b = RowWise(), RowWise()
    facts = {"torch": "2.11.0", "triton": "3.6.0", "gpu": "NVIDIA H200", "capability": "9.0"}
    base = dict(weights=weights_digest(a), dtype="bfloat16", input_size=(384, 384), facts=facts, bucket=8)
    key = cache_key(**base)
    assert key == cache_key(**base)  # stable
    assert weights_digest(a) == weights_digest(a) and weights_digest(a) != weights_digest(b)
    changed = [
        {"weights": weights_digest(b)},
        {"dtype": "float16"},
        {"bucket": 16},
        {"input_size": (320, 320)},
        {"facts": {**facts, "torch": "2.14.1"}},
        {"facts": {**facts, "triton": "3.8.0"}},
        {"facts": {**facts, "gpu": "NVIDIA H100 80GB HBM3"}},
        {"mode": "default"},
    ]
    keys = {cache_key(**{**base, **change}) for change in changed}
    assert key not in keys and len(keys) == len(changed)


def test_loading_a_float32_model_leaves_matmul_settings_it_does_not_need_to_change():
    """Writing allow_tf32=False over a fresh process's default still changes torch's float32 precision
    setting, which compiled models key on: a float32 load must not write it when it is already off.
    (A fresh process: this one's settings may have been written by other tests.)"""
    code = ("import torch; from rfpipe.backends.torch import set_tf32; m = torch.backends.cuda.matmul; "
            "before = getattr(m, 'fp32_precision', 'absent'); set_tf32(False); "
            "print(before, getattr(m, 'fp32_precision', 'absent'), m.allow_tf32, torch.backends.cudnn.allow_tf32); "
            "set_tf32(True); print(m.allow_tf32, torch.backends.cudnn.allow_tf32)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    first, second = done.stdout.split("\n")[:2]
    before, after, matmul, cudnn = first.split()
    assert before == after and (matmul, cudnn) == ("False", "False")
    assert second.split() == ["True", "True"]


def test_the_cache_directory_follows_the_float32_matmul_settings():
    """A float32 model loaded first sets allow_tf32, and inductor's cache then misses (seen on an H100:
    a 'warm' server compiled for 65 s): the directory, and so its warm marks, must differ too."""
    matmul = torch.backends.cuda.matmul
    precision, allowed = getattr(matmul, "fp32_precision", None), matmul.allow_tf32
    before = cache_facts(torch.device("cpu"))
    try:
        matmul.allow_tf32 = not allowed
        assert cache_facts(torch.device("cpu"))["matmul"] != before["matmul"]
    finally:
        matmul.allow_tf32 = allowed
        if precision is not None:
            matmul.fp32_precision = precision
    assert cache_facts(torch.device("cpu"))["matmul"] == before["matmul"]


def test_backend_options_are_checked_by_the_backend_and_named(packages):  # noqa: F811
    with pytest.raises(ValueError, match="onnx backend has no option dtype='float16'"):
        rfpipe.Detector.load(packages["stretch"], device="cpu", backend="onnx", dtype="float16")
    with pytest.raises(ValueError, match="onnx backend has no option compile='cudagraphs'"):
        rfpipe.Detector.load(packages["stretch"], device="cpu", backend="onnx", compile="cudagraphs")
    with pytest.raises(ValueError, match="onnx backend has no option colour"):
        rfpipe.Detector.load(packages["stretch"], device="cpu", backend="onnx", colour="rgb")
    # Neutral values are accepted by every backend (what `rfpipe serve` passes by default).
    detector = rfpipe.Detector.load(packages["stretch"], device="cpu", backend="onnx", compile="auto",
                                    dtype="float32", max_batch=16)
    assert detector.backend_name == "onnx"
    assert check_options("tensorrt", {"compile": "none"}, ()) == {}


def test_a_checkpoint_and_its_exported_package_have_one_config(packages, tmp_path):  # noqa: F811
    from rfpipe.backends.torch import checkpoint_info, read_checkpoint
    from rfpipe.detector import checkpoint_config, checkpoint_config_dict
    from rfpipe.export import export_checkpoint

    exported = export_checkpoint(packages["checkpoint"], tmp_path / "pkg", onnx=False)
    written = json.loads((exported / "inference_config.json").read_text())
    info = checkpoint_info(read_checkpoint(packages["checkpoint"]))
    assert written == checkpoint_config_dict(info.resolution, info.size_divisor)
    direct = checkpoint_config(info.resolution, info.size_divisor, info.class_names, "checkpoint")
    packaged = rfpipe.load_config(exported)
    # rfdetr's own predict(shape=...) takes sizes divisible by patch size x windows: both loads allow them.
    assert direct.dynamic_size_supported and packaged.dynamic_size_supported
    for field in ("training_size", "dynamic_size_mode", "dynamic_size_divisor", "normalization", "resize_mode",
                  "color_mode"):
        assert getattr(direct, field) == getattr(packaged, field), field
    assert list(direct.class_names) == list(packaged.class_names)


def test_the_buckets_flag_sets_the_largest_batch_and_is_checked():
    import argparse

    from rfpipe.arguments import add_model_options, backend_options

    parser = argparse.ArgumentParser()
    add_model_options(parser, compile_options=True)
    options = backend_options(parser.parse_args(["--compile", "auto", "--buckets", "8,1,32"]))
    assert options == {"compile": "auto", "max_batch": 32, "buckets": (1, 8, 32)}
    with pytest.raises(ValueError, match=r"the largest of --buckets \(32\) must be --max-batch \(64\)"):
        backend_options(parser.parse_args(["--compile", "auto", "--buckets", "1,32", "--max-batch", "64"]))
    with pytest.raises(ValueError, match="--buckets are the batch sizes of the compiled forward"):
        backend_options(parser.parse_args(["--buckets", "1,32"]))
