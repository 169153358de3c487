"""The HTTP API: response shapes equal the detector's own answers, options are honoured, hostile requests get 4xx."""

from __future__ import annotations

import base64
import logging
import os
import pickle
import struct
import zlib

import cv2
import numpy as np
import pytest
from conftest import jpeg_with_orientation, make_config
from fastapi.testclient import TestClient
from server_support import FakeDetector

import rfpipe
from rfpipe.io.gpu import decode_jpeg_on_device
from rfpipe.server import ServerSettings, create_app

MODEL = "pets/3"


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body(*images: bytes, **fields) -> dict:
    payloads = [{"type": "base64", "value": b64(i)} for i in images]
    return {"model_id": MODEL, "image": payloads[0] if len(payloads) == 1 else payloads, **fields}


def strip_ids(predictions: list[dict]) -> list[dict]:
    return [{k: v for k, v in p.items() if k != "detection_id"} for p in predictions]


def expected(detector, frame, confidence=0.4, overrides=None) -> list[dict]:
    (detections,) = detector([frame], confidence=confidence, overrides=overrides)
    return strip_ids(detections.to_inference_json())


@pytest.fixture(scope="module")
def detector():
    # grayscale and a static crop in the package, so the disable_preproc_* overrides change the answer
    return FakeDetector(make_config(size=(48, 40), grayscale=True, static_crop=(10, 5, 90, 95)))


