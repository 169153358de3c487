"""`rfpipe bench`: per-stage latency (decode, preprocess, forward, post-process) and end-to-end frames/s.

Every preprocessing implementation runs side by side on the same encoded frames; optionally
inference-models' own RF-DETR model runs the same package, weights and frames in the same process
(the baseline). Stage times synchronise the device at each boundary; the end-to-end time is the
composed call with no synchronisation between stages, so it is what a caller sees.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfpipe.detector import Detector
from rfpipe.io.decode import OPENCV_MAX_PIXELS, decode_image

STAGES = ("decode", "preprocess", "forward", "postprocess")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode(data: bytes) -> np.ndarray:
    """Encoded image bytes -> BGR uint8 frame, decoded as the server decodes (rfpipe.io.decode)."""
    return decode_image(data, max_pixels=OPENCV_MAX_PIXELS)


def summarise(samples_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"median_ms": statistics.median(ordered), "p99_ms": p99}


def _time_pipeline(stages: Callable[[list[bytes]], dict[str, float]], composed: Callable[[list[bytes]], Any],
                   chunks: list[list[bytes]], warmup: int, reps: int, device: torch.device) -> dict[str, Any]:
    """Stage samples (synchronised at each boundary) and composed end-to-end samples, in ms."""
    for i in range(warmup):
        stages(chunks[i % len(chunks)])
        composed(chunks[i % len(chunks)])
    samples: dict[str, list[float]] = {name: [] for name in (*STAGES, "end_to_end")}
    for i in range(reps):
        for name, ms in stages(chunks[i % len(chunks)]).items():
            samples[name].append(ms)
    for i in range(reps):
        _sync(device)
        start = time.perf_counter()
        composed(chunks[i % len(chunks)])
        _sync(device)
        samples["end_to_end"].append((time.perf_counter() - start) * 1e3)
    result = {name: summarise(values) for name, values in samples.items()}
    batch = len(chunks[0])
    result["fps"] = batch * 1e3 / result["end_to_end"]["median_ms"]
    return result


def rfpipe_pipeline(detector: Detector, implementation: str, confidence: float):
    """(stages, composed) callables timing rfpipe's Detector with one preprocessing implementation."""
    device = detector.device

    def stages(chunk: list[bytes]) -> dict[str, float]:
        marks = [time.perf_counter()]
        frames = [decode(b) for b in chunk]
        marks.append(time.perf_counter())
        batch, meta = detector.preprocess(frames, implementation=implementation)
        _sync(device)
        marks.append(time.perf_counter())
        logits, boxes = detector.forward(batch)
        _sync(device)
        marks.append(time.perf_counter())
        detector.postprocess(logits, boxes, meta, confidence=confidence)
        marks.append(time.perf_counter())
        return {name: (b - a) * 1e3 for name, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}

    def composed(chunk: list[bytes]):
        return detector([decode(b) for b in chunk], confidence=confidence, implementation=implementation)

    return stages, composed


def load_inference_models(package: Path, backend: str, device: torch.device):
    """inference-models' own RF-DETR model on the same package and backend (the baseline)."""
    if backend == "onnx":
        from inference_models.models.rfdetr.rfdetr_object_detection_onnx import (
            RFDetrForObjectDetectionONNX,
        )

        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        return RFDetrForObjectDetectionONNX.from_pretrained(str(package), onnx_execution_providers=providers, device=device)
    if backend == "torch":
        from inference_models.models.rfdetr.rfdetr_object_detection_pytorch import (
            RFDetrForObjectDetectionTorch,
        )

        return RFDetrForObjectDetectionTorch.from_pretrained(str(package), device=device)
    raise ValueError(f"no inference-models baseline for the {backend} backend here")


def inference_models_pipeline(model, device: torch.device, confidence: float):
    def stages(chunk: list[bytes]) -> dict[str, float]:
        marks = [time.perf_counter()]
        frames = [decode(b) for b in chunk]
        marks.append(time.perf_counter())
        batch, meta = model.pre_process(frames)
        _sync(device)
        marks.append(time.perf_counter())
        outputs = model.forward(batch)
        _sync(device)
        marks.append(time.perf_counter())
        model.post_process(outputs, meta, confidence=confidence)
        marks.append(time.perf_counter())
        return {name: (b - a) * 1e3 for name, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}

    def composed(chunk: list[bytes]):
        batch, meta = model.pre_process([decode(b) for b in chunk])
        return model.post_process(model.forward(batch), meta, confidence=confidence)

    return stages, composed


