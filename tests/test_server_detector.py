"""The server over the real `rfpipe.Detector` (untrained RF-DETR Nano packages): answers equal direct calls.

Concurrent requests with different images and options are batched together on the real network
and each answer must equal the detector's own answer for that image alone.
"""

from __future__ import annotations

import base64
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import requests
from model_packages import packages  # noqa: F401  (the fixture)
from server_support import live_server

import rfpipe
from rfpipe.server import ServerSettings, create_app

MODEL = "untrained-nano/1"


def _images(photos, count: int) -> list[np.ndarray]:
    names = sorted(photos)
    return [photos[names[i % len(names)]][10 * i: 10 * i + 120 + 7 * i, 5 * i: 5 * i + 160 - 3 * i].copy()
            for i in range(count)]


def _post(url: str, image: np.ndarray, **fields) -> requests.Response:
    data = base64.b64encode(cv2.imencode(".png", image)[1].tobytes()).decode()
    return requests.post(f"{url}/infer/object_detection", timeout=120,
                         json={"model_id": MODEL, "image": {"type": "base64", "value": data}, **fields})


def _strip(predictions: list[dict]) -> list[dict]:
    return [{k: v for k, v in p.items() if k != "detection_id"} for p in predictions]


def _same(got: list[dict], want: list[dict]) -> bool:
    """Equal detections up to the network's float noise across batch sizes.

    The backend's matrix kernels may sum in another order for another batch size (ONNX Runtime on
    this CPU: ~1e-7 on a score), so scores may differ in the last bits; classes, order and boxes must
    not, apart from a box edge that rounds the other way (1 px). An answer from another image differs
    in size, boxes and count, far beyond this.
    """
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if g["class"] != w["class"] or abs(g["confidence"] - w["confidence"]) > 1e-5:
            return False
        if any(abs(g[k] - w[k]) > 1 for k in ("x", "y", "width", "height")):
            return False
    return True


def _direct(detector, image, confidence, overrides=None) -> list[dict]:
    (d,) = detector([image], confidence=confidence, overrides=overrides)
    return _strip(d.to_inference_json())


def _mean_batch(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = float(re.search(r"^rfpipe_batch_size_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^rfpipe_batch_size_count (\S+)$", text, re.M).group(1))
    return total / count


def test_concurrent_requests_on_the_real_detector_equal_direct_calls(packages, photos):  # noqa: F811
    reference = rfpipe.Detector.load(packages["static-crop"], device="cpu")
    served = rfpipe.Detector.load(packages["static-crop"], device="cpu")
    images = _images(photos, 8)
    # half the clients switch the package's static crop off: both groups share each batch
    options = [{"confidence": 0.3 + 0.02 * i, "disable_preproc_static_crop": bool(i % 2)} for i in range(8)]
    expected = [_direct(reference, im, o["confidence"], rfpipe.Overrides(disable_static_crop=o["disable_preproc_static_crop"]))
                for im, o in zip(images, options, strict=True)]
    assert len({str(e) for e in expected}) == 8
    settings = ServerSettings(model_id=MODEL, max_batch=8, max_wait_ms=200)
    with live_server(create_app([served], settings)) as url:
        barrier = threading.Barrier(8)

        def client(i: int) -> requests.Response:
            barrier.wait()
            return _post(url, images[i], **options[i])

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(client, range(8)))
        mean_batch = _mean_batch(url)
    assert mean_batch > 1
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert _same(_strip(answer.json()["predictions"]), expected[i]), f"client {i}"


def test_inference_sdk_client_on_the_real_detector(packages, photos, tmp_path):  # noqa: F811
    sdk = pytest.importorskip("inference_sdk", reason="inference-sdk is not installed")
    reference = rfpipe.Detector.load(packages["letterbox"], device="cpu")
    path = tmp_path / "rocket.jpg"
    cv2.imwrite(str(path), photos["rocket"])
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    settings = ServerSettings(model_id=MODEL, max_wait_ms=1)
    with live_server(create_app([rfpipe.Detector.load(packages["letterbox"], device="cpu")], settings)) as url:
        client = sdk.InferenceHTTPClient(api_url=url, api_key="unused")
        result = client.infer(str(path), model_id=MODEL)
        models = client.list_loaded_models().models
    assert result["image"] == {"width": frame.shape[1], "height": frame.shape[0]}
    assert _same(_strip(result["predictions"]), _direct(reference, frame, 0.4))
    size = reference.config.training_size
    assert (models[0].input_width, models[0].input_height) == (size.width, size.height)
