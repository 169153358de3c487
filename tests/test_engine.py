"""The engine and `Detector.stream` on the untrained RF-DETR Nano (ONNX on the CPU): answers equal
per-image `Detector` calls, in order, whatever the batch; bad items get their own error."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from model_packages import packages  # noqa: F401  (the fixture)

import rfpipe
from rfpipe.engine import Engine, EngineClosed, ItemError, QueueFull


@pytest.fixture(scope="module")
def detector(packages):  # noqa: F811
    return rfpipe.Detector.load(packages["letterbox"], device="cpu", backend="onnx")


def _frames(photos, count: int) -> list[np.ndarray]:
    names = sorted(photos)
    return [photos[names[i % len(names)]][7 * i: 7 * i + 90 + 11 * i, 3 * i: 3 * i + 120 + 5 * i].copy()
            for i in range(count)]


def _gated(detector) -> tuple[threading.Event, object]:
    """A gate, and a stand-in for `detector` whose forward waits at the gate (up to 60 s)."""
    gate = threading.Event()

    def forward(batch):
        gate.wait(60)
        return detector.forward(batch)

    return gate, type("Gated", (), {"preprocess": detector.preprocess, "forward": staticmethod(forward),
                                    "postprocess": detector.postprocess})()


def _same(a: rfpipe.Detections, b: rfpipe.Detections) -> bool:
    # ONNX Runtime's kernels may sum in another order at another batch size (~1e-7 on a score).
    return (np.array_equal(a.class_id, b.class_id) and np.allclose(a.confidence, b.confidence, atol=1e-5)
            and np.abs(a.xyxy.astype(int) - b.xyxy.astype(int)).max(initial=0) <= 1)


def test_stream_equals_per_image_calls_in_order_with_mixed_sizes_overrides_and_confidences(detector, photos):
    frames = _frames(photos, 7)
    confidences = [0.3, 0.5, 0.3, 0.45, 0.3, 0.6, 0.35]
    engine = Engine(detector, max_batch=4, max_wait_ms=50)
    try:
        futures = [engine.submit(f, confidence=c, overrides=rfpipe.Overrides(disable_static_crop=i % 2 == 0))
                   for i, (f, c) in enumerate(zip(frames, confidences, strict=True))]
        got = [f.result(timeout=120) for f in futures]
    finally:
        engine.close()
    for i, (frame, confidence) in enumerate(zip(frames, confidences, strict=True)):
        want = detector(frame, confidence=confidence, overrides=rfpipe.Overrides(disable_static_crop=i % 2 == 0))[0]
        assert _same(got[i], want), i
    streamed = list(detector.stream(frames, confidence=0.3, max_batch=3))
    assert len(streamed) == len(frames)
    for frame, result in zip(frames, streamed, strict=True):
        assert _same(result, detector(frame, confidence=0.3)[0])


def test_encoded_bytes_are_decoded_like_the_reference_decoder(detector, photos):
    frames = _frames(photos, 3)
    encoded = [cv2.imencode(".png", f)[1].tobytes() for f in frames]
    for frame, result in zip(frames, detector.stream(encoded, confidence=0.3), strict=True):
        assert _same(result, detector(frame, confidence=0.3)[0])


def test_a_corrupt_item_yields_its_error_and_the_rest_still_arrive(detector, photos):
    frames = _frames(photos, 4)
    items = [frames[0], b"not an image", frames[1], np.zeros((0, 5, 3), np.uint8), frames[2]]
    results = list(detector.stream(items, confidence=0.3, max_batch=8, max_wait_ms=50))
    assert [isinstance(r, ItemError) for r in results] == [False, True, False, True, False]
    assert results[1].index == 1 and "item 1" in str(results[1])
    assert results[3].index == 3
    for frame, result in zip([frames[0], frames[1], frames[2]], [results[0], results[2], results[4]], strict=True):
        assert _same(result, detector(frame, confidence=0.3)[0])
    with pytest.raises(ItemError, match="item 1"):
        list(detector.stream(items[:2], errors="raise"))


def test_fixed_batches_pad_to_one_size_and_the_padding_never_reaches_results(detector, photos):
    frames = _frames(photos, 3)
    seen = []
    original = detector.forward

    def recording(batch):
        seen.append(batch.shape[0])
        return original(batch)

    engine = Engine(detector, max_batch=4, max_wait_ms=1, batch_policy="fixed")
    engine.detector = type("Spy", (), {"preprocess": detector.preprocess, "forward": staticmethod(recording),
                                       "postprocess": detector.postprocess})()
    try:
        results = [engine.submit(f, confidence=0.3).result(timeout=120) for f in frames]
    finally:
        engine.close()
    assert seen and set(seen) == {4}
    assert len(results) == 3
    for frame, result in zip(frames, results, strict=True):
        assert _same(result, detector(frame, confidence=0.3)[0])


def test_the_queue_is_bounded_and_close_drains_what_was_accepted(detector, photos):
    engine = Engine(detector, max_batch=1, max_wait_ms=0, queue_size=2)
    gate, engine.detector = _gated(detector)
    frames = _frames(photos, 3)
    accepted = [engine.submit(frames[0]), engine.submit(frames[1])]
    with pytest.raises(QueueFull):
        engine.submit(frames[2], block=False)
    with pytest.raises(QueueFull):
        engine.submit(frames[2], timeout=0.05)
    gate.set()
    engine.close(drain=True, timeout=120)
    assert all(f.done() and f.exception() is None for f in accepted)
    with pytest.raises(EngineClosed):
        engine.submit(frames[2])
    time.sleep(0.01)
    assert not engine.alive


def test_engine_options_are_checked(detector):
    for bad in ({"max_batch": 0}, {"batch_policy": "static"}, {"max_wait_ms": -1}, {"queue_size": 2, "max_batch": 4},
                {"inflight": 0}, {"gpu_decode": True}):
        with pytest.raises(ValueError):
            Engine(detector, **bad)


def test_stream_on_torch_eager_equals_per_image_calls_with_mixed_sizes_overrides_and_confidences(packages, photos):  # noqa: F811
    detector = rfpipe.Detector.load(packages["static-crop"], device="cpu", backend="torch", compile="auto")
    assert detector.backend.compile_mode == "none"  # no CUDA here: eager, whatever was asked
    frames = _frames(photos, 5)
    confidences = [0.3, 0.5, {"car": 0.2}, 0.45, 0.3]
    overrides = [rfpipe.Overrides(disable_static_crop=i % 2 == 0) for i in range(len(frames))]
    engine = Engine(detector, max_batch=4, max_wait_ms=50)
    try:
        futures = [engine.submit(f, confidence=c, overrides=o)
                   for f, c, o in zip(frames, confidences, overrides, strict=True)]
        got = [f.result(timeout=300) for f in futures]
    finally:
        engine.close()
    for frame, confidence, override, result in zip(frames, confidences, overrides, got, strict=True):
        assert _same(result, detector(frame, confidence=confidence, overrides=override)[0])
    streamed = list(detector.stream(frames, confidence=0.3, max_batch=2))
    for frame, result in zip(frames, streamed, strict=True):
        assert _same(result, detector(frame, confidence=0.3)[0])


def test_post_processing_runs_beside_the_next_batch_and_a_failure_there_fails_only_its_images(detector, photos):
    frames = _frames(photos, 4)
    calls = []
    original = detector.postprocess

    def flaky(logits, boxes, metadata, **options):
        calls.append(len(metadata))
        if len(metadata) > 1:
            raise RuntimeError("post-processing failed for the batch")
        return original(logits, boxes, metadata, **options)

    engine = Engine(detector, max_batch=4, max_wait_ms=50, inflight=1)
    engine.detector = type("Flaky", (), {"preprocess": detector.preprocess, "forward": detector.forward,
                                         "postprocess": staticmethod(flaky), "device": detector.device})()
    try:
        results = [f.result(timeout=120) for f in [engine.submit(f, confidence=0.3) for f in frames]]
    finally:
        engine.close()
    assert max(calls) > 1 and calls.count(1) >= len(frames)  # the batch failed, then each image alone
    for frame, result in zip(frames, results, strict=True):
        assert _same(result, detector(frame, confidence=0.3)[0])


def test_gpu_decode_decodes_each_batch_on_its_own_thread_while_the_batch_before_runs(detector, photos, monkeypatch):
    # The device decoder here is torchvision's JPEG decoder on the CPU (the same batched call the engine
    # makes with nvJPEG on a GPU); the engine only needs a detector on a CUDA device to allow gpu_decode.
    import torch

    from rfpipe.io import pool

    jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in _frames(photos, 6)]
    events = []
    real_decode = pool.decode_batch_on_device

    def recording_decode(items, device, **options):
        start = time.monotonic()
        time.sleep(0.2)
        frames = real_decode(items, device, **options)
        events.append(("decode", threading.current_thread().name, start, time.monotonic()))
        return frames

    def slow_forward(batch):
        start = time.monotonic()
        time.sleep(0.2)
        out = detector.forward(batch)
        events.append(("forward", threading.current_thread().name, start, time.monotonic()))
        return out

    monkeypatch.setattr(pool, "decode_batch_on_device", recording_decode)
    on_cuda = type("OnCuda", (), {"preprocess": detector.preprocess, "forward": staticmethod(slow_forward),
                                  "postprocess": detector.postprocess, "device": torch.device("cuda")})()
    engine = Engine(on_cuda, max_batch=2, max_wait_ms=20, gpu_decode=True, pin_frames=False)
    engine.decode_device = torch.device("cpu")
    try:
        futures = [engine.submit(data, confidence=0.3) for data in jpegs]
        results = [f.result(timeout=120) for f in futures]
    finally:
        engine.close()
    decodes = [e for e in events if e[0] == "decode"]
    forwards = [e for e in events if e[0] == "forward"]
    assert {e[1] for e in decodes} == {"rfpipe-engine-decode"} and {e[1] for e in forwards} == {"rfpipe-engine"}
    assert len(decodes) >= 2
    # some batch was decoding while another one's forward ran: the stages overlap
    assert any(d[2] < f[3] and f[2] < d[3] for d in decodes for f in forwards)
    for data, result in zip(jpegs, results, strict=True):
        frame = real_decode([data], "cpu")[0]
        assert isinstance(frame, torch.Tensor)
        assert _same(result, detector(frame, confidence=0.3)[0])


def test_a_device_decoder_failure_fails_its_encoded_images_only_and_the_engine_keeps_running(detector, photos,
                                                                                              monkeypatch):
    import torch

    from rfpipe.io import pool

    frames = _frames(photos, 3)
    jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames[1:]]
    real_decode = pool.decode_batch_on_device
    calls = []

    def failing_once(items, device, **options):
        calls.append(len(items))
        if len(calls) == 1:
            raise MemoryError("the decoder ran out of memory")
        return real_decode(items, device, **options)

    monkeypatch.setattr(pool, "decode_batch_on_device", failing_once)
    on_cuda = type("OnCuda", (), {"preprocess": detector.preprocess, "forward": detector.forward,
                                  "postprocess": detector.postprocess, "device": torch.device("cuda")})()
    engine = Engine(on_cuda, max_batch=2, max_wait_ms=2000, gpu_decode=True, pin_frames=False)
    engine.decode_device = torch.device("cpu")
    try:
        ready, encoded = engine.submit(frames[0], confidence=0.3), engine.submit(jpegs[0])  # one batch of two
        assert _same(ready.result(timeout=120), detector(frames[0], confidence=0.3)[0])
        with pytest.raises(MemoryError, match="out of memory"):
            encoded.result(timeout=120)
        assert calls == [1]
        later = engine.submit(jpegs[1], confidence=0.3)
        time.sleep(0.05)
        engine.submit(frames[2])  # completes the second batch
        assert isinstance(later.result(timeout=120), rfpipe.Detections)
        assert engine.alive
    finally:
        engine.close()


def test_a_detector_that_answers_the_wrong_number_of_images_fails_them_and_the_engine_survives(detector, photos):
    def one_short(logits, boxes, metadata, **options):
        return detector.postprocess(logits, boxes, metadata, **options)[:-1]

    engine = Engine(detector, max_batch=2, max_wait_ms=200)
    engine.detector = type("OneShort", (), {"preprocess": detector.preprocess, "forward": detector.forward,
                                            "postprocess": staticmethod(one_short)})()
    frames = _frames(photos, 2)
    try:
        futures = [engine.submit(f) for f in frames]
        for future in futures:
            with pytest.raises(RuntimeError, match="answered 0 images for a batch of 1"):
                future.result(timeout=120)
        assert engine.alive
    finally:
        engine.close(timeout=60)
    assert not engine.alive


def test_leaving_a_stream_of_encoded_images_early_closes_the_engine(detector):
    # Decodes still running when the stream is closed must not deadlock the engine's close.
    rng = np.random.default_rng(0)
    pngs = [cv2.imencode(".png", (rng.random((2400, 2400, 3)) * 255).astype(np.uint8))[1].tobytes() for _ in range(4)]
    closed = threading.Event()

    def consume():
        for _ in detector.stream(pngs * 8, confidence=0.3, max_batch=8):
            break  # the generator's close() closes the engine with decodes in flight
        closed.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert closed.wait(60), "the stream's engine did not close"


def test_mean_batch_counts_the_images_of_the_batches_launched(detector, photos):
    engine = Engine(detector, max_batch=4, max_wait_ms=1, inflight=1)
    gate, engine.detector = _gated(detector)
    frames = _frames(photos, 9)
    try:
        assert engine.mean_batch == 0.0
        first = engine.submit(frames[0])  # launched alone; its forward waits at the gate
        deadline = time.monotonic() + 30
        while engine.batches < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        rest = [engine.submit(f) for f in frames[1:]]  # the other 8 queue behind it: two batches of 4
        gate.set()
        for future in [first, *rest]:
            future.result(timeout=120)
    finally:
        gate.set()
        engine.close()
    assert (engine.batches, engine.batched_items, engine.mean_batch) == (3, 9, 3.0)
