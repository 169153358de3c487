"""inference-models' RF-DETR with and without rfpipe inside: `pre_process` alone and end to end, per mode.

For each untrained package (stretch, letterbox, center-crop, static crop) and a 1080p BGR frame, in
one process, interleaved round by round:
  base        inference-models' `pre_process`, execution plan preprocessor `base` (its CPU chain)
  auto        the same with its `auto` (triton-universal-v1 for stretch on a GPU; base elsewhere on CPU)
  rfpipe      the same model path after `rfpipe.integrations.inference_models.install()`
and, where its ONNX model runs on the device (CPU here; on a GPU only with onnxruntime's CUDA
provider), `infer` end to end without and with rfpipe inside. Every rfpipe tensor is checked
`torch.equal` to base (and auto's is reported against base too). Medians of wall time, and of the
process's CPU time (steadier on a shared CPU; it counts all of rfpipe's threads). `pre_process` runs through the
model's own execution path object (what the ONNX, torch and CoreML classes delegate `pre_process`
to), so it is measured on a GPU even where onnxruntime has no CUDA provider.

    python benchmarks/integration_preprocess.py [--reps 30] [--device cpu|cuda] [--frame 1920x1080] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rfpipe.integrations import inference_models as integration
from rfpipe.testing.untrained import build_packages, cached_packages

MODES = ("stretch", "letterbox", "center-crop", "static-crop")
ROUNDS = 3


def synthetic_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Gradients plus noise, as the team's upstream anchor benchmark builds its frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) * 255 // (width + height))], -1)
    return np.clip(img + rng.integers(-30, 30, img.shape), 0, 255).astype(np.uint8)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall ms, CPU ms of this process, all its threads). On a shared CPU the wall time swings with the
    neighbours' load; the CPU time much less (it counts rfpipe's two threads both, against it)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3, (time.process_time() - cpu_start) * 1e3


def execution_path(package: Path, device: torch.device, preprocessor: str):
    """The object inference-models' RF-DETR ONNX/torch models run `pre_process` through."""
    from inference_models.models.common.roboflow.model_packages import (
        ResizeMode,
        parse_inference_config,
    )
    from inference_models.models.rfdetr.optimization.backend_path import (
        RFDetrBackendPath,
    )
    from inference_models.models.rfdetr.optimization.execution_plan import (
        RFDetrExecutionPlan,
    )

    config = parse_inference_config(
        config_path=str(package / "inference_config.json"),
        allowed_resize_modes={ResizeMode.STRETCH_TO, ResizeMode.LETTERBOX, ResizeMode.CENTER_CROP},
    )
    return RFDetrBackendPath(
        device=device, inference_config=config, backend="onnx",
        execution_plan=RFDetrExecutionPlan(preprocessor_id=preprocessor),
    )


def onnx_runs_on(device: torch.device) -> bool:
    """Whether inference-models' ONNX model can run on `device` here (a GPU needs onnxruntime's CUDA provider)."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return device.type == "cpu" or "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def onnx_model(package: Path, device: torch.device):
    """inference-models' own ONNX RF-DETR on `device`, or None where onnxruntime cannot run it there."""
    from inference_models.models.rfdetr.rfdetr_object_detection_onnx import (
        RFDetrForObjectDetectionONNX,
    )

    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    model = RFDetrForObjectDetectionONNX.from_pretrained(str(package), onnx_execution_providers=providers, device=device)
    return model if model._device.type == device.type else None


