"""Batching through the engines: one forward for concurrent images, per-image overrides and confidence, isolation, limits."""

from __future__ import annotations

import asyncio
import base64
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import requests
from conftest import make_config, random_image
from server_support import FakeDetector, GatedDetector, live_server

from rfpipe.geometry import Overrides
from rfpipe.server import ServerSettings, create_app
from rfpipe.server.batching import Batcher, warmup_sizes
from rfpipe.server.metrics import Metrics

MODEL = "pets/3"


def strip_ids(predictions):
    return [{k: v for k, v in p.items() if k != "detection_id"} for p in predictions]


def as_json(detections):
    return strip_ids(detections.to_inference_json())


@pytest.fixture(scope="module")
def detector():
    return FakeDetector(make_config(size=(48, 40), grayscale=True, contrast="Contrast Stretching"))


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [random_image(rng, int(rng.integers(20, 90)), int(rng.integers(20, 90))) for _ in range(n)]


async def _submit(batcher: Batcher, frames, confidences, overrides=None):
    overrides = overrides or [Overrides()] * len(frames)
    batcher.admit(len(frames))
    futures = [batcher.submit(f, confidence=c, overrides=o) for f, o, c in zip(frames, overrides, confidences, strict=True)]
    return await asyncio.gather(*futures, return_exceptions=True)


def _started(detectors, **options) -> Batcher:
    batcher = Batcher(detectors, metrics=Metrics(), **{"max_wait_ms": 500.0, "capacity": 64, **options})
    batcher.start()
    assert batcher.wait_warm(30)
    for d in detectors:
        d.calls.clear()
    return batcher


def test_mixed_overrides_and_confidences_share_one_forward(detector):
    frames = _frames(6)
    overrides = [Overrides(), Overrides(disable_grayscale=True), Overrides(), Overrides(disable_contrast=True),
                 Overrides(disable_grayscale=True), Overrides()]
    confidences = [0.1, 0.3, 0.5, 0.1, 0.2, 0.3]
    batcher = _started([detector], max_batch=6)
    try:
        results = asyncio.run(_submit(batcher, frames, confidences, overrides))
    finally:
        batcher.stop()
    assert detector.calls == [6]  # one forward pass for all six
    for frame, ov, conf, got in zip(frames, overrides, confidences, results, strict=True):
        (alone,) = detector([frame], confidence=conf, overrides=ov)
        assert as_json(got) == as_json(alone)


def test_batcher_fills_batches_up_to_max_batch(detector):
    frames = _frames(20, seed=1)
    batcher = _started([detector], max_batch=8)
    try:
        results = asyncio.run(_submit(batcher, frames, [0.2] * 20))
    finally:
        batcher.stop()
    assert detector.calls == [8, 8, 4]
    assert batcher.admitted == 0  # every image gave its room back
    for frame, got in zip(frames, results, strict=True):
        (alone,) = detector([frame], confidence=0.2)
        assert as_json(got) == as_json(alone)


def test_fixed_policy_pads_every_batch_and_answers_do_not_change(detector):
    frames = _frames(11, seed=5)
    batcher = _started([detector], max_batch=4, batch_policy="fixed")
    try:
        results = asyncio.run(_submit(batcher, frames, [0.2] * 11))
    finally:
        batcher.stop()
    assert detector.calls == [4, 4, 4]  # 4 + 4 + 3 images, the last batch padded
    for frame, got in zip(frames, results, strict=True):
        (alone,) = detector([frame], confidence=0.2)
        assert as_json(got) == as_json(alone)


def test_warm_up_runs_every_batch_size_the_engine_will_run():
    assert warmup_sizes(object(), 16, "fixed") == [16]
    assert warmup_sizes(object(), 16, "dynamic") == [1, 16]

    class Bucketed:
        buckets = (1, 2, 4, 8, 16, 32)

    assert warmup_sizes(Bucketed(), 16, "dynamic") == [1, 2, 4, 8, 16]
    detector = FakeDetector(make_config())
    batcher = Batcher([detector], max_batch=4, max_wait_ms=200.0, capacity=8, metrics=Metrics(), batch_policy="dynamic")
    assert not batcher.ready
    batcher.start()
    try:
        assert batcher.wait_warm(30) and batcher.ready
    finally:
        batcher.stop()
    assert sorted(set(detector.calls)) == [1, 4]


def test_a_failing_image_does_not_fail_its_batch_neighbours():
    detector = FakeDetector(make_config())
    frames = _frames(5, seed=2)
    bad = np.full((30, 30, 3), 255, np.uint8)  # random_image frames start near 0, this one at 255
    batch, _ = detector.preprocess([bad])
    frames.insert(2, bad)
    batcher = _started([detector], max_batch=8)
    detector.fail_on_pixel = round(float(batch[0, 0, 0, 0]) * 1000)
    try:
        results = asyncio.run(_submit(batcher, frames, [0.2] * 6))
    finally:
        batcher.stop()
    assert isinstance(results[2], RuntimeError) and "injected" in str(results[2])
    assert detector.calls == [6, 1, 1, 1, 1, 1, 1]  # the batch, then each image alone
    detector.fail_on_pixel = None
    for i, frame in enumerate(frames):
        if i != 2:
            (alone,) = detector([frame], confidence=0.2)
            assert as_json(results[i]) == as_json(alone)



