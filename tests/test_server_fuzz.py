"""Fuzzing (hypothesis): arbitrary request bodies and mangled image bytes get 4xx or a valid result, never 5xx."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from conftest import make_config
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import FakeDetector

from rfpipe.server import ServerSettings, create_app

MODEL = "pets/3"
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client():
    app = create_app([FakeDetector(make_config(size=(32, 32)))],
                     ServerSettings(model_id=MODEL, max_body_bytes=1 << 20, max_pixels=250_000, max_wait_ms=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 30, 3), np.uint8)
    return [cv2.imencode(ext, image)[1].tobytes() for ext in (".jpg", ".png", ".bmp", ".webp", ".tiff")]


SEEDS = _seed_images()


@st.composite
def mangled_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "header"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(max_size=64))
        elif op == "header" and len(data) > 32:  # size fields live in the first bytes of every format
            i = draw(st.integers(0, 31))
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


def _check(response, images: int | None = None) -> None:
    assert response.status_code < 500, response.text
    payload = response.json()
    if response.status_code >= 400:
        assert payload["message"] and payload["error_type"] and payload["request_id"]
        return
    answers = payload if isinstance(payload, list) else [payload]
    if images is not None:
        assert len(answers) == images
    for answer in answers:
        assert answer["image"]["width"] > 0 and answer["image"]["height"] > 0
        for p in answer["predictions"]:
            assert set(p) == {"x", "y", "width", "height", "confidence", "class", "class_id", "detection_id"}


@FUZZ
@given(image=mangled_images(), confidence=st.floats(0, 1))
def test_mangled_image_bytes(client, image, confidence):
    value = base64.b64encode(image).decode()
    _check(client.post("/infer/object_detection",
                       json={"model_id": MODEL, "image": {"type": "base64", "value": value}, "confidence": confidence}), 1)
    _check(client.post(f"/{MODEL}", content=image))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(["model_id", "image", "confidence", "class_filter", "max_detections", "api_key",
                          "disable_preproc_auto_orient", "disable_preproc_contrast", "visualize_predictions",
                          "visualization_stroke_width", "type", "value"])
image_payloads = st.fixed_dictionaries({"type": st.sampled_from(["base64", "url", "numpy", "Base64", "x"]),
                                        "value": st.text(max_size=40) | st.just(base64.b64encode(SEEDS[1]).decode())})


@FUZZ
@given(body=st.dictionaries(fields, json_values | image_payloads | st.lists(image_payloads, max_size=3), max_size=6),
       keep_model=st.booleans())
def test_arbitrary_json_bodies(client, body, keep_model):
    if keep_model:
        body["model_id"] = MODEL
    _check(client.post("/infer/object_detection", json=body))


@FUZZ
@given(raw=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain",
                                                                  "multipart/form-data; boundary=x", ""]))
def test_arbitrary_raw_bodies(client, raw, content_type):
    headers = {"content-type": content_type} if content_type else {}
    _check(client.post("/infer/object_detection", content=raw, headers=headers))
    _check(client.post(f"/{MODEL}", content=raw, headers=headers))


def test_still_healthy_after_fuzzing(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    value = base64.b64encode(SEEDS[0]).decode()
    r = client.post("/infer/object_detection", json={"model_id": MODEL, "image": {"type": "base64", "value": value}})
    assert r.status_code == 200
    assert "rfpipe_http_requests_total" in client.get("/metrics").text
    assert 'status="500"' not in client.get("/metrics").text


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_in_raw_json(client, literal):
    # Python's JSON parser accepts these literals; they must still be 4xx, not a crash or a 200.
    value = base64.b64encode(SEEDS[0]).decode().encode()
    for field in (b"confidence", b"max_detections"):
        raw = (b'{"model_id": "pets/3", "image": {"type": "base64", "value": "' + value + b'"}, "'
               + field + b'": ' + literal + b"}")
        r = client.post("/infer/object_detection", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (field, literal, r.text)
