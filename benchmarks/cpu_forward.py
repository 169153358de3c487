"""The network's forward on the CPU: ONNX Runtime settings and torch (eager, torch.compile) side by side.

Issue 10 asks, for the CPU: which ONNX Runtime graph optimisation level and thread settings are
fastest, and whether torch.compile helps there. On the untrained Nano package (320 px, ONNX and
torch weights; built and cached by `rfpipe.testing.untrained`), one preprocessed batch, every
candidate timed in interleaved rounds (median wall ms and process CPU ms per forward). Where a
candidate changes numbers it says by how much (max |logit| against ORT's default session).

    python benchmarks/cpu_forward.py [--batch 1] [--reps 8] [--rounds 3] [--no-compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rfpipe  # noqa: E402
from rfpipe.samples import load_samples  # noqa: E402
from rfpipe.testing.untrained import cached_packages  # noqa: E402

LEVELS = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def ort_session(path: Path, *, level: str = "all", threads: int | None = None, spinning: bool = True):
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})


def torch_forward(package: Path, *, compiled: bool):
    """The torch backend's forward (batch -> (logits, boxes)), eager or through torch.compile (inductor)."""
    backend = rfpipe.Detector.load(package, device="cpu", backend="torch", dtype="float32").backend
    return torch.compile(backend._forward, dynamic=False) if compiled else backend._forward


def timed(fn, x, reps: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        fn(x)
        walls.append((time.perf_counter() - wall) * 1e3)
        cpus.append((time.process_time() - cpu) * 1e3)
    return statistics.median(walls), statistics.median(cpus)


def max_logit_delta(a, b) -> float:
    """Max |logit| between two outputs ((logits, boxes) tensors or ORT's [boxes, logits] arrays)."""
    def logits(out):
        if isinstance(out, (list, tuple)) and isinstance(out[0], np.ndarray):
            return torch.from_numpy(max(out, key=lambda o: o.shape[-1]))
        return out[0]
    return float((logits(a) - logits(b)).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    package = cached_packages()["stretch"]
    detector = rfpipe.Detector.load(package, device="cpu", backend="onnx")
    frames = list(load_samples().values())[: args.batch]
    x, _ = detector.preprocess(frames)
    onnx_path = package / "weights.onnx"
    cores = os.cpu_count() or 1
    candidates = {
        "ort default (level all, threads = cores)": ort_session(onnx_path),
        "ort level extended": ort_session(onnx_path, level="extended"),
        "ort level basic": ort_session(onnx_path, level="basic"),
        "ort level disabled": ort_session(onnx_path, level="disabled"),
        "ort 1 thread": ort_session(onnx_path, threads=1),
        "ort no spinning": ort_session(onnx_path, spinning=False),
    }
    report: dict = {"machine": f"{platform.machine()} ({cores} cpus)", "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": ort.__version__, "batch": args.batch,
                    "input": list(x.shape), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "load_average": os.getloadavg(), "rows": {}}
    with torch.inference_mode():
        candidates["torch eager float32"] = torch_forward(package, compiled=False)
        if not args.no_compile:
            compiled = torch_forward(package, compiled=True)
            start = time.perf_counter()
            compiled(x)
            report["torch_compile_first_call_s"] = time.perf_counter() - start
            candidates["torch.compile (inductor, CPU)"] = compiled
        reference = candidates["ort default (level all, threads = cores)"](x)
        for name, fn in candidates.items():
            fn(x)  # warm
            report["rows"][name] = {"wall_ms": [], "cpu_ms": [], "max_logit_delta": max_logit_delta(fn(x), reference)}
        for _ in range(args.rounds):
            for name, fn in candidates.items():
                wall, cpu = timed(fn, x, args.reps)
                report["rows"][name]["wall_ms"].append(wall)
                report["rows"][name]["cpu_ms"].append(cpu)
    base = statistics.median(report["rows"]["ort default (level all, threads = cores)"]["wall_ms"])
    print(f"{'candidate':42s} {'wall ms':>9s} {'x default':>9s} {'CPU ms':>8s} {'max |logit| vs default':>24s}")
    for name, row in report["rows"].items():
        wall, cpu = statistics.median(row["wall_ms"]), statistics.median(row["cpu_ms"])
        row.update(wall_median_ms=wall, cpu_median_ms=cpu, speed_vs_default=base / wall)
        print(f"{name:42s} {wall:9.1f} {base / wall:9.2f} {cpu:8.1f} {row['max_logit_delta']:24.3g}")
    if "torch_compile_first_call_s" in report:
        print(f"torch.compile first call (compile): {report['torch_compile_first_call_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