@pytest.fixture(scope="module")
def client(detector):
    settings = ServerSettings(model_id=MODEL, max_body_bytes=4 << 20, max_images=4, max_pixels=2_000_000,
                              max_wait_ms=1.0)
    with TestClient(create_app([detector], settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def frames(small_photos):
    return {name: img[: 60 + 10 * i, : 90 - 5 * i].copy() for i, (name, img) in enumerate(sorted(small_photos.items()))}


def test_single_image_answer_is_the_detectors_answer(client, detector, frames):
    frame = frames["chelsea"]
    r = client.post("/infer/object_detection", json=body(encode(frame), confidence=0.2))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["image"] == {"width": frame.shape[1], "height": frame.shape[0]}
    assert out["inference_id"] == r.headers["x-request-id"]
    assert out["visualization"] is None and out["time"] > 0
    assert out["predictions"], "the fake detector should find something at confidence 0.2"
    assert strip_ids(out["predictions"]) == expected(detector, frame, 0.2)
    assert len({p["detection_id"] for p in out["predictions"]}) == len(out["predictions"])


def test_image_list_answers_a_list_in_order(client, detector, frames):
    names = ["astronaut", "coffee", "rocket"]
    r = client.post("/infer/object_detection", json=body(*(encode(frames[n]) for n in names), confidence=0.1))
    assert r.status_code == 200, r.text
    answers = r.json()
    assert isinstance(answers, list) and len(answers) == 3
    for name, answer in zip(names, answers, strict=True):
        assert strip_ids(answer["predictions"]) == expected(detector, frames[name], 0.1)


def test_all_encodings_and_data_uri_prefix(client, detector, frames):
    frame = frames["coffee"]
    want = expected(detector, frame, 0.1)
    for ext in (".png", ".bmp", ".tiff", ".webp", ".jpg"):
        data = encode(frame, ext)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        r = client.post("/infer/object_detection", json=body(data, confidence=0.1))
        assert r.status_code == 200, (ext, r.text)
        assert strip_ids(r.json()["predictions"]) == expected(detector, decoded, 0.1), ext
    text = "data:image/png;base64," + b64(encode(frame))[:40] + "\n " + b64(encode(frame))[40:]
    r = client.post("/infer/object_detection", json={"model_id": MODEL, "image": {"type": "base64", "value": text},
                                                     "confidence": 0.1})
    assert r.status_code == 200, r.text
    assert strip_ids(r.json()["predictions"]) == want


def test_confidence_class_filter_and_max_detections(client, frames):
    data = encode(frames["rocket"])
    full = client.post("/infer/object_detection", json=body(data, confidence=0.05)).json()["predictions"]
    assert len(full) >= 3
    strict = client.post("/infer/object_detection", json=body(data, confidence=0.6)).json()["predictions"]
    assert strip_ids(strict) == [p for p in strip_ids(full) if p["confidence"] > 0.6]
    only = client.post("/infer/object_detection", json=body(data, confidence=0.05, class_filter=["dog"])).json()
    assert strip_ids(only["predictions"]) == [p for p in strip_ids(full) if p["class"] == "dog"]
    top2 = client.post("/infer/object_detection", json=body(data, confidence=0.05, max_detections=2)).json()
    assert strip_ids(top2["predictions"]) == strip_ids(full)[:2]


def test_preprocessing_overrides_reach_the_detector(client, detector, frames):
    frame = frames["astronaut"]
    flags = {"disable_preproc_grayscale": True, "disable_preproc_static_crop": True}
    r = client.post("/infer/object_detection", json=body(encode(frame), confidence=0.1, **flags))
    assert r.status_code == 200
    want = expected(detector, frame, 0.1, rfpipe.Overrides(disable_static_crop=True, disable_grayscale=True))
    assert strip_ids(r.json()["predictions"]) == want
    assert want != expected(detector, frame, 0.1)


def test_auto_orient_follows_exif_unless_disabled(client, detector, frames):
    frame = frames["chelsea"]
    data = jpeg_with_orientation(frame, 6)
    upright = client.post("/infer/object_detection", json=body(data)).json()
    raw = client.post("/infer/object_detection", json=body(data, disable_preproc_auto_orient=True)).json()
    assert upright["image"] == {"width": frame.shape[0], "height": frame.shape[1]}
    assert raw["image"] == {"width": frame.shape[1], "height": frame.shape[0]}


def test_visualization_is_a_jpeg_of_the_image(client, frames):
    frame = frames["coffee"]
    r = client.post("/infer/object_detection", json=body(encode(frame), confidence=0.1, visualize_predictions=True))
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(r.json()["visualization"]), np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == frame.shape


def test_legacy_route_accepts_base64_raw_and_multipart(client, detector, frames):
    frame = frames["rocket"]
    data = encode(frame)
    want = expected(detector, frame, 0.15)
    for kwargs in ({"content": b64(data)}, {"content": data},
                   {"files": {"file": ("x.png", data, "image/png")}}):
        r = client.post(f"/{MODEL}", params={"confidence": 0.15, "api_key": "k"}, **kwargs)
        assert r.status_code == 200, r.text
        assert strip_ids(r.json()["predictions"]) == want
    r = client.post(f"/{MODEL}", params={"format": "image"}, content=b64(data))
    assert r.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == frame.shape


def test_model_registry_and_add(client):
    registry = client.get("/model/registry").json()
    assert registry == {"models": [{"model_id": MODEL, "task_type": "object-detection", "batch_size": 8,
                                    "input_height": 40, "input_width": 48}]}
    assert client.post("/model/add", json={"model_id": MODEL, "api_key": None}).json() == registry
    r = client.post("/model/add", json={"model_id": "other/1"})
    assert r.status_code == 404 and "this server serves 'pets/3'" in r.json()["message"]


def test_health_ready_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/infer/object_detection", "/{dataset_id}/{version_id}", "/model/registry", "/metrics"} <= set(paths)


def test_info_names_the_answering_process_and_its_devices(client):
    info = client.get("/info").json()
    assert info == {"name": "rfpipe", "version": rfpipe.__version__, "uuid": MODEL, "pid": os.getpid(),
                    "devices": ["cpu"]}


def _bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG declaring width x height with no pixel data: IHDR, an empty IDAT, IEND."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


_PICKLE_MARKER = "/tmp/rfpipe-test-pickle-was-executed"

HOSTILE = [
    # (name, request kwargs, status, error_type, words the message must contain)
    ("invalid json", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "invalid_json", "JSON"),
    ("json not an object", {"json": [1, 2]}, 422, "invalid_parameters", "body"),
    ("missing model id", {"json": {"image": {"type": "base64", "value": "AAAA"}}}, 422, "invalid_parameters", "model_id"),
    ("unknown model", {"json": {"model_id": "x/1", "image": {"type": "base64", "value": "AAAA"}}}, 404, "unknown_model", "x/1"),
    ("numpy pickle", {"json": {"model_id": MODEL, "image": {"type": "numpy", "value": b64(
        b"c__builtin__\nopen\n(S'" + _PICKLE_MARKER.encode() + b"'\nS'w'\ntR.")}}}, 400, "image_type_refused", "pickle"),
    ("numpy pickle of an array", {"json": {"model_id": MODEL, "image": {"type": "numpy", "value": b64(
        pickle.dumps(np.zeros((4, 4, 3), np.uint8)))}}}, 400, "image_type_refused", "numpy"),
    ("unknown image type", {"json": {"model_id": MODEL, "image": {"type": "gif", "value": "AAAA"}}}, 400,
     "unknown_image_type", "gif"),
    ("url when disabled", {"json": {"model_id": MODEL, "image": {"type": "url", "value": "https://example.com/a.jpg"}}},
     400, "url_input_disabled", "--allow-url-input"),
    ("file path", {"json": {"model_id": MODEL, "image": {"type": "file", "value": "/etc/passwd"}}}, 400,
     "image_type_refused", "file"),
    ("invalid base64", {"json": {"model_id": MODEL, "image": {"type": "base64", "value": "@@@@"}}}, 400,
     "invalid_base64", "base64"),
    ("non-ascii base64", {"json": {"model_id": MODEL, "image": {"type": "base64", "value": "ÿÿÿÿ"}}}, 400,
     "invalid_base64", "non-ASCII"),
    ("empty image", {"json": {"model_id": MODEL, "image": {"type": "base64", "value": ""}}}, 400, "empty_image", "empty"),
    ("not an image", {"json": body(b"hello world, not an image")}, 415, "unsupported_image_format", "unsupported"),
    ("gif", {"json": body(b"GIF89a" + b"\x00" * 30)}, 415, "unsupported_image_format", "JPEG, PNG"),
    ("truncated png", {"json": body(encode(np.full((50, 50, 3), 7, np.uint8))[:60])}, 400, "corrupt_image", "truncated"),
    ("zero-size png", {"json": body(_bomb_png(0, 0))}, 400,
     "empty_image", "zero-size"),
    ("decompression bomb", {"json": body(_bomb_png())}, 413, "image_too_large", "50000x50000"),
    ("too many images", {"json": body(*([b"x"] * 5))}, 413, "too_many_images", "limit is 4"),
    ("empty image list", {"json": {"model_id": MODEL, "image": []}}, 400, "no_images", "empty"),
    ("confidence out of range", {"json": {"model_id": MODEL, "image": {"type": "base64", "value": "AA=="},
                                          "confidence": 1.5}}, 422, "invalid_parameters", "confidence"),
    ("confidence not a number", {"json": {"model_id": MODEL, "image": {"type": "base64", "value": "AA=="},
                                          "confidence": "high"}}, 422, "invalid_parameters", "confidence"),
    ("image value not a string", {"json": {"model_id": MODEL, "image": {"type": "base64", "value": 12}}}, 422,
     "invalid_parameters", "image"),
    ("body over the limit", {"content": b"x" * (5 << 20), "headers": {"content-type": "application/json"}}, 413,
     "body_too_large", "limit"),
    ("text body", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 422, "invalid_parameters", "body"),
]


@pytest.mark.parametrize("name,kwargs,status,error_type,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_requests_get_a_json_4xx_naming_the_problem(client, name, kwargs, status, error_type, words):
    r = client.post("/infer/object_detection", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()
    assert error["error_type"] == error_type
    assert words in error["message"]
    assert error["request_id"] == r.headers["x-request-id"]


def test_pickles_are_never_unpickled():
    assert not os.path.exists(_PICKLE_MARKER)


def test_streamed_body_over_the_limit_is_refused(client):
    def chunks():
        for _ in range(6):
            yield b"x" * (1 << 20)

    r = client.post("/infer/object_detection", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error_type"] == "body_too_large"


LEGACY_HOSTILE = [
    ("empty body", {}, 400, "no_images"),
    ("multipart without file", {"files": {"other": ("a", b"x")}}, 400, "no_images"),
    ("bad format", {"params": {"format": "xml"}, "content": b"AAAA"}, 400, "invalid_parameters"),
    ("unknown model", {"url": "/other/2", "content": b"AAAA"}, 404, "unknown_model"),
    ("garbage body", {"content": b"\x00\x01\x02garbage"}, 400, "invalid_base64"),
    ("bad confidence", {"params": {"confidence": "x"}, "content": b"AAAA"}, 422, "invalid_parameters"),
]


@pytest.mark.parametrize("name,kwargs,status,error_type", LEGACY_HOSTILE, ids=[h[0] for h in LEGACY_HOSTILE])
def test_hostile_legacy_requests(client, name, kwargs, status, error_type):
    url = kwargs.pop("url", f"/{MODEL}")
    r = client.post(url, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error_type"] == error_type


def test_unknown_routes_and_methods_answer_json(client):
    r = client.get("/nothing/here/at/all")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"
    r = client.get("/infer/object_detection")
    assert r.status_code == 405 and r.json()["error_type"] == "method_not_allowed"


def test_server_still_serves_after_hostile_requests(client, detector, frames):
    assert client.get("/healthz").status_code == 200
    r = client.post("/infer/object_detection", json=body(encode(frames["coffee"]), confidence=0.1))
    assert r.status_code == 200
    assert strip_ids(r.json()["predictions"]) == expected(detector, frames["coffee"], 0.1)


def test_metrics_count_requests_errors_stages_and_batches(client):
    text = client.get("/metrics").text
    assert 'rfpipe_http_requests_total{method="POST",route="/infer/object_detection",status="200"}' in text
    assert 'rfpipe_http_errors_total{error_type="image_too_large",route="/infer/object_detection",status="413"}' in text
    assert 'route="/{dataset_id}/{version_id}"' in text
    for stage in ("decode", "queue", "preprocess", "forward", "postprocess"):
        assert f'rfpipe_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert "rfpipe_batch_size_bucket" in text and "rfpipe_queue_depth 0.0" in text
    assert 'rfpipe_decodes_total{decoder="opencv",format="png"}' in text
    assert 'decoder="torchvision"' not in text  # without --gpu-decode, OpenCV decodes everything
    assert "/nothing/here" not in text  # raw paths never become labels


def test_request_id_is_echoed(client):
    r = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/healthz", headers={"x-request-id": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"


class _BrokenDetector(FakeDetector):
    def postprocess(self, logits, boxes, metadata, confidence=0.4):
        if confidence == 0.123:
            raise RuntimeError("injected postprocess fault")
        return super().postprocess(logits, boxes, metadata, confidence)


def test_real_faults_are_500_logged_with_the_request_id(frames, caplog):
    detector = _BrokenDetector(make_config())
    with TestClient(create_app([detector], ServerSettings(model_id=MODEL)), raise_server_exceptions=False) as c:
        with caplog.at_level(logging.ERROR, logger="rfpipe.server"):
            r = c.post("/infer/object_detection", json=body(encode(frames["coffee"]), confidence=0.123))
        assert r.status_code == 500
        request_id = r.json()["request_id"]
        assert request_id in r.json()["message"]
        assert any(request_id in rec.getMessage() for rec in caplog.records)
        assert c.post("/infer/object_detection", json=body(encode(frames["coffee"]))).status_code == 200
        assert 'error_type="internal_error"' in c.get("/metrics").text


# -- --gpu-decode: the device decoder runs on the CPU here (torchvision's libjpeg-turbo), through the
# server's real code path; tests/test_gpu_decode.py has the nvJPEG tests.


@pytest.fixture(scope="module")
def gpu_decode_client(detector):
    settings = ServerSettings(model_id=MODEL, max_pixels=2_000_000, max_wait_ms=1.0, gpu_decode=True,
                              gpu_decode_device="cpu")
    with TestClient(create_app([detector], settings), raise_server_exceptions=False) as c:
        yield c


def _decodes(client, decoder: str, fmt: str) -> float:
    prefix = f'rfpipe_decodes_total{{decoder="{decoder}",format="{fmt}"}} '
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]
    return float(lines[0][len(prefix):]) if lines else 0.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_gpu_decode_answers_jpeg_from_the_device_decoders_frame_with_exif_geometry(gpu_decode_client, detector, frames):
    frame = frames["chelsea"]
    data = jpeg_with_orientation(frame, 6)
    before = _decodes(gpu_decode_client, "torchvision", "jpeg")
    r = gpu_decode_client.post("/infer/object_detection", json=body(data, confidence=0.1, visualize_predictions=True))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["image"] == {"width": frame.shape[0], "height": frame.shape[1]}
    decoded = decode_jpeg_on_device(data, "cpu")
    assert strip_ids(out["predictions"]) == expected(detector, decoded.numpy(), 0.1)
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(out["visualization"]), np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (frame.shape[1], frame.shape[0], 3)
    raw = gpu_decode_client.post("/infer/object_detection", json=body(data, disable_preproc_auto_orient=True)).json()
    assert raw["image"] == {"width": frame.shape[1], "height": frame.shape[0]}
    assert _decodes(gpu_decode_client, "torchvision", "jpeg") == before + 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_gpu_decode_leaves_other_formats_to_opencv(gpu_decode_client, detector, frames):
    frame = frames["rocket"]
    before = _decodes(gpu_decode_client, "opencv", "png"), _decodes(gpu_decode_client, "torchvision", "jpeg")
    r = gpu_decode_client.post("/infer/object_detection", json=body(encode(frame), confidence=0.1))
    assert r.status_code == 200, r.text
    assert strip_ids(r.json()["predictions"]) == expected(detector, frame, 0.1)
    after = _decodes(gpu_decode_client, "opencv", "png"), _decodes(gpu_decode_client, "torchvision", "jpeg")
    assert after == (before[0] + 1, before[1])
    jpeg = jpeg_with_orientation(frames["coffee"], 8)  # one request, one image of each decoder
    r = gpu_decode_client.post("/infer/object_detection", json=body(encode(frame), jpeg, confidence=0.1))
    assert r.status_code == 200, r.text
    png_answer, jpeg_answer = r.json()
    assert strip_ids(png_answer["predictions"]) == expected(detector, frame, 0.1)
    assert strip_ids(jpeg_answer["predictions"]) == expected(detector, decode_jpeg_on_device(jpeg, "cpu").numpy(), 0.1)
    assert jpeg_answer["image"] == {"width": frames["coffee"].shape[0], "height": frames["coffee"].shape[1]}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_gpu_decode_refuses_bad_jpeg_as_opencv_does(gpu_decode_client, client, frames):
    data = jpeg_with_orientation(frames["coffee"], 1)
    zeroed = bytearray(data)
    zeroed[400:-2] = bytes(len(data) - 402)  # still ends with its end-of-image marker: torchvision tries it
    before = _decodes(gpu_decode_client, "opencv", "jpeg") + _decodes(gpu_decode_client, "torchvision", "jpeg")
    for bad in (data[: len(data) // 2], bytes(zeroed)):
        with_flag = gpu_decode_client.post("/infer/object_detection", json=body(bad))
        without = client.post("/infer/object_detection", json=body(bad))
        assert with_flag.status_code == without.status_code == 400
        assert {k: v for k, v in with_flag.json().items() if k != "request_id"} == \
            {k: v for k, v in without.json().items() if k != "request_id"}
    assert _decodes(gpu_decode_client, "opencv", "jpeg") + _decodes(gpu_decode_client, "torchvision", "jpeg") == before
    trailing = data + b"camera trailer"  # OpenCV decodes it; the device decoder is not asked
    before = _decodes(gpu_decode_client, "opencv", "jpeg")
    assert gpu_decode_client.post("/infer/object_detection", json=body(trailing)).status_code == 200
    assert _decodes(gpu_decode_client, "opencv", "jpeg") == before + 1


def test_gpu_decode_needs_cuda_devices(detector):
    with pytest.raises(ValueError, match="--gpu-decode .* CUDA devices"):
        create_app([detector], ServerSettings(model_id=MODEL, gpu_decode=True))
    with pytest.raises(ValueError, match="gpu_decode is off"):
        ServerSettings(model_id=MODEL, gpu_decode_device="cuda:0")


def test_answers_are_the_same_json_with_or_without_orjson(client, frames, monkeypatch):
    pytest.importorskip("orjson", reason="orjson is not installed (the server extra installs it)")
    from rfpipe.server import app as app_module

    content = {"inference_id": "x", "time": 0.5, "image": {"width": 3, "height": 4}, "visualization": None,
               "predictions": [{"x": 1.5, "y": 2.0, "width": 3.0, "height": 4.0, "confidence": 0.25, "class": "caf\u00e9",
                                "class_id": np.int64(2), "detection_id": "d"}]}
    fast = app_module.json_response(content)
    monkeypatch.setattr(app_module, "orjson", None)
    slow = app_module.json_response({**content, "predictions": [{**content["predictions"][0], "class_id": 2}]})
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    import json

    assert json.loads(fast.body) == json.loads(slow.body)
