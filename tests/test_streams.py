"""Video streams on the untrained RF-DETR Nano (ONNX on the CPU), with generated videos and a live MJPEG
camera served on 127.0.0.1 by a process the tests start (tests/mjpeg_server.py).

Kept small for 2 CPU cores: frames of 160x120 or less, a few frames per source.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from model_packages import packages  # noqa: F401  (the fixture)

import rfpipe
import rfpipe.streams as streams
from rfpipe.io.decode import decode_image

HERE = Path(__file__).resolve().parent
CONFIDENCE = 0.3


@pytest.fixture(scope="module")
def detector(packages):  # noqa: F811
    return rfpipe.Detector.load(packages["stretch"], device="cpu", backend="onnx")


def _scenes(photos, count: int, size: tuple[int, int], offset: int = 0) -> list[np.ndarray]:
    """`count` different frames of `size` (width, height), cut from the sample photos."""
    names = sorted(photos)
    frames = []
    for i in range(count):
        photo = photos[names[(i + offset) % len(names)]]
        crop = photo[11 * i: 11 * i + 3 * size[1], 7 * i: 7 * i + 3 * size[0]]
        frames.append(cv2.resize(crop, size, interpolation=cv2.INTER_AREA))
    return frames


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _decoded(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def _matches(predictions: list[dict], expected: rfpipe.Detections) -> bool:
    # ONNX Runtime may sum in another order at another batch size (~1e-7 on a score, a box edge by 1 px).
    want = expected.to_inference_json()
    if [p["class_id"] for p in predictions] != [w["class_id"] for w in want]:
        return False
    return all(abs(p["confidence"] - w["confidence"]) <= 1e-5
               and all(abs(p[k] - w[k]) <= 1.0 for k in ("x", "y", "width", "height"))
               and p["class"] == w["class"] for p, w in zip(predictions, want, strict=True))


def _stream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("rfpipe-stream", "rfpipe-engine"))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Camera:
    """tests/mjpeg_server.py in its own process, killable and restartable on the same port."""

    def __init__(self, fps: float = 25.0):
        self.port = _free_port()
        self.fps = fps
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(HERE / "mjpeg_server.py"), str(self.port),
                                         "--fps", str(self.fps)], stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        assert line.startswith("listening"), line

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def camera():
    cam = Camera()
    cam.start()
    yield cam
    cam.kill()


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_jsonl_equals_per_frame_detector_calls_and_sources_keep_their_frames_apart(detector, photos, tmp_path):
    video_a = _write_video(tmp_path / "a.avi", _scenes(photos, 3, (160, 120)))
    video_b = _write_video(tmp_path / "b.avi", _scenes(photos, 2, (96, 64), offset=2))
    folder = tmp_path / "shots"
    folder.mkdir()
    for i, frame in enumerate(_scenes(photos, 2, (120, 90), offset=4)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    out = tmp_path / "out.jsonl"
    summary = streams.run([str(video_a), str(video_b), str(folder)], detector, confidence=CONFIDENCE, max_batch=4,
                          max_wait_ms=20, sink=[streams.JsonLines(out), streams.AnnotatedVideo(tmp_path / "annotated")])
    assert _stream_threads() == []
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {0: _decoded(video_a), 1: _decoded(video_b),
                2: [decode_image(p.read_bytes()) for p in sorted(folder.iterdir())]}
    names = {0: str(video_a), 1: str(video_b), 2: str(folder)}
    assert [len(v) for v in expected.values()] == [3, 2, 2]
    detections = 0
    for stream, frames in expected.items():
        mine = [r for r in records if r["stream"] == stream]
        assert [r["frame"] for r in mine] == list(range(len(frames)))
        assert {r["source"] for r in mine} == {names[stream]}
        for record, frame in zip(mine, frames, strict=True):
            assert record["image"] == {"width": frame.shape[1], "height": frame.shape[0]}
            assert _matches(record["predictions"], detector(frame, confidence=CONFIDENCE)[0]), (stream, record["frame"])
            detections += len(record["predictions"])
        row = summary.sources[stream]
        assert (row.frames, row.decoded, row.dropped, row.failed, row.errors) == (len(frames), len(frames), 0, 0, [])
    assert detections > 0  # the comparison compared boxes, not only empty lists
    assert summary.frames == 7 and summary.sink_dropped == {"0-JsonLines": 0, "1-AnnotatedVideo": 0}
    assert summary.latency_p99_ms >= summary.latency_mean_ms > 0 and summary.cpu_percent > 0
    assert [r["position"] for r in records if r["stream"] == 0] == [0.0, 0.1, 0.2]
    annotated = sorted((tmp_path / "annotated").iterdir())
    assert [p.name for p in annotated] == ["0-a.mp4", "1-b.mp4", "2-shots.mp4"]
    assert [len(_decoded(p)) for p in annotated] == [3, 2, 2]
    assert _decoded(annotated[1])[0].shape == (64, 96, 3)


def test_a_missing_file_and_a_refused_url_are_clear_errors_while_the_other_source_keeps_running(
        detector, photos, tmp_path):
    video = _write_video(tmp_path / "good.avi", _scenes(photos, 2, (96, 64)))
    refused = f"http://127.0.0.1:{_free_port()}/video.mjpg"
    missing = str(tmp_path / "missing.mp4")
    seen: list[int] = []
    done = threading.Event()

    def collect(result: streams.FrameResult) -> None:
        seen.append(result.stream)
        if seen.count(2) == 2:
            done.set()

    summary = streams.run([missing, refused, str(video)], detector, confidence=CONFIDENCE, stop=done,
                          sink=streams.Callback(collect), duration=120)
    assert _stream_threads() == []
    lost, down, good = summary.sources
    assert lost.errors == [f"{missing}: no such video file"] and lost.frames == 0 and lost.ended
    assert down.connects == 0 and down.frames == 0
    assert down.errors and all(e.startswith(f"{refused}: cannot connect to this stream") for e in down.errors)
    assert good.frames == 2 and good.errors == [] and seen == [2, 2]


def test_a_live_mjpeg_camera_drops_stale_frames_and_reconnects_after_a_restart(detector, camera):
    results: list[streams.FrameResult] = []
    stop = threading.Event()
    summaries = []
    runner = threading.Thread(target=lambda: summaries.append(streams.run(
        [camera.url], detector, confidence=CONFIDENCE, stop=stop,
        sink=streams.Callback(results.append), duration=150)))
    runner.start()
    try:
        _wait_for(lambda: len(results) >= 2, 60, "frames from the camera")
        camera.kill()
        time.sleep(0.5)
        restarted = time.time()
        camera.start()
        _wait_for(lambda: sum(r.timestamp > restarted for r in results) >= 2, 60, "frames after the restart")
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive() and _stream_threads() == []
    (row,) = summaries[0].sources
    assert row.connects >= 2 and row.kind == "stream" and (row.width, row.height) == (160, 120)
    assert any("the stream ended or failed" in e for e in row.errors)
    # the camera sends 25 frames/s, the model on this CPU takes far longer per frame: stale frames are dropped
    assert row.dropped > 0 and row.decoded > row.frames == len(results)
    indices = [r.frame for r in results]
    assert indices == sorted(set(indices)) and indices[-1] + 1 > len(indices)
    assert all(r.position is None and r.source == camera.url for r in results)


def test_the_newest_frames_of_all_live_cameras_go_into_one_batch(detector, camera):
    # three cameras (three connections to the test camera); the model is slower than their frame rate
    urls = [f"http://127.0.0.1:{camera.port}/cam{i}.mjpg" for i in range(3)]
    sizes: list[int] = []
    forward = detector.forward

    def recording(batch):
        sizes.append(batch.shape[0])
        return forward(batch)

    results: list[streams.FrameResult] = []
    stop = threading.Event()
    detector.forward = recording
    try:
        summaries = []
        runner = threading.Thread(target=lambda: summaries.append(streams.run(
            urls, detector, confidence=CONFIDENCE, max_batch=8, max_wait_ms=20, stop=stop,
            sink=streams.Callback(results.append), duration=150)))
        runner.start()
        _wait_for(lambda: sizes[1:].count(3) >= 2, 90, "two batches of three frames")
    finally:
        stop.set()
        runner.join(60)
        detector.forward = forward
    assert max(sizes) == 3  # one round in flight: never two frames of one camera in a batch
    assert all(row.frames > 0 and row.dropped > 0 for row in summaries[0].sources)
    assert {r.source for r in results} == set(urls)


def test_a_slow_sink_drops_results_on_its_full_queue_while_jsonl_and_the_live_view_get_every_frame(
        detector, photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per row in the captured view
    video = _write_video(tmp_path / "v.avi", _scenes(photos, 3, (64, 48)))
    slow_seen = []

    def slow(result: streams.FrameResult) -> None:
        time.sleep(1.0)
        slow_seen.append(result.frame)

    out = tmp_path / "out.jsonl"
    # one batch of three frames arrives at once: the slow sink takes one, queues one, drops the third
    summary = streams.run([str(video)], detector, confidence=CONFIDENCE, max_batch=4, max_wait_ms=1000,
                          sink=[streams.Callback(slow, queue_size=1), streams.JsonLines(out),
                                streams.TerminalView(refresh_s=0.2)])
    assert len(out.read_text().splitlines()) == 3
    assert summary.sink_dropped["0-Callback"] == 3 - len(slow_seen) >= 1
    assert summary.sink_dropped["1-JsonLines"] == summary.sink_dropped["2-TerminalView"] == 0
    view = capsys.readouterr().err
    final = view[view.rindex("rfpipe stream ·"):]  # the last table drawn, at the end of the run
    assert str(video) in final and "ended" in final and "64x48" in final
    assert "sink queues full, results dropped: 0-Callback" in final


def test_ctrl_c_stops_rfpipe_stream_leaving_no_thread_behind_and_the_jsonl_flushed(packages, camera, tmp_path,  # noqa: F811
                                                                                  photos):
    video = _write_video(tmp_path / "v.avi", _scenes(photos, 2, (64, 48)))
    out, summary_path = tmp_path / "out.jsonl", tmp_path / "summary.json"
    command = [sys.executable, "-m", "rfpipe.tools.cli", "stream", str(packages["stretch"]), camera.url, str(video),
               "--device", "cpu", "--backend", "onnx", "--confidence", str(CONFIDENCE), "--jsonl", str(out),
               "--summary", str(summary_path), "--no-view"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        _wait_for(lambda: out.exists() and out.read_text().count("\n") >= 3, 120, "JSON lines from rfpipe stream")
        process.send_signal(signal.SIGINT)
        # the stream's threads are not daemons: the interpreter could not exit with one left running
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line complete
    summary = json.loads(summary_path.read_text())
    assert summary["interrupted"] is True
    assert len(records) == summary["frames"] == sum(s["frames"] for s in summary["sources"])
    assert {r["source"] for r in records} <= {camera.url, str(video)}
    assert "SIGINT: stopping" in stderr
