"""The Roboflow inference server with rfpipe inside answers a request as rfpipe's own server does.

The inference server (PyPI `inference` 1.8.3) pins packages that clash with rfpipe's test
environment, so it runs from a virtual environment of its own, named by
RFPIPE_INFERENCE_SERVER_PYTHON (its python); rfpipe runs there from this source tree. The test
starts it on loopback with `python -m rfpipe.integrations.inference_server`, serving the untrained
letterbox package offline, sends one request, and compares the answer with rfpipe's own server on
the same package and image.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest
import requests
from model_packages import packages  # noqa: F401
from server_support import free_socket, live_server, stop, wait_ready

import rfpipe
from rfpipe.server import ServerSettings, create_app

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 300  # importing the server and loading the model on two busy cores


def strip_ids(predictions):
    return [{k: v for k, v in p.items() if k != "detection_id"} for p in predictions]


@pytest.fixture(scope="module")
def server_python() -> str:
    python = os.environ.get("RFPIPE_INFERENCE_SERVER_PYTHON")
    if not python or not os.access(python, os.X_OK):
        pytest.skip("needs the inference server's own environment (RFPIPE_INFERENCE_SERVER_PYTHON; see docs/integrations.md)")
    return python


@pytest.fixture(scope="module")
def package(packages, tmp_path_factory):  # noqa: F811
    """The letterbox package with the model_config.json the inference server reads for a local package."""
    path = tmp_path_factory.mktemp("inference-server") / "letterbox"
    shutil.copytree(packages["letterbox"], path)
    (path / "model_config.json").write_text(
        json.dumps({"model_architecture": "rfdetr", "task_type": "object-detection", "backend_type": "onnx"})
    )
    return path


def request_body(model_id: str, image) -> dict:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return {"model_id": model_id, "image": {"type": "base64", "value": base64.b64encode(encoded.tobytes()).decode()},
            "confidence": 0.3}


def test_inference_server_with_rfpipe_inside_answers_as_rfpipe_server(server_python, package, photos, tmp_path):
    image = photos["rocket"]
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # the server binds it itself; loopback only
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ALLOW_INFERENCE_MODELS_DIRECTLY_ACCESS_LOCAL_PACKAGES": "True",
        "OFFLINE_MODE": "True",
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "ONNXRUNTIME_EXECUTION_PROVIDERS": "[CPUExecutionProvider]",
        "DISABLE_VERSION_CHECK": "True",
        "METRICS_ENABLED": "False",
        "TELEMETRY_OPT_OUT": "True",
    }
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [server_python, "-m", "rfpipe.integrations.inference_server", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, log, START_TIMEOUT_S, path="/info")  # the inference server has no /readyz
        response = requests.post(f"{url}/infer/object_detection", json=request_body(str(package), image), timeout=240)
        assert response.status_code == 200, response.text[:2000]
        theirs = response.json()
    finally:
        stop(process)
    text = log.read_text()
    assert "rfpipe.integrations.inference_models: installed" in text, text[-4000:]
    assert "rfpipe preprocesses inference-models' RF-DETR input (implementation=auto, device=cpu)" in text, text[-4000:]

    detector = rfpipe.Detector.load(package, device="cpu", backend="onnx")
    with live_server(create_app([detector], ServerSettings(model_id="letterbox/1", max_wait_ms=1))) as ours_url:
        ours = requests.post(f"{ours_url}/infer/object_detection", json=request_body("letterbox/1", image), timeout=120).json()
    assert theirs["image"] == ours["image"] == {"width": image.shape[1], "height": image.shape[0]}
    theirs, ours = strip_ids(theirs["predictions"]), strip_ids(ours["predictions"])
    assert len(theirs) > 0
    # Boxes, classes and order are equal. The confidences come from two ONNX Runtime builds (the
    # server pins onnxruntime<1.22; rfpipe's environment has 1.32), whose forward passes differ in
    # the last float32 bits; the test below checks the preprocessing inside that environment bit for bit.
    assert [{k: v for k, v in p.items() if k != "confidence"} for p in theirs] == [
        {k: v for k, v in p.items() if k != "confidence"} for p in ours]
    assert [p["confidence"] for p in theirs] == pytest.approx([p["confidence"] for p in ours], rel=1e-5, abs=0)


SAME_MODEL_CHECK = """
import sys, numpy as np, torch
from inference_models.models.rfdetr.rfdetr_object_detection_onnx import RFDetrForObjectDetectionONNX
from rfpipe.integrations import inference_models as integration
model = RFDetrForObjectDetectionONNX.from_pretrained(sys.argv[1], onnx_execution_providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8), rng.integers(0, 256, (211, 37, 3), dtype=np.uint8)]
theirs, theirs_meta = model.pre_process(images, input_color_format="bgr")
detections = model.infer(images, confidence=0.3)
assert integration.install(), "the self-check refused"
ours, ours_meta = model.pre_process(images, input_color_format="bgr")
ours_detections = model.infer(images, confidence=0.3)
integration.uninstall()
assert torch.equal(ours, theirs) and list(ours_meta) == list(theirs_meta), "pre_process differs"
for a, b in zip(detections, ours_detections):
    assert torch.equal(a.xyxy, b.xyxy) and torch.equal(a.confidence, b.confidence) and torch.equal(a.class_id, b.class_id)
import inference_models
print("identical with inference-models", inference_models.__version__, sum(len(d.class_id) for d in detections))
"""


def test_inference_models_of_the_server_environment_is_unchanged_by_rfpipe(server_python, package):
    """The server's own inference-models (1.8.3 pins 0.39.5) and ONNX Runtime, without and with rfpipe."""
    result = subprocess.run([server_python, "-c", SAME_MODEL_CHECK, str(package)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=START_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "identical with inference-models 0.39." in result.stdout
