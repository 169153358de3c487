"""`rfpipe serve --processes 2`: the real CLI in a subprocess, two server processes on one port, one stop.

The model is the untrained RF-DETR Nano package (ONNX on the CPU) with --max-batch 1, so an image's
answer does not depend on which process or which batch computed it.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from conftest import random_image
from model_packages import packages  # noqa: F401
from server_support import free_socket, stop, wait_ready

MODEL = "nano/1"
REQUESTS = 40
CLIENTS = 8
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")


def _start(model: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """The CLI in its own session (process group), as a terminal or systemd would run it."""
    with free_socket() as sock:
        port = sock.getsockname()[1]
    code = "import sys; from rfpipe.server.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    argv = [str(model), "--model-id", MODEL, "--processes", "2", "--device", "cpu", "--port", str(port),
            "--max-batch", "1", "--log-level", "warning", *extra]
    with open(log, "w") as out:  # a file, not a pipe nobody reads while the server runs
        process = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}"



def _descendants(pid: int) -> set[int]:
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in map(int, f.read().split()):
                found |= {child, *_descendants(child)}
    return found


def _metrics_dir(pids: set[int]) -> Path:
    """The shared metrics directory the parent gave its children (from a child's environment)."""
    for pid in pids:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                    return Path(item.split(b"=", 1)[1].decode())
    raise AssertionError("no child has PROMETHEUS_MULTIPROC_DIR")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for a reaper that never comes in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while (left := {p for p in pids if _running(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture
def server(packages, tmp_path) -> Iterator[tuple[subprocess.Popen, str]]:  # noqa: F811
    process, url = _start(packages["stretch"], tmp_path / "server.log")
    children: set[int] = set()
    try:
        wait_ready(process, url, tmp_path / "server.log")
        children = _descendants(process.pid)
        yield process, url
    finally:  # after a failed test too: no server process outlives it
        stop(process, 60.0)
        for pid in _wait_gone(children, 10.0):
            os.kill(pid, signal.SIGKILL)


def _payloads() -> list[str]:
    rng = np.random.default_rng(3)
    return [base64.b64encode(cv2.imencode(".png", random_image(rng, 64, 64))[1].tobytes()).decode() for _ in range(4)]


def test_two_processes_answer_on_one_port_share_metrics_and_stop_together(server):
    process, url = server
    payloads = _payloads()
    counter = iter(range(REQUESTS))
    lock = threading.Lock()

    def client(keep_alive: bool) -> list[tuple[int, int, list[dict]]]:
        answers = []
        with requests.Session() as session:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return answers
                body = {"model_id": MODEL, "image": {"type": "base64", "value": payloads[index % len(payloads)]},
                        "confidence": 0.05}
                # A new connection per request lets either process accept it; a kept-alive one stays with its process.
                r = (session.post if keep_alive else requests.post)(f"{url}/infer/object_detection", json=body, timeout=120)
                predictions = [{k: v for k, v in p.items() if k != "detection_id"} for p in r.json().get("predictions", [])]
                answers.append((index, r.status_code, predictions))

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [a for part in pool.map(client, [i % 2 == 0 for i in range(CLIENTS)]) for a in part]
    assert sorted(a[0] for a in answers) == list(range(REQUESTS))
    assert all(status == 200 for _, status, _ in answers), answers
    by_image: dict[int, set[str]] = {}
    for index, _, predictions in answers:
        by_image.setdefault(index % len(payloads), set()).add(repr(predictions))
    assert all(len(distinct) == 1 for distinct in by_image.values())  # the same image, the same answer everywhere
    assert len({next(iter(d)) for d in by_image.values()}) == len(payloads)  # and different images differ

    pids = set()
    for _ in range(100):  # each call on a new connection; either process may accept it
        info = requests.get(f"{url}/info", timeout=10).json()
        assert info["devices"] == ["cpu"]
        pids.add(info["pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2, "one process answered 100 new connections in a row"
    children = _descendants(process.pid)
    assert pids <= children  # the answering processes are the parent's children
    metrics_dir = _metrics_dir(pids)

    for _ in range(4):  # whichever process answers /metrics counts the whole server's images
        text = requests.get(f"{url}/metrics", timeout=10).text
        images = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("rfpipe_images_total"))
        assert images == REQUESTS
        assert "rfpipe_queue_depth 0.0" in text

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert not _wait_gone(children, 10.0), "server processes outlived the parent"
    assert not metrics_dir.exists()


def test_ctrl_c_to_the_whole_process_group_is_a_clean_stop(server):
    process, _ = server
    children = _descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C (and systemd's default SIGTERM) do: every process gets it
    assert process.wait(60) == 0
    assert not _wait_gone(children, 10.0)


def test_children_exit_when_the_parent_is_killed(server):
    process, _ = server
    children = _descendants(process.pid)
    assert len(children) >= 2
    metrics_dir = _metrics_dir(children)
    process.kill()  # SIGKILL: the parent cannot stop its children, nor remove the metrics directory
    process.wait(30)
    try:
        assert not _wait_gone(children, 30.0), "orphaned server processes kept running"
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def test_a_child_that_cannot_start_stops_the_server_with_an_error(tmp_path):
    log = tmp_path / "server.log"
    process, _ = _start(tmp_path / "missing", log)  # every child fails to load the model
    try:
        assert process.wait(180) == 1
    finally:
        process.kill()
    assert "exited with status 1; stopping the others" in log.read_text()
