"""Correctness under load: 64 concurrent clients with different images each get their image's own answer."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import requests
from conftest import make_config, random_image
from server_support import FakeDetector, live_server

from rfpipe.server import ServerSettings, create_app

MODEL = "pets/3"
CLIENTS = 64


def _answer(session: requests.Session, url: str, data: str) -> list[dict]:
    r = session.post(f"{url}/infer/object_detection", timeout=60,
                     json={"model_id": MODEL, "image": {"type": "base64", "value": data}, "confidence": 0.1})
    assert r.status_code == 200, r.text
    return [{k: v for k, v in p.items() if k != "detection_id"} for p in r.json()["predictions"]]


def test_64_concurrent_clients_each_get_their_own_answer(photos):
    rng = np.random.default_rng(7)
    names = sorted(photos)
    images = []
    for i in range(CLIENTS):  # crops of real photos and synthetic frames, all different sizes
        if i % 2:
            photo = photos[names[i % len(names)]]
            y, x = int(rng.integers(0, 100)), int(rng.integers(0, 100))
            images.append(photo[y: y + 40 + i, x: x + 120 - i])
        else:
            images.append(random_image(rng, 30 + i, 90 - i // 2))
    payloads = [base64.b64encode(cv2.imencode(".png", im)[1].tobytes()).decode() for im in images]
    detector = FakeDetector(make_config(size=(40, 40), mode="letterbox", dataset=(64, 48)))
    settings = ServerSettings(model_id=MODEL, max_batch=16, max_wait_ms=20, queue_size=CLIENTS)
    with live_server(create_app([detector], settings)) as url:
        with requests.Session() as session:
            alone = [_answer(session, url, p) for p in payloads]
        detector.calls.clear()
        barrier = threading.Barrier(CLIENTS)

        def client(index: int) -> list[dict]:
            with requests.Session() as session:
                barrier.wait()  # all 64 send together
                return _answer(session, url, payloads[index])

        with ThreadPoolExecutor(CLIENTS) as pool:
            together = list(pool.map(client, range(CLIENTS)))
        batches = list(detector.calls)
    assert len({str(a) for a in alone}) == CLIENTS  # every image has a distinct answer, so a crossing would show
    assert max(batches) > 1 and sum(batches) == CLIENTS
    for index in range(CLIENTS):
        assert together[index] == alone[index], f"client {index} got another answer under load"
