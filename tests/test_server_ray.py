"""The Ray Serve deployment on a local single-node Ray bound to loopback (node IP 127.0.0.1, no dashboard).

Ray turns a node IP of 127.0.0.1 into the machine's outward address unless its laptop mode is on
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when ray is imported); with it, every Ray process
(GCS, raylet, agents, Serve proxy) listens and connects on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import requests
from conftest import make_config, random_image
from server_support import FakeDetector, free_socket

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback-only node
ray = pytest.importorskip("ray", reason="ray[serve] is not installed")
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
from ray._private import ray_constants  # noqa: E402

if ray_constants.ENABLE_RAY_CLUSTER:
    pytest.skip("ray was imported before its loopback-only mode could be set", allow_module_level=True)

MODEL = "pets/3"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(scope="module")
def deployment():
    from rfpipe.server.ray_serve import build_app

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": f"{ROOT}:{ROOT}/tests"}})
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = make_config(size=(48, 40))
        serve.run(build_app("unused", MODEL, loader=functools.partial(FakeDetector, config)), route_prefix="/")
        yield f"http://127.0.0.1:{port}", FakeDetector(config)
    finally:
        serve.shutdown()
        ray.shutdown()


def _post(url, images, **fields):
    payloads = [{"type": "base64", "value": base64.b64encode(cv2.imencode(".png", i)[1].tobytes()).decode()}
                for i in images]
    return requests.post(f"{url}/infer/object_detection", timeout=60,
                         json={"model_id": MODEL, "image": payloads[0] if len(payloads) == 1 else payloads, **fields})


def _strip(predictions):
    return [{k: v for k, v in p.items() if k != "detection_id"} for p in predictions]


def _direct(detector, frame, confidence):
    (d,) = detector([frame], confidence=confidence)
    return _strip(d.to_inference_json())


def test_ray_serve_answers_like_the_detector(deployment):
    url, detector = deployment
    rng = np.random.default_rng(0)
    frames = [random_image(rng, 40 + 9 * i, 70 - 5 * i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:  # concurrent: Serve batches them
        answers = list(pool.map(lambda f: _post(url, [f], confidence=0.2), frames))
    for frame, answer in zip(frames, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["image"] == {"width": frame.shape[1], "height": frame.shape[0]}
        assert _strip(answer.json()["predictions"]) == _direct(detector, frame, 0.2)
    listed = _post(url, frames[:3], confidence=0.2).json()
    assert [_strip(a["predictions"]) for a in listed] == [_direct(detector, f, 0.2) for f in frames[:3]]


def test_ray_serve_refuses_bad_requests_with_4xx(deployment):
    url, _ = deployment
    r = requests.post(f"{url}/infer/object_detection", timeout=30,
                      json={"model_id": MODEL, "image": {"type": "numpy", "value": "gASV"}})
    assert r.status_code == 400 and r.json()["error_type"] == "image_type_refused"
    r = requests.post(f"{url}/infer/object_detection", timeout=30,
                      json={"model_id": "other/1", "image": {"type": "base64", "value": "AAAA"}})
    assert r.status_code == 404
    r = requests.post(f"{url}/infer/object_detection", timeout=30, data=b"{broken")
    assert r.status_code == 400 and r.json()["error_type"] == "invalid_json"  # as on rfpipe serve
    r = _post(url, [np.zeros((20, 20, 3), np.uint8)] * 17)  # one over the default --max-images
    assert r.status_code == 413 and r.json()["error_type"] == "too_many_images"  # as on rfpipe serve
    r = requests.post(f"{url}/infer/object_detection", timeout=30, json={"model_id": MODEL, "image": []})
    assert r.status_code == 400 and r.json()["error_type"] == "no_images"
    assert _post(url, [np.zeros((20, 20, 3), np.uint8)]).status_code == 200
