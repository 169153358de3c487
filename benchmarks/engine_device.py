"""The throughput engine on one GPU, every row in one run (issue #10): writes engine.json + engine.png to $OUT.

Untrained RF-DETR Nano package (torch weights, stretch, RESOLUTION), built here. In order:
1. floors: 16-thread OpenCV decode of 720p JPEG bytes alone, nvJPEG batched decode alone, one pinned
   host-to-device copy of a 720p frame;
2. compiled bfloat16 (CUDA graphs) at the buckets BUCKETS only (each costs 30-50 s cold): cold compile
   seconds per bucket, forward-only ms at each bucket (the compiled limit), eager float32 beside it;
3. warm start: a second process loads the same model with the same compile cache (one bucket);
4. drift against eager float32 (TF32 off) on the same batches: eager tf32 / bfloat16 / float16, compiled
   bfloat16, and compiled float32 / float16 at one bucket while time allows: raw-logit and box max abs
   differences, images whose detections match exactly;
5. batch_policy="fixed": 64 different images, each alone, at every position of a full batch among the
   others, and in shuffled batches: raw outputs and detections bit-identical or not;
6. end to end through the engine, 720p JPEG bytes -> detections: OpenCV decode pool (the engine's
   default threads, 12 on 16 cores; pinned staging) and nvJPEG (gpu_decode=True), at max_batch 1/8/32;
   per-stage times (decode, preprocess, forward, post-process, each timed alone) and the ratio of each
   to its floor;
7. batch-1 latency from a decoded frame (Detector call and engine submit -> result);
8. inference-models 0.39's torch model on the same package and bytes, default and
   optimize_for_inference(compile=True) at batch 8, when it imports (run right after step 2);
9. host-side variants: 16 decode threads (every core) at the largest bucket, the interpreter's GIL
   switch interval at 1 ms instead of 5 ms at the middle bucket, and where
   py-spy is installed, where the GIL goes (`py-spy record --gil` on this process during an OpenCV
   and an nvJPEG row: gil_*.txt, collapsed stacks, summarised per thread and function in engine.json).

Usage (device): python3 benchmarks/engine_device.py   (env: RESOLUTION=384 BUCKETS=1,8,32 BUDGET_S=420;
SKIP=warm_start,drift,fixed_identity,nvjpeg,fixed_policy_fps,compiled_float32,compiled_float16,inference_models,
host_variants,gil_profile leaves those steps out)
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rfpipe  # noqa: E402
from rfpipe.engine import Engine, default_decode_threads  # noqa: E402
from rfpipe.io.decode import decode_image  # noqa: E402
from rfpipe.samples import load_samples  # noqa: E402
from rfpipe.tools.bench import plot_engine  # noqa: E402

RESOLUTION = int(os.environ.get("RESOLUTION", 384))
BUCKETS = tuple(int(b) for b in os.environ.get("BUCKETS", "1,8,32").split(","))
BUDGET_S = float(os.environ.get("BUDGET_S", 420))  # optional steps are skipped past this
SKIP = {name.strip() for name in os.environ.get("SKIP", "").split(",") if name.strip()}  # steps left out: warm_start, drift, fixed_identity, ...
SMOKE = os.environ.get("SMOKE") == "1"  # tiny counts and float32 only, to check the script on a CPU
FAST_DTYPE = "float32" if SMOKE else "bfloat16"
DRIFT_DTYPES = ("tf32",) if SMOKE else ("tf32", "bfloat16", "float16")
DEVICE = torch.device(os.environ.get("DEVICE", "cuda"))
CACHE = os.environ.get("RFPIPE_COMPILE_CACHE") or "/tmp/rfpipe-compile"
os.environ["RFPIPE_COMPILE_CACHE"] = CACHE
START = time.perf_counter()
REPORT: dict[str, Any] = {"skipped": {}}


def elapsed() -> float:
    return time.perf_counter() - START


def log(message: str) -> None:
    print(f"[{elapsed():6.1f} s] {message}", flush=True)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed_ms(fn, reps: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p99_ms": samples[min(len(samples) - 1, int(0.99 * len(samples)))]}


def jpegs_720p(count: int) -> list[bytes]:
    """`count` different 1280x720 JPEGs cut from the bundled photos (crops, flips, quality 90)."""
    rng = random.Random(0)
    photos = list(load_samples().values())
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        top, left = rng.randrange(0, h // 4 + 1), rng.randrange(0, w // 4 + 1)
        crop = photo[top:, left:]
        if i % 2:
            crop = crop[:, ::-1]
        frame = cv2.resize(np.ascontiguousarray(crop), (1280, 720), interpolation=cv2.INTER_LINEAR)
        out.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def distinct_frames(count: int) -> list[np.ndarray]:
    """`count` different BGR frames of various sizes from the bundled photos."""
    photos = list(load_samples().values())
    frames = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        frames.append(np.ascontiguousarray(photo[(3 * i) % (h // 3):, (5 * i) % (w // 3):][: 200 + 7 * i, : 260 + 9 * i]))
    return frames


# -- 1. floors ---------------------------------------------------------------------------------------

def floors(encoded: list[bytes]) -> dict:
    result = {}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(decode_image, encoded[:64]))
        start = time.perf_counter()
        list(pool.map(decode_image, encoded))
        result["opencv_16_threads_fps"] = len(encoded) / (time.perf_counter() - start)
    if DEVICE.type == "cuda":
        from rfpipe.io.pool import decode_batch_on_device

        decode_batch_on_device(encoded[:32], DEVICE)
        start = time.perf_counter()
        for i in range(0, len(encoded), 32):
            decode_batch_on_device(encoded[i : i + 32], DEVICE)
        result["nvjpeg_batch32_fps"] = len(encoded) / (time.perf_counter() - start)
        from torchvision.io import (
            decode_jpeg,  # torchvision's batched nvJPEG call alone, no header checks
        )

        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in encoded]
        decode_jpeg(tensors[:32], device=DEVICE)
        sync()
        start = time.perf_counter()
        for i in range(0, len(tensors), 32):
            decode_jpeg(tensors[i : i + 32], device=DEVICE)
        sync()
        result["torchvision_nvjpeg_batch32_fps"] = len(encoded) / (time.perf_counter() - start)
        frame = torch.empty((720, 1280, 3), dtype=torch.uint8, pin_memory=True)
        target = torch.empty((720, 1280, 3), dtype=torch.uint8, device=DEVICE)
        result["pinned_copy_720p"] = timed_ms(lambda: target.copy_(frame, non_blocking=True), 50)
        pageable = frame.clone()
        result["pageable_copy_720p"] = timed_ms(lambda: target.copy_(pageable), 50)
    return result


# -- 2-4. compiled forward, warm start, drift --------------------------------------------------------

def forward_ms(detector: rfpipe.Detector, batch: int, reps: int) -> dict[str, float]:
    x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, device=DEVICE)
    return timed_ms(lambda: detector.forward(x), reps)


def warm_start(package: Path, bucket: int) -> dict:
    code = (
        "import time, sys; t = time.perf_counter(); import rfpipe; "
        f"d = rfpipe.Detector.load({str(package)!r}, device={str(DEVICE)!r}, backend='torch', dtype='bfloat16', "
        f"compile='cudagraphs', buckets=({bucket},), progress=False); "
        "print('RESULT', time.perf_counter() - t, d.backend.compile_mode, d.backend.compiled.warm_s)"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
    if not line:
        return {"error": done.stderr[-2000:]}
    _, load_s, mode, warm = line[0].split(" ", 3)
    return {"process_s": time.perf_counter() - start, "load_s": float(load_s), "mode": mode, "warm_s": warm}


def same_detections(a: rfpipe.Detections, b: rfpipe.Detections) -> bool:
    return (np.array_equal(a.xyxy, b.xyxy) and np.array_equal(a.class_id, b.class_id)
            and np.array_equal(a.confidence, b.confidence))


def drift(reference: rfpipe.Detector, other: rfpipe.Detector, frames: list[np.ndarray], batch: int) -> dict:
    logit_diff = box_diff = 0.0
    matched = total = 0
    conf_delta = 0.0
    for i in range(0, len(frames), batch):
        chunk = frames[i : i + batch]
        x, meta = reference.preprocess(chunk)
        want = reference.forward(x)
        got = other.forward(x)
        logit_diff = max(logit_diff, (want[0] - got[0]).abs().max().item())
        box_diff = max(box_diff, (want[1] - got[1]).abs().max().item())
        for a, b in zip(reference.postprocess(*want, meta), other.postprocess(*got, meta), strict=True):
            total += 1
            if np.array_equal(a.class_id, b.class_id) and np.array_equal(a.xyxy, b.xyxy):
                matched += 1
                if len(a):
                    conf_delta = max(conf_delta, float(np.abs(a.confidence - b.confidence).max()))
    return {"max_abs_logit": logit_diff, "max_abs_box": box_diff, "images": total,
            "detections_match": matched, "max_confidence_delta_when_matched": conf_delta}


# -- 5. fixed-policy bit identity --------------------------------------------------------------------

def fixed_identity(detector: rfpipe.Detector, frames: list[np.ndarray], bucket: int) -> dict:
    """Raw outputs of each image alone (zero-padded to `bucket`) vs at every position among others,
    and detections through Engine(batch_policy="fixed") alone vs streamed vs shuffled."""
    x, _ = detector.preprocess(frames)
    alone = []
    for i in range(len(frames)):
        padded = torch.zeros((bucket, *x.shape[1:]), device=x.device)
        padded[0] = x[i]
        logits, boxes = detector.forward(padded)
        alone.append((logits[0].clone(), boxes[0].clone()))
    positions = equal_positions = 0
    for i in range(len(frames)):
        for position in range(bucket):
            others = [(i + k + 1) % len(frames) for k in range(bucket)]
            rows = x[others].clone()
            rows[position] = x[i]
            logits, boxes = detector.forward(rows)
            positions += 1
            equal_positions += bool(torch.equal(logits[position], alone[i][0]) and torch.equal(boxes[position], alone[i][1]))
    engine_checks = {}
    with Engine(detector, max_batch=bucket, max_wait_ms=50, batch_policy="fixed") as engine:
        one = [engine.submit(f, confidence=0.3).result() for f in frames]
        streamed = [f.result() for f in [engine.submit(f, confidence=0.3) for f in frames]]
        order = list(range(len(frames)))
        random.Random(1).shuffle(order)
        shuffled_futures = {i: engine.submit(frames[i], confidence=0.3) for i in order}
        shuffled = [shuffled_futures[i].result() for i in range(len(frames))]
    engine_checks["streamed_equal_alone"] = sum(same_detections(a, b) for a, b in zip(one, streamed, strict=True))
    engine_checks["shuffled_equal_alone"] = sum(same_detections(a, b) for a, b in zip(one, shuffled, strict=True))
    engine_checks["detections"] = sum(len(d) for d in one)
    return {"images": len(frames), "bucket": bucket, "raw_positions_checked": positions,
            "raw_positions_bit_identical": equal_positions, **engine_checks}


# -- 6-7. end to end, stages, latency ----------------------------------------------------------------

THREADS = default_decode_threads()  # the engine's own default (12 on 16 cores)


def engine_fps(detector: rfpipe.Detector, encoded: list[bytes], max_batch: int, seconds: float, **options) -> dict:
    options.setdefault("decode_threads", THREADS)
    with Engine(detector, max_batch=max_batch, max_wait_ms=2.0, queue_size=max(256, 8 * max_batch),
                **options) as engine:
        warm = [engine.submit(encoded[i % len(encoded)], confidence=0.4) for i in range(4 * max_batch)]
        for f in warm:
            f.result()
        count = 0
        window: list = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            window.append(engine.submit(encoded[count % len(encoded)], confidence=0.4))
            count += 1
            if len(window) >= 4 * max_batch + 64:
                window.pop(0).result()
        for f in window:
            f.result()
        wall = time.perf_counter() - start
        mean_batch = engine.mean_batch  # includes the warm-up's batches
    return {"frames": count, "fps": count / wall, "mean_batch": mean_batch}


def stage_times(detector: rfpipe.Detector, encoded: list[bytes], batch: int) -> dict:
    chunk = encoded[:batch]
    frames = [decode_image(b) for b in chunk]
    result = {"decode_1thread_per_frame": timed_ms(lambda: [decode_image(b) for b in chunk[:4]], 5)}
    result["decode_1thread_per_frame"] = {k: v / 4 for k, v in result["decode_1thread_per_frame"].items()}
    state = {}

    def pre():
        state["x"], state["meta"] = detector.preprocess(frames, synchronize=False)

    result["preprocess"] = timed_ms(pre, 20)
    result["forward"] = timed_ms(lambda: state.update(out=detector.forward(state["x"])), 20)
    result["postprocess"] = timed_ms(lambda: detector.postprocess(*state["out"], state["meta"]), 20)
    return result


def latency_b1(detector: rfpipe.Detector, frame: np.ndarray, reps: int) -> dict:
    result = {"detector_call": timed_ms(lambda: detector(frame), reps, warmup=10)}
    with Engine(detector, max_batch=1, max_wait_ms=0) as engine:
        result["engine_submit_result"] = timed_ms(lambda: engine.submit(frame).result(), reps, warmup=10)
    return result


def with_switch_interval(seconds_: float, fn, *args, **kwargs):
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds_)
    try:
        return fn(*args, **kwargs)
    finally:
        sys.setswitchinterval(before)


def gil_profile(name: str, out: Path, fn, *args, **kwargs) -> dict:
    """Run `fn` while py-spy samples this process, only threads holding the GIL (`--gil`); returns
    fn's result with a summary: samples per thread, and the functions of rfpipe (or the library
    frame nearest the top) that held it most."""
    import shutil

    spy = shutil.which("py-spy") or next((str(p) for p in (Path(d) / "bin" / "py-spy" for d in sys.path if d)
                                          if p.is_file()), None)
    if spy is None:
        raise RuntimeError("py-spy is not installed")
    path = out / f"gil_{name}.txt"
    duration = 6
    sampler = subprocess.Popen([spy, "record", "--pid", str(os.getpid()), "--gil", "--threads", "--rate", "200",
                                "--duration", str(duration), "--format", "raw", "--full-filenames", "--output", str(path),
                                "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # attached before the row starts
    result = fn(*args, **kwargs)
    _, err = sampler.communicate(timeout=60)
    if not path.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err[-500:]}")
    threads: dict[str, int] = {}
    functions: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = re.sub(r"[_-]\d+$", "_N", re.sub(r"^thread \(\d+\):\s*", "", frames[0]).strip())
        threads[thread] = threads.get(thread, 0) + n
        ours = [f for f in frames[1:] if "/rfpipe/" in f]
        top = ours[-1] if ours else frames[-1]
        functions[top] = functions.get(top, 0) + n
        total += n
    top = sorted(functions.items(), key=lambda kv: -kv[1])[:25]
    return {**result, "gil_samples": total, "gil_by_thread": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
            "gil_top_functions": dict(top), "gil_seconds_sampled": duration}


# -- 8. inference-models -----------------------------------------------------------------------------

def inference_models_fps(package: Path, encoded: list[bytes], batch: int, seconds: float) -> dict:
    """inference-models at `batch`; the float32 matmul settings its import changes are put back after
    (it sets `torch.set_float32_matmul_precision("high")`, which would recompile rfpipe's compiled
    forward on its next call and give the float32 reference TF32 matmuls)."""
    matmul = torch.backends.cuda.matmul
    legacy, precision = torch.get_float32_matmul_precision(), getattr(matmul, "fp32_precision", None)
    cudnn = torch.backends.cudnn.allow_tf32
    try:
        return _inference_models_fps(package, encoded, batch, seconds)
    finally:
        torch.set_float32_matmul_precision(legacy)
        if precision is not None:
            matmul.fp32_precision = precision
        torch.backends.cudnn.allow_tf32 = cudnn


def _inference_models_fps(package: Path, encoded: list[bytes], batch: int, seconds: float) -> dict:
    from inference_models.models.rfdetr.rfdetr_object_detection_pytorch import (
        RFDetrForObjectDetectionTorch,
    )

    model = RFDetrForObjectDetectionTorch.from_pretrained(str(package), device=DEVICE)
    result = {}
    with ThreadPoolExecutor(16) as pool:
        for label in ("default", "optimize_for_inference"):
            if label == "optimize_for_inference":
                model.optimize_for_inference(compile=True, batch_size=batch)
            count = 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                chunk = [encoded[(count + k) % len(encoded)] for k in range(batch)]
                frames = list(pool.map(decode_image, chunk))  # their path gets the same 16-thread decode
                pre, meta = model.pre_process(frames)
                model.post_process(model.forward(pre), meta, confidence=0.4)
                count += batch
            result[label] = {"batch": batch, "fps": count / (time.perf_counter() - start)}
    return result


def optional(name: str, need_s: float, fn, *args, **kwargs):
    if name in SKIP or re.sub(r"_b\d+$", "", name) in SKIP:  # nvjpeg_b8 is left out by "nvjpeg"
        REPORT["skipped"][name] = "left out (SKIP)"
        log(f"skip {name}: left out (SKIP)")
        return None
    if elapsed() + need_s > BUDGET_S:
        REPORT["skipped"][name] = f"time budget: {elapsed():.0f} s spent, {need_s:.0f} s needed, budget {BUDGET_S:.0f}"
        log(f"skip {name}: {REPORT['skipped'][name]}")
        return None
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # an optional row that fails is reported, not fatal
        REPORT["skipped"][name] = f"{type(error).__name__}: {error}"
        log(f"{name} failed: {REPORT['skipped'][name]}")
        return None



def main() -> None:
    from rfpipe.testing.untrained import build_packages

    out = Path(os.environ.get("OUT") or "out/engine")
    out.mkdir(parents=True, exist_ok=True)
    seconds = 0.5 if SMOKE else 3.0
    reps = 5 if SMOKE else 100
    if os.environ.get("PACKAGE"):  # an untrained stretch package built before, at RESOLUTION
        package = Path(os.environ["PACKAGE"])
    else:
        package = build_packages(Path(tempfile.mkdtemp(prefix="rfpipe-engine-")), resolution=RESOLUTION,
                                 onnx=False)["stretch"]
    log(f"built untrained Nano {RESOLUTION} package")
    encoded = jpegs_720p(16 if SMOKE else 256)
    meta = {"torch": torch.__version__, "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
            "resolution": RESOLUTION, "buckets": BUCKETS, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(), "cache": CACHE}
    for name in ("triton", "torchvision", "rfdetr", "opencv-python-headless", "opencv-python", "pillow"):
        try:
            import importlib.metadata

            meta[name] = importlib.metadata.version(name)
        except Exception:
            pass
    REPORT["meta"] = meta
    REPORT["floors"] = floors(encoded)
    log(f"floors: {REPORT['floors']}")

    eager32 = rfpipe.Detector.load(package, device=DEVICE, backend="torch", dtype="float32", compile="none")
    cuda = DEVICE.type == "cuda"
    compile_mode = "cudagraphs" if cuda else "auto"
    start = time.perf_counter()
    fast = rfpipe.Detector.load(package, device=DEVICE, backend="torch", dtype=FAST_DTYPE, compile=compile_mode,
                                buckets=BUCKETS)
    REPORT["compile_bf16"] = {"load_s": time.perf_counter() - start, "mode": fast.backend.compile_mode,
                              "warm_s_per_bucket": getattr(fast.backend.compiled, "warm_s", None)}
    log(f"compiled bf16: {REPORT['compile_bf16']}")
    eager_bf16 = rfpipe.Detector.load(package, device=DEVICE, backend="torch", dtype=FAST_DTYPE, compile="none")
    REPORT["forward_ms"] = {f"{label}_b{b}": forward_ms(det, b, reps)
                            for b in BUCKETS for label, det in (("compiled_bf16", fast), ("eager_bf16", eager_bf16),
                                                                ("eager_fp32", eager32))}
    log(f"forward: { {k: round(v['median_ms'], 2) for k, v in REPORT['forward_ms'].items()} }")
    if cuda:  # inference-models early: the same-run ratio is a goal, the later rows are extras
        baseline = optional("inference_models", 40, inference_models_fps, package, encoded, 8, seconds)
        if baseline is not None:
            REPORT["inference_models"] = baseline
            log(f"inference-models: {baseline}")
        REPORT["warm_start"] = optional("warm_start", 60, warm_start, package, BUCKETS[len(BUCKETS) // 2])
        log(f"warm start: {REPORT['warm_start']}")

    frames = distinct_frames(8 if SMOKE else 64)
    drift_batch = BUCKETS[len(BUCKETS) // 2]
    REPORT["drift_vs_eager_fp32"] = {}
    if "drift" not in SKIP:
        REPORT["drift_vs_eager_fp32"]["compiled_bf16"] = drift(eager32, fast, frames[:32], drift_batch)
        for dtype in DRIFT_DTYPES:
            other = eager_bf16 if dtype == "bfloat16" else rfpipe.Detector.load(package, device=DEVICE, backend="torch",
                                                                                dtype=dtype, compile="none")
            REPORT["drift_vs_eager_fp32"][f"eager_{dtype}"] = drift(eager32, other, frames[:32], drift_batch)
        log(f"drift: {REPORT['drift_vs_eager_fp32']}")

    if "fixed_identity" not in SKIP:
        REPORT["fixed_policy"] = fixed_identity(fast, frames if not SMOKE else frames[:3], drift_batch)
        log(f"fixed policy: {REPORT['fixed_policy']}")

    rows = []
    for max_batch in BUCKETS:
        stages = stage_times(fast, encoded, max_batch)
        row = {"pipeline": f"rfpipe opencv-{THREADS}", "max_batch": max_batch, "stages": stages,
               **engine_fps(fast, encoded, max_batch, seconds)}
        longest = max(stages["decode_1thread_per_frame"]["median_ms"] * max_batch / THREADS,
                      stages["preprocess"]["median_ms"], stages["forward"]["median_ms"], stages["postprocess"]["median_ms"])
        row["per_batch_ms"] = 1e3 * max_batch / row["fps"]
        row["per_batch_over_longest_stage"] = row["per_batch_ms"] / longest
        row["fps_over_decode_floor"] = row["fps"] / REPORT["floors"]["opencv_16_threads_fps"]
        rows.append(row)
        log(f"e2e opencv max_batch {max_batch}: {row['fps']:.0f} frames/s")
        if cuda:
            gpu = optional(f"nvjpeg_b{max_batch}", 10, engine_fps, fast, encoded, max_batch, seconds, gpu_decode=True)
            if gpu is not None:
                gpu.update(pipeline="rfpipe nvjpeg", max_batch=max_batch,
                           fps_over_nvjpeg_floor=gpu["fps"] / REPORT["floors"]["nvjpeg_batch32_fps"])
                rows.append(gpu)
                log(f"e2e nvjpeg max_batch {max_batch}: {gpu['fps']:.0f} frames/s")
    fixed = optional("fixed_policy_fps", 10, engine_fps, fast, encoded, drift_batch, seconds, batch_policy="fixed")
    if fixed is not None:
        rows.append({"pipeline": f"rfpipe opencv-{THREADS} fixed", "max_batch": drift_batch, **fixed})
    variants = {"rfpipe opencv-16": (BUCKETS[-1], engine_fps, {"decode_threads": 16}),
                f"rfpipe opencv-{THREADS} switch 1 ms": (
                    drift_batch, lambda *a, **k: with_switch_interval(0.001, engine_fps, *a, **k), {})}
    for label, (max_batch, fn, options) in variants.items():
        row = optional("host_variants", 10, fn, fast, encoded, max_batch, seconds, **options)
        if row is not None:
            rows.append({"pipeline": label, "max_batch": max_batch, **row})
            log(f"e2e {label} max_batch {max_batch}: {row['fps']:.0f} frames/s")
    profiles = [("opencv", drift_batch, {})] + ([("nvjpeg", BUCKETS[-1], {"gpu_decode": True})] if cuda else [])
    for name, max_batch, options in profiles:
        row = optional("gil_profile", 15, gil_profile, name, out, engine_fps, fast, encoded, max_batch, 6.0, **options)
        if row is not None:
            rows.append({"pipeline": f"rfpipe {name} (py-spy attached)", "max_batch": max_batch, **row})
            log(f"gil profile {name} max_batch {max_batch}: {row['fps']:.0f} frames/s; threads {row['gil_by_thread']}")
    REPORT["end_to_end"] = rows
    REPORT["latency_b1"] = latency_b1(fast, decode_image(encoded[0]), 3 if SMOKE else 200)
    log(f"latency b1: {REPORT['latency_b1']}")

    if cuda:
        for dtype in ("float32", "float16"):
            def compiled_drift(dtype=dtype):
                start = time.perf_counter()
                det = rfpipe.Detector.load(package, device=DEVICE, backend="torch", dtype=dtype,
                                           compile="cudagraphs", buckets=(drift_batch,))
                report = drift(eager32, det, frames[:32], drift_batch)
                report["load_s"] = time.perf_counter() - start
                report["forward_ms"] = forward_ms(det, drift_batch, reps)
                return report

            result = optional(f"compiled_{dtype}", 70, compiled_drift)
            if result is not None:
                REPORT["drift_vs_eager_fp32"][f"compiled_{dtype}"] = result
                log(f"compiled {dtype}: {result}")

    REPORT["total_s"] = elapsed()
    (out / "engine.json").write_text(json.dumps(REPORT, indent=1, default=str))
    plot_engine(rows, out / "engine.png", f"untrained RF-DETR Nano {RESOLUTION}, {meta['device']}, compiled bf16")
    log(f"wrote {out / 'engine.json'}")


if __name__ == "__main__":
    main()
