"""GPU preprocessing benchmark: rfpipe `cuda` against the existing paths, all in one process.

On the same frames and GPU, median wall-clock ms per call (host clock, GPU synchronised) of:
  rfpipe       rfpipe.preprocess(..., implementation="cuda") from a pageable numpy BGR frame
  rfpipe-pin   the same from a pinned numpy frame (`cuda.pinned_frame`, what the server decodes into)
  rfpipe-gpu   the same from a uint8 CUDA tensor (no upload)
  triton       inference-models' triton-universal-v1 (stretch only; Pillow-exact resize on GPU)
  base         inference-models' base preprocessor (CPU chain, then upload)
  tv           torchvision tensor path: upload, float, resize(antialias), normalise (not exact)
  h2d-pin / h2d-page   host-to-device copy of the uint8 frame from pinned / pageable memory
for 640x480, 1920x1080 and 3840x2160 frames to 560x560, stretch / letterbox (via 640x480) /
center-crop (via 640x640), batch 1 and 8; then where rfpipe's time goes (host Python, staging
fill, copies, kernels). Exactness: rfpipe vs rfpipe reference (torch.equal), triton vs base.

    python benchmarks/gpu_preprocess.py [--reps 50] [--json out.json]

inference-models is optional (its rows are skipped when it does not import).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torchvision.transforms.functional as TF

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import make_raw_config

import rfpipe
from rfpipe.preprocess import cuda
from rfpipe.preprocess.cuda import host as cuda_host
from rfpipe.preprocess.cuda import runtime as cuda_runtime

DEV = torch.device("cuda")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TARGET = 560
SIZES = [(480, 640), (1080, 1920), (2160, 3840)]
MODES = {"stretch": None, "letterbox": (640, 480), "center-crop": (640, 640)}


def synthetic_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Gradients plus noise, as the upstream anchor benchmark builds its frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) * 255 // (width + height))], -1)
    return np.clip(img + rng.integers(-30, 30, img.shape), 0, 255).astype(np.uint8)


def median_ms(fn, reps: int, *args) -> float:
    for _ in range(3):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(*args)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def ours(images, config) -> torch.Tensor:
    return rfpipe.preprocess(images, config, device=DEV, implementation="cuda")[0]


def interleaved_ms(candidates: dict, reps: int) -> dict[str, float]:
    """Median ms of each candidate `(fn, *args)`, timed round-robin (one call of each per round)."""
    for fn, *args in candidates.values():
        for _ in range(3):
            fn(*args)
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(reps):
        for name, (fn, *args) in candidates.items():
            start = time.perf_counter()
            fn(*args)
            torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.copy_(src, non_blocking=src.is_pinned())


def rf_config(mode: str) -> rfpipe.ModelConfig:
    dataset = MODES[mode]
    return rfpipe.ModelConfig.from_dict(make_raw_config(
        mode=mode, size=(TARGET, TARGET), dataset=dataset, normalization=[MEAN, STD]))


class Upstream:
    """inference-models' base and triton-universal-v1, driven as the team's anchor script does."""

    def __init__(self):
        from inference_models.models.common.roboflow.model_packages import (
            ColorMode,
            ImagePreProcessing,
            NetworkInputDefinition,
            ResizeMode,
            TrainingInputSize,
        )
        from inference_models.models.rfdetr.pre_processing import (
            pre_process_network_input,
        )
        from inference_models.models.rfdetr.triton_universal_preprocess_runtime import (
            UniversalFastPreprocessRuntime,
        )

        self.ipp = ImagePreProcessing()
        self.run_base = pre_process_network_input
        self.runtime = UniversalFastPreprocessRuntime(DEV)
        self.stream = torch.cuda.Stream()

        def net(mode):
            dv = MODES[mode]
            return NetworkInputDefinition(
                training_input_size=TrainingInputSize(height=TARGET, width=TARGET),
                dataset_version_resize_dimensions=None if dv is None else TrainingInputSize(width=dv[0], height=dv[1]),
                dynamic_spatial_size_supported=False, color_mode=ColorMode.RGB, resize_mode=ResizeMode(mode),
                input_channels=3, scaling_factor=255, normalization=(MEAN, STD))

        self.nets = {mode: net(mode) for mode in MODES}

    def base(self, images, mode):
        return self.run_base(images, self.ipp, self.nets[mode], DEV, input_color_format="bgr")[0]

    def triton(self, images):
        result = self.runtime.preprocess(images, "bgr", self.ipp, self.nets["stretch"], None, self.stream)
        result.ready_event.synchronize()
        return result.tensor


def torchvision_path(img: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=DEV).view(3, 1, 1)
    std = torch.tensor(STD, device=DEV).view(3, 1, 1)
    t = torch.from_numpy(img).to(DEV).permute(2, 0, 1).flip(0).float().div(255)
    t = TF.resize(t, [TARGET, TARGET], antialias=True)
    return ((t - mean) / std).unsqueeze(0)


def breakdown(images, config, reps: int) -> dict:
    """Split one rfpipe call: geometry (Python), batch preparation (Python), enqueue (staging fill,
    copy and kernel issue; host), GPU time from the first copy to the last kernel, kernels alone."""
    from rfpipe.geometry import plan_image, resolve_target_size
    from rfpipe.preprocess.inputs import to_frames
    from rfpipe.preprocess.kernels.triton_batch import launch

    runtime = cuda_runtime.runtime(DEV)
    rows = {"geometry_ms": [], "prepare_ms": [], "enqueue_host_ms": [], "gpu_span_ms": []}
    for rep in range(reps + 3):
        t0 = time.perf_counter()
        frames = to_frames(images)
        target = resolve_target_size(config, None)
        plans = [plan_image(config, f.size, target, None, "bgr") for f in frames]
        t1 = time.perf_counter()
        with torch.cuda.stream(runtime.stream):
            jobs = cuda_host.jobs(frames, plans, "bgr")
            shape = cuda_host.output_shape(plans)
            out = torch.empty(shape, dtype=torch.float32, device=DEV)
            sources, pixels = cuda_host.sources(jobs, DEV, cuda_runtime.on_gpu, direct=True)
            plan = runtime.plan(sources, shape)
            buffer = runtime.device_buffer(plan.buffer_bytes)
            norm = runtime.norm(config)
            t2 = time.perf_counter()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            runtime.enqueue(plan, pixels, buffer, norm, out)
            t3 = time.perf_counter()
            e1.record()
        e1.synchronize()
        if rep >= 3:
            rows["geometry_ms"].append((t1 - t0) * 1e3)
            rows["prepare_ms"].append((t2 - t1) * 1e3)
            rows["enqueue_host_ms"].append((t3 - t2) * 1e3)
            rows["gpu_span_ms"].append(e0.elapsed_time(e1))
    result = {k: round(statistics.median(v), 4) for k, v in rows.items()}
    # Kernels alone: 20 back-to-back launches between two events (launch gaps hidden by queueing).
    params = plan.views(buffer) if plan.patches else plan.resident_views(DEV, None)
    with torch.cuda.stream(runtime.stream):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(20):
            launch(plan, runtime.kernels, buffer, params, norm, out, runtime.stream.cuda_stream, DEV.index or 0)
        e1.record()
    e1.synchronize()
    result["kernels_ms"] = round(e0.elapsed_time(e1) / 20, 4)
    return result


def profile(reps: int = 300) -> None:
    """cProfile of rfpipe calls at 640x480 (numpy, pinned numpy, CUDA tensor): where host time goes."""
    import cProfile
    import pstats

    img = synthetic_frame(480, 640)
    pinned = cuda.pinned_frame(480, 640)
    pinned[:] = img
    config = rf_config("stretch")
    for name, images in (("numpy", img), ("pinned", pinned), ("cuda-tensor", torch.from_numpy(img).to(DEV))):
        for _ in range(20):
            rfpipe.preprocess(images, config, device=DEV, implementation="cuda")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(reps):
            rfpipe.preprocess(images, config, device=DEV, implementation="cuda")
        profiler.disable()
        print(f"--- profile {name}: per call, top functions by own time")
        stats = pstats.Stats(profiler)
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:18]
        for (file, line, func), (_, _, tt, ct, _) in rows:
            print(f"  {tt / reps * 1e6:7.1f} us own {ct / reps * 1e6:7.1f} us cum  {func} ({os.path.basename(file)}:{line})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--json", default=None)
    parser.add_argument("--profile", action="store_true", help="also profile host time at 640x480")
    args = parser.parse_args()
    reps = args.reps
    import triton

    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__,
          "cpus", os.cpu_count(), "torch threads", torch.get_num_threads(), flush=True)
    assert cuda.available(DEV), "rfpipe cuda self-check failed"
    try:
        upstream = Upstream()
    except Exception as error:  # inference-models missing: rfpipe rows only
        print("inference-models unavailable:", repr(error)[:200], flush=True)
        upstream = None
    configs = {mode: rf_config(mode) for mode in MODES}
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    for h, w in SIZES:
        img = synthetic_frame(h, w)
        pinned = cuda.pinned_frame(h, w)
        pinned[:] = img
        on_gpu = torch.from_numpy(img).to(DEV)
        batch8 = np.stack([synthetic_frame(h, w, seed=s) for s in range(8)])
        slow_reps = max(5, reps // (10 if w > 2000 else 4))
        src = torch.from_numpy(img)
        dst = torch.empty_like(src, device=DEV)
        pin_src = src.pin_memory()
        for n, images in ((1, img), (8, batch8)):
            # Every candidate of this frame size and batch is timed round-robin in the same loop,
            # so clock ramps and neighbours' noise hit them alike.
            candidates = {f"rfpipe/{mode}": (ours, images, config) for mode, config in configs.items()}
            if n == 1:
                for mode, config in configs.items():
                    candidates[f"rfpipe-pin/{mode}"] = (ours, pinned, config)
                    candidates[f"rfpipe-gpu/{mode}"] = (ours, on_gpu, config)
                candidates["tv"] = (torchvision_path, img)
                candidates["h2d-pin"] = (copy, dst, pin_src)
                candidates["h2d-page"] = (copy, dst, src)
            if upstream is not None:
                candidates["triton"] = (upstream.triton, images)
            times = interleaved_ms(candidates, reps)
            base_out = None
            for mode, config in configs.items():
                row = {"frame": f"{w}x{h}", "mode": mode, "batch": n, "rfpipe_ms": times[f"rfpipe/{mode}"]}
                expected = rfpipe.preprocess(images, config, implementation="reference")[0]
                row["rfpipe_exact"] = bool(torch.equal(ours(images, config).cpu(), expected))
                if n == 1:
                    row["rfpipe_pin_ms"] = times[f"rfpipe-pin/{mode}"]
                    row["rfpipe_gpu_ms"] = times[f"rfpipe-gpu/{mode}"]
                if upstream is not None:
                    base_images = images if n == 1 else list(images)
                    if n == 1 or w < 3000:
                        row["base_ms"] = median_ms(upstream.base, slow_reps, base_images, mode)
                    row["triton_ms"] = times["triton"]  # stretch only: the baseline for every mode
                    if mode == "stretch":
                        tri = upstream.triton(images).float().cpu()
                        base_out = upstream.base(base_images, mode).float().cpu()
                        row["triton_neq_pct"] = round(float((tri != base_out).float().mean() * 100), 2)
                        row["rfpipe_vs_base_equal"] = bool(torch.equal(ours(images, config).cpu(), base_out))
                if mode == "stretch" and n == 1:
                    row["tv_ms"] = times["tv"]
                    row["h2d_pin_ms"] = times["h2d-pin"]
                    row["h2d_page_ms"] = times["h2d-page"]
                if n == 1 or mode == "stretch":
                    row["breakdown"] = breakdown(images, config, max(10, reps // 2))
                emit(row)

    print()
    print("median ms per call (batch 8: per batch); ratio = rfpipe / triton-universal stretch at that size & batch")
    header = ["frame", "mode", "batch", "rfpipe_ms", "rfpipe_pin_ms", "rfpipe_gpu_ms", "triton_ms", "base_ms",
              "tv_ms", "h2d_pin_ms", "h2d_page_ms", "ratio", "exact"]
    print(" | ".join(header))
    for r in rows:
        t = r.get("triton_ms")
        r["ratio_vs_triton"] = round(r["rfpipe_ms"] / t, 3) if t else None
        cells = [r["frame"], r["mode"], str(r["batch"])]
        for k in header[3:11]:
            cells.append(f"{r[k]:.3f}" if isinstance(r.get(k), float) else "-")
        cells += [str(r["ratio_vs_triton"]), str(r["rfpipe_exact"])]
        print(" | ".join(cells))
    print()
    print("batch 8 frames/s, rfpipe vs triton-universal (stretch):")
    for r in rows:
        if r["batch"] == 8 and r["mode"] == "stretch" and r.get("triton_ms"):
            print(f"  {r['frame']}: rfpipe {8000 / r['rfpipe_ms']:.0f} fps, triton {8000 / r['triton_ms']:.0f} fps, "
                  f"x{r['triton_ms'] / r['rfpipe_ms']:.2f}")
    print()
    print("breakdown (median ms): geometry = to_frames + plan_image; prepare = jobs, signature, cached plan, "
          "buffers; enqueue_host = staging fill + copy and kernel issue; gpu_span = first copy to last kernel; "
          "kernels = kernels alone")
    for r in rows:
        if "breakdown" in r:
            print(f"  {r['frame']} {r['mode']} x{r['batch']}: {r['breakdown']}")
    if args.profile:
        profile()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