def _post(url, frame, **fields):
    data = base64.b64encode(cv2.imencode(".png", frame)[1].tobytes()).decode()
    return requests.post(f"{url}/infer/object_detection", timeout=30,
                         json={"model_id": MODEL, "image": {"type": "base64", "value": data}, **fields})


def test_full_queue_answers_503_with_retry_after_and_recovers():
    detector = GatedDetector(make_config())
    settings = ServerSettings(model_id=MODEL, max_batch=1, max_wait_ms=0, queue_size=3, request_timeout_s=30)
    frame = _frames(1)[0]
    with live_server(create_app([detector], settings)) as url, ThreadPoolExecutor(8) as pool:
        detector.armed = True
        busy = [pool.submit(_post, url, frame)]  # taken by the worker, which then blocks on the gate
        time.sleep(0.3)
        busy += [pool.submit(_post, url, frame) for _ in range(2)]  # 3 admitted: the one running and two queued
        time.sleep(0.3)
        refused = _post(url, frame)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error_type"] == "queue_full"
        detector.gate.set()
        assert [f.result().status_code for f in busy] == [200] * 3
        assert _post(url, frame).status_code == 200


def test_request_timeout_answers_504_and_the_server_recovers():
    detector = GatedDetector(make_config())
    settings = ServerSettings(model_id=MODEL, max_batch=4, max_wait_ms=0, request_timeout_s=0.3)
    frame = _frames(1)[0]
    with live_server(create_app([detector], settings)) as url:
        detector.armed = True
        slow = _post(url, frame)
        assert slow.status_code == 504 and slow.json()["error_type"] == "timeout"
        detector.gate.set()
        ok = _post(url, frame, confidence=0.2)
        assert ok.status_code == 200
        (alone,) = detector([frame], confidence=0.2)
        assert strip_ids(ok.json()["predictions"]) == as_json(alone)
        text = requests.get(f"{url}/metrics", timeout=5).text
        assert 'rfpipe_http_errors_total{error_type="timeout",route="/infer/object_detection",status="504"} 1.0' in text


def test_concurrent_requests_are_batched_over_http_and_answers_never_cross(detector):
    frames = _frames(24, seed=3)
    settings = ServerSettings(model_id=MODEL, max_batch=8, max_wait_ms=50)
    with live_server(create_app([detector], settings)) as url, ThreadPoolExecutor(24) as pool:
        detector.calls.clear()
        answers = list(pool.map(lambda f: _post(url, f, confidence=0.15), frames))
        assert max(detector.calls) > 1, detector.calls  # requests met in batches
        assert max(detector.calls) <= 8
    for frame, answer in zip(frames, answers, strict=True):
        assert answer.status_code == 200
        (alone,) = detector([frame], confidence=0.15)
        assert strip_ids(answer.json()["predictions"]) == as_json(alone)


def test_several_workers_share_the_queue():
    detectors = [FakeDetector(make_config()) for _ in range(2)]
    frames = _frames(16, seed=4)
    settings = ServerSettings(model_id=MODEL, max_batch=2, max_wait_ms=20)
    with live_server(create_app(detectors, settings)) as url, ThreadPoolExecutor(16) as pool:
        for d in detectors:
            d.calls.clear()
        answers = list(pool.map(lambda f: _post(url, f, confidence=0.15), frames))
        ready = requests.get(f"{url}/readyz", timeout=5).json()
    assert ready["workers"] == 2
    assert all(d.calls for d in detectors), [d.calls for d in detectors]  # both workers took batches
    for frame, answer in zip(frames, answers, strict=True):
        (alone,) = detectors[0]([frame], confidence=0.15)
        assert strip_ids(answer.json()["predictions"]) == as_json(alone)


class _BrokenAtStart(FakeDetector):
    def forward(self, batch):
        raise RuntimeError("weights are corrupt")


def test_a_worker_that_cannot_warm_up_is_not_ready():
    from fastapi.testclient import TestClient

    app = create_app([_BrokenAtStart(make_config())], ServerSettings(model_id=MODEL))
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "weights are corrupt" in r.json()["message"]
        frame = cv2.imencode(".png", _frames(1)[0])[1].tobytes()
        r = c.post("/infer/object_detection", json={"model_id": MODEL, "image": {
            "type": "base64", "value": base64.b64encode(frame).decode()}})
        assert r.status_code == 503 and r.json()["error_type"] == "not_ready"
        assert c.get("/healthz").status_code == 200
