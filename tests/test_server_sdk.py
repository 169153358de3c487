"""The unmodified inference-sdk client (`InferenceHTTPClient`) against a live rfpipe server on loopback."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import make_config
from server_support import FakeDetector, live_server

from rfpipe.server import ServerSettings, create_app

inference_sdk = pytest.importorskip("inference_sdk", reason="inference-sdk is not installed")
from inference_sdk import InferenceConfiguration, InferenceHTTPClient  # noqa: E402
from inference_sdk.http.errors import HTTPCallErrorError  # noqa: E402

MODEL = "pets/3"


def strip_ids(predictions):
    return [{k: v for k, v in p.items() if k != "detection_id"} for p in predictions]


@pytest.fixture(scope="module")
def detector():
    return FakeDetector(make_config(size=(48, 40)))


@pytest.fixture(scope="module")
def server(detector):
    with live_server(create_app([detector], ServerSettings(model_id=MODEL, max_wait_ms=2))) as url:
        yield url


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory, small_photos):
    path = tmp_path_factory.mktemp("sdk") / "chelsea.png"
    cv2.imwrite(str(path), small_photos["chelsea"])
    return path


def _expected(detector, frame, confidence=0.4):
    (d,) = detector([frame], confidence=confidence)
    return strip_ids(d.to_inference_json())


def test_server_info_reads_past_the_process_fields(server):
    info = InferenceHTTPClient(api_url=server, api_key="any-key").get_server_info()
    assert (info.name, info.uuid) == ("rfpipe", MODEL)


def test_v1_infer_from_a_path(server, detector, photo_path):
    client = InferenceHTTPClient(api_url=server, api_key="any-key")
    result = client.infer(str(photo_path), model_id=MODEL)
    frame = cv2.imread(str(photo_path), cv2.IMREAD_COLOR)
    assert result["image"] == {"width": frame.shape[1], "height": frame.shape[0]}
    assert strip_ids(result["predictions"]) == _expected(detector, frame)


def test_v1_infer_from_an_array_and_a_list_with_options(server, detector, small_photos):
    client = InferenceHTTPClient(api_url=server, api_key="any-key")
    client.configure(InferenceConfiguration(confidence_threshold=0.1, max_batch_size=2))
    frames = [small_photos[n] for n in ("astronaut", "coffee", "rocket")]
    results = client.infer(frames, model_id=MODEL)
    assert isinstance(results, list) and len(results) == 3
    for frame, result in zip(frames, results, strict=True):
        # the client sends arrays as JPEG: the server sees what libjpeg decodes
        sent = cv2.imdecode(cv2.imencode(".jpg", frame)[1], cv2.IMREAD_COLOR)
        assert strip_ids(result["predictions"]) == _expected(detector, sent, 0.1)
        assert all(p["confidence"] > 0.1 for p in result["predictions"])


def test_v1_registry_lookup_and_unknown_model(server):
    client = InferenceHTTPClient(api_url=server, api_key="any-key")
    models = client.list_loaded_models()
    assert [m.model_id for m in models.models] == [MODEL]
    assert models.models[0].task_type == "object-detection"
    with pytest.raises(HTTPCallErrorError) as info:
        client.infer(np.zeros((32, 32, 3), np.uint8), model_id="someone-else/1")
    assert info.value.status_code == 404
    assert "this server serves 'pets/3'" in info.value.api_message


def test_v0_legacy_route(server, detector, photo_path):
    client = InferenceHTTPClient(api_url=server, api_key="any-key").select_api_v0()
    client.configure(InferenceConfiguration(confidence_threshold=0.2))
    result = client.infer(str(photo_path), model_id=MODEL)
    frame = cv2.imread(str(photo_path), cv2.IMREAD_COLOR)
    assert strip_ids(result["predictions"]) == _expected(detector, frame, 0.2)


def test_server_errors_reach_the_caller_by_message(server):
    client = InferenceHTTPClient(api_url=server, api_key="any-key")
    with pytest.raises(HTTPCallErrorError) as info:
        client.infer("aGVsbG8=", model_id=MODEL)  # base64 text of "hello"
    assert info.value.status_code == 415
    assert "unsupported image format" in info.value.api_message