def run_bench(detector: Detector, encoded: list[bytes], batches: Sequence[int], implementations: Sequence[str],
              reps: int = 20, warmup: int = 3, confidence: float = 0.4, baseline=None,
              progress: bool = True) -> list[dict[str, Any]]:
    """One row per (pipeline, batch size): stage median/p99 in ms and end-to-end frames/s."""
    from tqdm import tqdm

    pipelines: list[tuple[str, tuple]] = [(f"rfpipe/{impl}", rfpipe_pipeline(detector, impl, confidence))
                                          for impl in implementations]
    if baseline is not None:
        pipelines.append(("inference-models", inference_models_pipeline(baseline, detector.device, confidence)))
    rows = []
    jobs = [(name, pipe, b) for b in batches for name, pipe in pipelines]
    for name, (stages, composed), batch in tqdm(jobs, desc="bench", disable=not progress):
        # Chunks cycle through the frames so each rep sees a different mix of sizes.
        chunks = [[encoded[(start + k) % len(encoded)] for k in range(batch)] for start in range(len(encoded))]
        result = _time_pipeline(stages, composed, chunks, warmup, reps, detector.device)
        rows.append({"pipeline": name, "batch": batch, **result})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'pipeline':24s} {'batch':>5s} " + " ".join(f"{s + ' ms':>16s}" for s in (*STAGES, "end_to_end")) + f" {'frames/s':>9s}"
    lines = [header, "(median / p99)"]
    for row in rows:
        cells = " ".join(f"{row[s]['median_ms']:7.2f}/{row[s]['p99_ms']:8.2f}" for s in (*STAGES, "end_to_end"))
        lines.append(f"{row['pipeline']:24s} {row['batch']:5d} {cells} {row['fps']:9.1f}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Stacked stage medians per (pipeline, batch) with frames/s above each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['pipeline']}\nbatch {r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4.5))
    bottom = np.zeros(len(rows))
    for stage in STAGES:
        per_frame = np.array([r[stage]["median_ms"] / r["batch"] for r in rows])
        ax.bar(labels, per_frame, bottom=bottom, label=stage)
        bottom += per_frame
    for x, (top, row) in enumerate(zip(bottom, rows, strict=True)):
        ax.text(x, top, f"{row['fps']:.0f} fps", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("median ms per frame (stages synchronised)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the engine: frames/s through rfpipe.engine, per compile mode and dtype ------------------------------


class GpuUtilisation:
    """Samples the GPU's utilisation (%) while running, through pynvml or nvidia-smi; `note` says why not."""

    def __init__(self, device: torch.device, interval_s: float = 0.1):
        import threading

        self.samples: list[float] = []
        self.note: str | None = None
        self._stop = threading.Event()
        self._thread = None
        if device.type != "cuda":
            self.note = "no GPU"
            return
        self._read = self._reader(device.index or 0)
        if self._read is not None:
            self._interval = interval_s
            self._thread = threading.Thread(target=self._loop, daemon=True)

    def _reader(self, index: int):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            pass
        import shutil
        import subprocess

        if shutil.which("nvidia-smi") is None:
            self.note = "GPU utilisation omitted: neither pynvml nor nvidia-smi is available"
            return None
        command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(index)]
        return lambda: float(subprocess.run(command, capture_output=True, text=True, timeout=5).stdout.strip())

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.samples.append(self._read())
            except Exception as error:  # a reader that stops working: say so, keep the run
                self.note = f"GPU utilisation sampling stopped: {error}"
                return

    def __enter__(self) -> GpuUtilisation:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def engine_row(detector: Detector, encoded: list[bytes], max_batch: int, seconds: float = 3.0,
               confidence: float = 0.4, **options: Any) -> dict[str, Any]:
    """Encoded bytes -> detections through `rfpipe.engine.Engine` for `seconds`: frames/s, GPU utilisation."""
    from rfpipe.engine import Engine

    with Engine(detector, max_batch=max_batch, queue_size=max(256, 8 * max_batch), **options) as engine:
        for future in [engine.submit(encoded[i % len(encoded)], confidence=confidence) for i in range(2 * max_batch)]:
            future.result()
        window: list = []
        count = 0
        with GpuUtilisation(detector.device) as gpu:
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                window.append(engine.submit(encoded[count % len(encoded)], confidence=confidence))
                count += 1
                if len(window) > 4 * max_batch:
                    window.pop(0).result()
            for future in window:
                future.result()
            wall = time.perf_counter() - start
    row: dict[str, Any] = {"max_batch": max_batch, "frames": count, "fps": count / wall,
                           "gpu_utilisation_pct": gpu.mean()}
    if gpu.note:
        row["note"] = gpu.note
    return row


def run_engine_bench(model: str | Path, device: str, variants: Sequence[tuple[str, str]], encoded: list[bytes],
                     batches: Sequence[int], seconds: float = 3.0, backend: str = "auto",
                     confidence: float = 0.4) -> list[dict[str, Any]]:
    """One row per (compile mode, dtype) variant and max batch, each variant loaded with `max(batches)`."""
    rows = []
    for compile_mode, dtype in variants:
        options = {} if compile_mode == "none" and dtype == "float32" else {"compile": compile_mode, "dtype": dtype}
        start = time.perf_counter()
        detector = Detector.load(model, device=device, backend=backend, max_batch=max(batches), **options)
        load_s = time.perf_counter() - start
        actual = getattr(detector.backend, "compile_mode", "none")
        for batch in batches:
            row = engine_row(detector, encoded, batch, seconds, confidence)
            rows.append({"pipeline": f"engine {actual}/{dtype}", "load_s": load_s, **row})
    return rows


def format_engine_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'engine variant':28s} {'max batch':>9s} {'frames/s':>9s} {'GPU %':>6s} {'load s':>7s}"]
    for row in rows:
        gpu = "-" if row.get("gpu_utilisation_pct") is None else f"{row['gpu_utilisation_pct']:.0f}"
        lines.append(f"{row['pipeline']:28s} {row['max_batch']:9d} {row['fps']:9.1f} {gpu:>6s} {row['load_s']:7.1f}")
    notes = {row["note"] for row in rows if row.get("note")}
    return "\n".join([*lines, *sorted(notes)])


def plot_engine(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """frames/s against max batch, one line per engine variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(r["pipeline"] for r in rows):
        points = sorted((r["max_batch"], r["fps"]) for r in rows if r["pipeline"] == label)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("max batch")
    ax.set_ylabel("frames/s (encoded bytes -> detections)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
