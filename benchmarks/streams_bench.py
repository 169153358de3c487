"""Streams throughput: frames/s and CPU % for N simultaneous 720p video sources through `rfpipe.streams.run`.

Generates a 720p/30 fps video (OpenCV VideoWriter, mp4v, FRAMES frames), then in one process:
1. baseline: the same frames decoded and detected one at a time on one thread (`detector(frame)`, as
   a plain OpenCV loop does), for the ratio; measured before and after the stream rows, the faster
   of the two is the ratio's denominator;
2. `rfpipe.streams.run([video] * n)` for each n in SOURCES (files: none dropped), each run capped at
   CAP_S seconds; frames/s in total, CPU % of the process (100 = one core), CPU ms per frame,
   latency, decode CPU per source;
3. PEER_PYTHON=/path/to/python (one with PyPI `inference`; MODEL a package directory): the inference
   package's InferencePipeline on the same video and package for each n, side by side
   (benchmarks/streams_peer.py, in a subprocess);
4. REALTIME=1 (default on CUDA): the largest n again with max_fps=30 per source (cameras in real
   time): whether the total keeps up with n * 30 frames/s.

Model: MODEL (a package or checkpoint); by default the untrained RF-DETR Nano checkpoint is built at
RESOLUTION (384 on CUDA, Nano's own) in /tmp. DEVICE (default cuda if available), BACKEND (auto),
DTYPE (torch backend: float32 by default), MAX_BATCH (default 16 on CUDA, 4 on CPU).
Writes $OUT/streams_bench.json (or ./out/streams_bench.json).

    python benchmarks/streams_bench.py                            # on a GPU machine: 1, 4, 16 sources
    SOURCES=1 FRAMES=16 MODEL=~/.cache/rfpipe/.../stretch python benchmarks/streams_bench.py   # CPU here
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rfpipe  # noqa: E402
import rfpipe.streams as streams  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streams_decode import FPS, HEIGHT, WIDTH, scene, write_mp4v  # noqa: E402  (one generated video)

GPU = torch.cuda.is_available()
DEVICE = os.environ.get("DEVICE", "cuda" if GPU else "cpu")
SOURCES = [int(n) for n in os.environ.get("SOURCES", "1,4,16").split(",")]
FRAMES = int(os.environ.get("FRAMES", 300 if GPU else 16))
CAP_S = float(os.environ.get("CAP_S", 25))
MAX_BATCH = int(os.environ.get("MAX_BATCH", 16 if GPU else 4))
REALTIME = os.environ.get("REALTIME", "1" if GPU else "0") == "1"
RESOLUTION = int(os.environ.get("RESOLUTION", 384))
CONFIDENCE = 0.4


def load_detector(folder: Path) -> tuple[rfpipe.Detector, str]:
    model = os.environ.get("MODEL")
    if not model:
        from rfpipe.testing.untrained import build_checkpoint

        model = str(build_checkpoint(folder / "checkpoint.pth", resolution=RESOLUTION))
    options = {"dtype": os.environ["DTYPE"]} if os.environ.get("DTYPE") else {}
    return rfpipe.Detector.load(model, device=DEVICE, backend=os.environ.get("BACKEND", "auto"), **options), model


def baseline(detector: rfpipe.Detector, video: Path) -> dict:
    """Decode and detect one frame at a time on this thread (no engine, no source threads)."""
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    frames, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < CAP_S:
        ok, frame = capture.read()
        if not ok:
            break
        detector(frame, confidence=CONFIDENCE)
        frames += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    capture.release()
    return {"frames": frames, "fps": frames / wall, "cpu_percent": 100 * cpu / wall,
            "cpu_ms_per_frame": 1000 * cpu / max(frames, 1)}


def streamed(detector: rfpipe.Detector, video: Path, n: int, max_fps: float | None = None) -> dict:
    summary = streams.run([str(video)] * n, detector, confidence=CONFIDENCE, max_batch=MAX_BATCH,
                          max_fps=max_fps, duration=CAP_S, sink=streams.Callback(lambda r: None))
    cpu_s = summary.cpu_percent / 100 * summary.seconds
    return {"sources": n, "max_fps": max_fps, "frames": summary.frames, "seconds": summary.seconds,
            "fps": summary.fps, "fps_per_source": summary.fps / n, "cpu_percent": summary.cpu_percent,
            "cpu_ms_per_frame": 1000 * cpu_s / max(summary.frames, 1),
            "latency_mean_ms": summary.latency_mean_ms, "latency_p99_ms": summary.latency_p99_ms,
            "dropped": sum(s.dropped for s in summary.sources),
            "decode_cpu_percent_per_source": float(np.mean([s.decode_cpu_percent for s in summary.sources])),
            "sink_dropped": sum(summary.sink_dropped.values()),
            "errors": [e for s in summary.sources for e in s.errors]}


def peer(model: str, video: Path, n: int) -> dict:
    script = Path(__file__).with_name("streams_peer.py")
    done = subprocess.run([os.environ["PEER_PYTHON"], str(script), model, str(video), str(n)], capture_output=True,
                          text=True, timeout=CAP_S * 10)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": done.stderr[-2000:]}


def main() -> None:
    out = Path(os.environ.get("OUT") or "out")
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="rfpipe-streams-"))
    start = time.perf_counter()
    video = write_mp4v(folder / "720p.mp4", FRAMES)
    print(f"wrote {FRAMES} frames {WIDTH}x{HEIGHT} in {time.perf_counter() - start:.1f} s", flush=True)
    detector, model = load_detector(folder)
    name = torch.cuda.get_device_name(detector.device) if detector.device.type == "cuda" else platform.processor()
    meta = {"model": model, "detector": repr(detector), "device": name or "cpu", "cpus": os.cpu_count(),
            "torch": torch.__version__, "opencv": cv2.__version__, "frames_per_file": FRAMES, "max_batch": MAX_BATCH,
            "cap_s": CAP_S, "date": time.strftime("%Y-%m-%d %H:%M"), "dtype": os.environ.get("DTYPE", "default")}
    print(json.dumps(meta), flush=True)
    warm = [detector([scene(0)] * b, confidence=CONFIDENCE) for b in sorted({1, MAX_BATCH})]  # noqa: F841
    report: dict = {"meta": meta, "baseline_before": baseline(detector, video), "streams": []}
    print("baseline (one frame at a time):", json.dumps(report["baseline_before"]), flush=True)
    for n in SOURCES:
        row = streamed(detector, video, n)
        report["streams"].append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if os.environ.get("PEER_PYTHON"):
            row["peer"] = peer(model, video, n)
            print("  peer:", json.dumps(row["peer"]), flush=True)
    report["baseline_after"] = baseline(detector, video)
    print("baseline again:", json.dumps(report["baseline_after"]), flush=True)
    best = max(report["baseline_before"]["fps"], report["baseline_after"]["fps"])
    for row in report["streams"]:
        row["ratio_to_baseline"] = row["fps"] / best
        print(f"{row['sources']:3d} sources: {row['fps']:8.1f} frames/s = {row['ratio_to_baseline']:.2f}x the baseline "
              f"({best:.1f}), CPU {row['cpu_percent']:.0f} %, {row['cpu_ms_per_frame']:.2f} CPU ms/frame", flush=True)
    if REALTIME:
        n = max(SOURCES)
        row = streamed(detector, video, n, max_fps=FPS)
        row["keeps_up"] = row["fps"] >= 0.97 * n * FPS
        report["realtime"] = row
        print("realtime:", json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}),
              flush=True)
    (out / "streams_bench.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"-> {out / 'streams_bench.json'} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
