"""URL images: off by default, and never fetched from non-public addresses (checked before connecting)."""

from __future__ import annotations

import base64
import http.server
import ipaddress
import socket
import threading

import cv2
import numpy as np
import pytest
from conftest import make_config
from fastapi.testclient import TestClient
from server_support import FakeDetector

from rfpipe.server import ServerSettings, create_app
from rfpipe.server.errors import ApiError
from rfpipe.server.payloads import fetch_url, is_public_address

MODEL = "pets/3"
PNG = cv2.imencode(".png", np.full((20, 30, 3), 90, np.uint8))[1].tobytes()


@pytest.mark.parametrize("address,public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("::ffff:8.8.8.8", True),
])
def test_address_policy(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


class _Recorder:
    """A loopback listener that counts connections, to prove refused URLs are never contacted."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                return count
            conn.close()
            count += 1


@pytest.fixture(scope="module")
def client():
    settings = ServerSettings(model_id=MODEL, allow_url_input=True, max_wait_ms=0)
    with TestClient(create_app([FakeDetector(make_config())], settings)) as c:
        yield c


def test_private_and_loopback_urls_are_refused_without_connecting(client):
    recorder = _Recorder()
    urls = [f"http://127.0.0.1:{recorder.port}/a.png", f"http://localhost:{recorder.port}/a.png",
            f"http://[::ffff:127.0.0.1]:{recorder.port}/a.png", f"https://127.0.0.1:{recorder.port}/a.png",
            "http://10.0.0.1/a.png", "http://169.254.169.254/latest/meta-data", "http://[::1]/a.png",
            "http://0.0.0.0/a.png", "http://2130706433/a.png"]  # 2130706433 is 127.0.0.1 as one number
    for url in urls:
        r = client.post("/infer/object_detection", json={"model_id": MODEL, "image": {"type": "url", "value": url}})
        assert r.status_code in (400, 403), (url, r.text)
        assert r.json()["error_type"] in ("url_not_allowed", "url_unreachable"), (url, r.json())
    assert recorder.connections() == 0


def test_bad_url_forms_are_400(client):
    for url in ("ftp://example.com/a.png", "file:///etc/passwd", "http:///nohost", "not a url", "http://[::1/a"):
        r = client.post("/infer/object_detection", json={"model_id": MODEL, "image": {"type": "url", "value": url}})
        assert r.status_code == 400, (url, r.text)


def test_url_is_refused_when_the_operator_did_not_allow_it():
    with TestClient(create_app([FakeDetector(make_config())], ServerSettings(model_id=MODEL))) as c:
        r = c.post(f"/{MODEL}", params={"image": "https://example.com/a.png"})
        assert r.status_code == 400 and r.json()["error_type"] == "url_input_disabled"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.end_headers()
            return
        body = PNG if self.path == "/a.png" else PNG * 200
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _loopback_only(address) -> bool:  # the test host's policy: the fetch logic, pointed at loopback
    return address.is_loopback


def test_fetch_reads_an_image_refuses_redirects_and_caps_size(image_host):
    assert fetch_url(f"{image_host}/a.png", "image", 1 << 20, 5.0, _loopback_only) == PNG
    with pytest.raises(ApiError) as info:
        fetch_url(f"{image_host}/redirect", "image", 1 << 20, 5.0, _loopback_only)
    assert info.value.status == 400 and "redirects are not followed" in info.value.message
    with pytest.raises(ApiError) as info:
        fetch_url(f"{image_host}/big.png", "image", 10_000, 5.0, _loopback_only)
    assert info.value.status == 413
    with pytest.raises(ApiError) as info:  # the default policy refuses the same host
        fetch_url(f"{image_host}/a.png", "image", 1 << 20, 5.0)
    assert info.value.status == 403


def test_base64_and_url_images_mix_in_one_request(client):
    value = base64.b64encode(PNG).decode()
    r = client.post("/infer/object_detection", json={"model_id": MODEL, "image": [
        {"type": "base64", "value": value}, {"type": "url", "value": "http://127.0.0.1/x.png"}]})
    assert r.status_code == 403 and "image[1]" in r.json()["message"]
