"""The CUDA path on a real GPU (skipped without one): exactness, streams, threads, the self-check.

The full real-size matrix is `benchmarks/gpu_matrix.py`; these are the behaviours a GPU run of
the test suite should pin.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from conftest import make_config, random_image

import rfpipe

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1", reason="needs a CUDA GPU"
)

from rfpipe.preprocess import cuda  # noqa: E402
from rfpipe.preprocess.cuda import runtime, selfcheck  # noqa: E402

CONFIGS = [
    dict(size=(560, 560)),
    dict(mode="letterbox", size=(448, 448), dataset=(640, 480), padding_value=114),
    dict(mode="center-crop", size=(384, 384), dataset=(640, 640), grayscale=True),
    dict(size=(320, 320), resize_filter="cv2-linear", static_crop=(5, 5, 95, 95)),
]


def _both(images, config, **kwargs):
    expected = rfpipe.preprocess(images, config, implementation="reference")
    actual = rfpipe.preprocess(images, config, device="cuda", implementation="cuda", **kwargs)
    return actual, expected


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_photos_and_gpu_tensors_equal_the_reference(photos, kwargs):
    config = make_config(**kwargs)
    images = list(photos.values())
    (batch, meta), (expected, expected_meta) = _both(images, config)
    assert batch.is_cuda and batch.is_contiguous() and torch.equal(batch.cpu(), expected)
    assert meta == expected_meta
    on_gpu = [torch.from_numpy(img).cuda() for img in images]
    (batch, _), _ = _both(on_gpu, config)
    assert torch.equal(batch.cpu(), expected)


def test_unsynchronized_result_is_ordered_on_the_callers_stream(photos):
    config = make_config(size=(560, 560))
    image = photos["rocket"]
    expected = rfpipe.preprocess(image, config, implementation="reference")[0]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        batch, _ = rfpipe.preprocess(image, config, device="cuda", implementation="cuda", synchronize=False)
        doubled = batch * 2  # queued on the caller's stream after the ready event
    stream.synchronize()
    assert torch.equal(doubled.cpu(), expected * 2)


def test_calls_inside_and_outside_inference_mode_share_the_runtime(photos):
    # The runtime's pinned ring and device buffers are made by whichever call comes first; the engine
    # calls inside inference mode, a user's script outside it. Both orders must work (seen failing).
    config = make_config(size=(384, 384))
    images = [photos["rocket"], photos["astronaut"]]
    expected = rfpipe.preprocess(images, config, implementation="reference")[0]
    for inside in (True, False, True, False):
        with torch.inference_mode(inside):
            batch, _ = rfpipe.preprocess(images, config, device="cuda", implementation="cuda")
        assert torch.equal(batch.cpu(), expected) and batch.is_inference() == inside


def test_outputs_never_alias_and_pinned_frames_upload_directly(photos):
    config = make_config(size=(256, 256))
    frames = [random_image(np.random.default_rng(s), 640, 480) for s in range(3)]
    pinned = cuda.pinned_frame(480, 640)
    pinned[:] = frames[0]
    outs = [rfpipe.preprocess(f, config, device="cuda", implementation="cuda", synchronize=False)[0]
            for f in [pinned, *frames[1:]]]
    torch.cuda.synchronize()
    for frame, out in zip(frames, outs, strict=True):
        assert torch.equal(out.cpu(), rfpipe.preprocess(frame, config, implementation="reference")[0])


def test_concurrent_callers_each_get_their_own_exact_outputs(photos):
    configs = [make_config(**kwargs) for kwargs in CONFIGS]
    images = list(photos.values())
    expected = [rfpipe.preprocess(images, c, implementation="reference")[0] for c in configs]
    failures = []

    def worker(i: int) -> None:
        with torch.cuda.stream(torch.cuda.Stream()):
            for _ in range(5):
                batch, _ = rfpipe.preprocess(images, configs[i], device="cuda", implementation="cuda")
                if not torch.equal(batch.cpu(), expected[i]):
                    failures.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_failed_self_check_disables_auto_and_makes_explicit_cuda_raise(monkeypatch, caplog):
    device = torch.device("cuda", torch.cuda.current_device())
    monkeypatch.setattr(runtime, "_runtimes", {})
    monkeypatch.setattr(runtime, "_failures", {})
    original = selfcheck._probe_expected

    def wrong(image, plan, color_format):
        expected = original(image, plan, color_format).copy()
        expected[0, 0, 0] ^= 1  # as if the installed library rounded one value differently
        return expected

    monkeypatch.setattr(selfcheck, "_probe_expected", wrong)
    assert cuda.available(device) is False
    assert "self-check probe" in caplog.text
    with pytest.raises(RuntimeError, match="self-check"):
        rfpipe.preprocess(random_image(np.random.default_rng(0), 64, 48), make_config(size=(32, 32)),
                          device=device, implementation="cuda")
