"""Test support for the server: a contract-shaped detector and a live uvicorn server on a free loopback port.

`FakeDetector` follows the Detector contract (config, class_names, device, backend_name,
preprocess/forward/postprocess, __call__) with the real reference preprocessing and a small
deterministic forward whose outputs depend on every image's pixels, so results of different images
differ and a result that reached the wrong request is caught. Its forward computes each image on its
own (no cross-row GEMM), so batched and single answers are bit-identical.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import uvicorn

import rfpipe
from rfpipe.config import ImageSize


@dataclass
class FakeDetections:
    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    class_name: list[str]

    def to_inference_json(self) -> list[dict]:
        out = []
        for (x0, y0, x1, y1), conf, cid, name in zip(self.xyxy.tolist(), self.confidence.tolist(),
                                                       self.class_id.tolist(), self.class_name, strict=True):
            out.append({"x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "width": x1 - x0, "height": y1 - y0,
                        "confidence": conf, "class": name, "class_id": cid, "detection_id": str(uuid.uuid4())})
        return out


class FakeDetector:
    """Reference preprocessing, a pooled-pixel linear 'network', DESIGN.md post-processing."""

    backend_name = "fake"

    def __init__(self, config: rfpipe.ModelConfig, class_names=("cat", "dog", "car"), queries: int = 12,
                 device: str = "cpu", seed: int = 0):
        self.config = config
        self.class_names = tuple(class_names)
        self.device = torch.device(device)
        self.queries = queries
        g = torch.Generator().manual_seed(seed)
        n = len(self.class_names)
        self._w_logits = torch.randn(queries * n, 48, generator=g, dtype=torch.float64) * 0.7
        self._w_boxes = torch.randn(queries * 4, 48, generator=g, dtype=torch.float64)
        self.calls: list[int] = []  # batch size of each forward, for batching tests
        # Test hooks in the forward pass (the backend's place): it raises `fail_with` when any image's
        # first value (x1000, rounded) equals `fail_on_pixel`, and sleeps `delay_s` per batch.
        self.fail_on_pixel: int | None = None
        self.fail_with: type[BaseException] = RuntimeError
        self.delay_s = 0.0

    def preprocess(self, images, input_color_format="bgr", overrides=None, image_size=None, implementation="auto",
                   synchronize=True):
        return rfpipe.preprocess(images, self.config, device=self.device, input_color_format=input_color_format,
                                 image_size=image_size, overrides=overrides, implementation="reference")

    def forward(self, batch: torch.Tensor):
        self.calls.append(batch.shape[0])
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on_pixel is not None:
            for image in batch:
                if round(float(image[0, 0, 0]) * 1000) == self.fail_on_pixel:
                    raise self.fail_with("injected forward failure")
        # Each image on its own, by the same ops at the same shapes whatever the batch: no batched GEMM,
        # and no elementwise kernel whose SIMD body / scalar tail split (last-ulp differences) moves
        # with the batch size. So a row never depends on its neighbours or on how many there are.
        logits, boxes = [], []
        for image in batch:
            pooled = torch.nn.functional.adaptive_avg_pool2d(image[None].double(), (4, 4)).flatten(1)  # [1, 48]
            logits.append((pooled * self._w_logits).sum(-1).reshape(self.queries, -1).float())
            boxes.append(torch.sigmoid((pooled * self._w_boxes).sum(-1)).reshape(self.queries, 4).float())
        return torch.stack(logits), torch.stack(boxes)

    def postprocess(self, logits, boxes, metadata, confidence=0.4):
        results = []
        for logit, box, meta in zip(logits, boxes, metadata, strict=True):
            score = torch.sigmoid(logit.clone())  # per image (see forward)
            flat = score.flatten()
            values, index = flat.topk(self.queries)
            query, cls = index // score.shape[1], index % score.shape[1]
            keep = values > confidence
            values, query, cls = values[keep], query[keep], cls[keep]
            cx, cy, w, h = box[query].double().unbind(-1)
            size = meta.nonsquare_intermediate_size or meta.inference_size
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
            xyxy = xyxy * torch.tensor([size.width, size.height] * 2, dtype=torch.float64)
            xyxy -= torch.tensor([meta.pad_left, meta.pad_top] * 2, dtype=torch.float64)
            xyxy /= torch.tensor([meta.scale_width, meta.scale_height] * 2, dtype=torch.float64)
            off = meta.static_crop_offset
            xyxy += torch.tensor([off.offset_x, off.offset_y] * 2, dtype=torch.float64)
            orig: ImageSize = meta.original_size
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, orig.width)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, orig.height)
            results.append(FakeDetections(
                xyxy=torch.round(xyxy).to(torch.int64).numpy(), confidence=values.numpy().astype(np.float32),
                class_id=cls.numpy().astype(np.int64), class_name=[self.class_names[c] for c in cls.tolist()]))
        return results

    def __call__(self, images, confidence=0.4, input_color_format="bgr", overrides=None, image_size=None,
                 implementation="auto"):
        batch, meta = self.preprocess(images, input_color_format, overrides, image_size, implementation)
        logits, boxes = self.forward(batch)
        return self.postprocess(logits, boxes, meta, confidence)


class GatedDetector(FakeDetector):
    """Forward waits on `gate` once `armed` (after the warm-up), so a test can keep the engine busy."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.armed = False

    def forward(self, batch):
        if self.armed:
            self.gate.wait(30)
        return super().forward(batch)


def wait_ready(process, url: str, log, timeout_s: float = 180.0, path: str = "/readyz") -> None:
    """Wait for a server subprocess's `path` (/readyz) to answer 200; fail with its log if it exits first."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{url}{path}", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server did not become ready:\n{log.read_text()[-4000:]}")


def stop(process, grace_s: float = 30.0) -> None:
    """SIGTERM a server subprocess, SIGKILL it if it has not exited within `grace_s`, and reap it."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def free_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1 (never another address)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def live_server(app, ready_timeout_s: float = 60.0) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a thread; yields the base URL; stops on exit."""
    import requests

    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    try:
        while True:
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not become ready")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def serve_fake(argv: list[str] | None = None) -> None:
    """`python tests/server_support.py --port P [--delay-ms D ...]`: a FakeDetector server in its own process.

    For the tests that measure the server from outside (overload: its RSS, its capacity), so the
    load generator and the server do not share an interpreter.
    """
    import argparse

    from conftest import make_config

    from rfpipe.server import ServerSettings, create_app

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay-ms", type=float, default=0.0, help="sleep per forward pass (a slower 'network')")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--queue-size", type=int, default=16)
    p.add_argument("--request-timeout", type=float, default=2.0)
    args = p.parse_args(argv)
    detector = FakeDetector(make_config(size=(48, 40)))
    detector.delay_s = args.delay_ms / 1000.0
    settings = ServerSettings(model_id="pets/3", max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                              queue_size=args.queue_size, request_timeout_s=args.request_timeout)
    uvicorn.run(create_app([detector], settings), host="127.0.0.1", port=args.port, log_level="warning",
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    serve_fake()