def run_mode(package: Path, frame: np.ndarray, device: torch.device, reps: int, end_to_end: bool) -> dict:
    def pre(path):
        return lambda: path.preprocess(frame, input_color_format="bgr")

    integration.uninstall()
    base_path, auto_path = execution_path(package, device, "base"), execution_path(package, device, "auto")
    model = onnx_model(package, device) if end_to_end else None
    assert integration.install(implementation="auto"), "the self-check refused (see the log)"
    rfpipe_path = execution_path(package, device, "auto")  # built after install: auto is base, base is rfpipe
    integration.uninstall()

    base_tensor, base_meta = base_path.preprocess(frame, input_color_format="bgr")
    auto_tensor, _ = auto_path.preprocess(frame, input_color_format="bgr")
    row = {
        "auto_is": auto_path.preprocessor.metadata.implementation_id,
        "auto_equal_to_base": bool(torch.equal(auto_tensor, base_tensor)),
        "auto_max_abs_diff": float((auto_tensor - base_tensor).abs().max()),
    }
    integration.install(implementation="auto")
    try:
        ours, ours_meta = rfpipe_path.preprocess(frame, input_color_format="bgr")
        row["rfpipe_equal_to_base"] = bool(torch.equal(ours, base_tensor)) and list(ours_meta) == list(base_meta)
        if model is not None:
            with_rfpipe = model.infer(frame, input_color_format="bgr")
        # Upstream's candidates run with rfpipe out (as a user without it has them), rfpipe's with it in.
        # Rounds alternate the two states so a drift in the machine's load hits every candidate alike.
        groups = {False: {"base": pre(base_path), "auto": pre(auto_path)}, True: {"rfpipe": pre(rfpipe_path)}}
        if model is not None:
            infer = lambda: model.infer(frame, input_color_format="bgr")  # noqa: E731
            groups[False]["infer_without"] = infer
            groups[True]["infer_with"] = infer
        times: dict[str, list[tuple[float, float]]] = {name: [] for group in groups.values() for name in group}
        for round_number in range(ROUNDS):
            for inside, group in groups.items():
                integration.install(implementation="auto") if inside else integration.uninstall()
                for name, fn in group.items():
                    reps_here = max(1, (reps if name.startswith(("base", "auto", "rfpipe")) else max(3, reps // 3)) // ROUNDS)
                    for _ in range(2 if round_number == 0 else 0):  # warm-up
                        timed(fn, device)
                    times[name].extend(timed(fn, device) for _ in range(reps_here))
        if model is not None:
            integration.uninstall()
            without = model.infer(frame, input_color_format="bgr")
            row["detections_equal"] = all(
                torch.equal(a.xyxy, b.xyxy) and torch.equal(a.confidence, b.confidence) and torch.equal(a.class_id, b.class_id)
                for a, b in zip(without, with_rfpipe)
            )
    finally:
        integration.uninstall()
    for name, values in times.items():
        if values:
            row[f"{name}_ms"] = statistics.median(v[0] for v in values)
            row[f"{name}_min_ms"] = min(v[0] for v in values)
            row[f"{name}_cpu_ms"] = statistics.median(v[1] for v in values)
    row["rfpipe_vs_base"] = row["base_ms"] / row["rfpipe_ms"]
    row["rfpipe_vs_auto"] = row["auto_ms"] / row["rfpipe_ms"]
    row["rfpipe_vs_base_cpu_time"] = row["base_cpu_ms"] / row["rfpipe_cpu_ms"]
    if times.get("infer_with"):
        row["infer_speedup"] = row["infer_without_ms"] / row["infer_with_ms"]
        row["infer_speedup_cpu_time"] = row["infer_without_cpu_ms"] / row["infer_with_cpu_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frame", default="1920x1080", help="WIDTHxHEIGHT of the BGR frame")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-end-to-end", action="store_true", help="time pre_process only")
    parser.add_argument("--json", default=os.path.join(os.environ["OUT"], "integration_preprocess.json") if os.environ.get("OUT") else None)
    args = parser.parse_args()
    import inference_models

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    width, height = (int(v) for v in args.frame.split("x"))
    frame = synthetic_frame(height, width)
    end_to_end = not args.no_end_to_end and onnx_runs_on(device)
    if end_to_end:
        packages = cached_packages()
    else:  # pre_process alone needs only the configs: skip the ONNX export (a GPU image may lack its exporter)
        packages = build_packages(tempfile.mkdtemp(prefix="rfpipe-integration-"), onnx=False)
    info = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "python": platform.python_version(),
        "torch": torch.__version__, "inference_models": inference_models.__version__, "frame": args.frame,
        "reps": args.reps, "end_to_end": end_to_end, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(info))
    rows = {}
    header = f"{'mode':<12} {'base ms':>8} {'auto ms':>8} {'auto is':>20} {'rfpipe ms':>9} {'x base':>7} {'x auto':>7} {'exact':>6} {'auto=base':>9} {'infer w/o':>9} {'infer w/':>9} {'x':>5} {'dets=':>5} {'cpu base/rfpipe ms':>19} {'x':>6} {'cpu infer w/o/w ms':>19} {'x':>5}"
    print(header)
    for mode in args.modes.split(","):
        row = run_mode(packages[mode], frame, device, args.reps, end_to_end)
        rows[mode] = row
        print(
            f"{mode:<12} {row['base_ms']:>8.3f} {row['auto_ms']:>8.3f} {row['auto_is']:>20} {row['rfpipe_ms']:>9.3f} "
            f"{row['rfpipe_vs_base']:>7.2f} {row['rfpipe_vs_auto']:>7.2f} {str(row['rfpipe_equal_to_base']):>6} "
            f"{str(row['auto_equal_to_base']):>9} {row.get('infer_without_ms', float('nan')):>9.2f} "
            f"{row.get('infer_with_ms', float('nan')):>9.2f} {row.get('infer_speedup', float('nan')):>5.2f} {str(row.get('detections_equal', '-')):>5} "
            f"{row['base_cpu_ms']:>9.2f}/{row['rfpipe_cpu_ms']:<9.2f} {row['rfpipe_vs_base_cpu_time']:>6.2f} "
            f"{row.get('infer_without_cpu_ms', float('nan')):>9.1f}/{row.get('infer_with_cpu_ms', float('nan')):<9.1f} "
            f"{row.get('infer_speedup_cpu_time', float('nan')):>5.2f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    if not all(row["rfpipe_equal_to_base"] for row in rows.values()):
        sys.exit("rfpipe inside inference-models was NOT bit-identical to its base in some mode")


if __name__ == "__main__":
    main()
