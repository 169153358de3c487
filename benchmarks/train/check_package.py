"""Does the trained package load unchanged where a normal RF-DETR package loads? (issue 14)

Checks, on one test image, for each package folder given:
  1. `rfpipe.Detector.load` with the torch backend, and with the onnx backend when `weights.onnx` is there
     (both must give the same classes and boxes within 1 px, confidences within 1e-3);
  2. inference-models' own `RFDetrForObjectDetectionONNX.from_pretrained` (when weights.onnx is there):
     its pre_process/forward/post_process, same classes and boxes within 1 px as rfpipe's onnx backend;
  3. `rfpipe serve PACKAGE` on 127.0.0.1 (a free port, started here, stopped here, at most 120 s to get
     ready): one POST /infer/object_detection with the image, the predictions counted and compared.
Prints one line per check and exits 1 if any fails.

    PYTHONPATH=. python benchmarks/train/check_package.py /work/trained-nano/letterbox \\
        --image /work/trained-nano-ds/test/digits_00001.jpg
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

import rfpipe
from rfpipe.tools.predict import read_image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same(a, b, *, box_tol: float = 1.0) -> bool:
    """Same classes in the same order and boxes within `box_tol` px."""
    return (len(a[0]) == len(b[0]) and np.array_equal(np.asarray(a[1]), np.asarray(b[1]))
            and (len(a[0]) == 0 or float(np.abs(np.asarray(a[0]) - np.asarray(b[0])).max()) <= box_tol))


def check_rfpipe(package: Path, frame: np.ndarray, confidence: float) -> dict[str, tuple]:
    """(xyxy, class ids, confidences) per rfpipe backend that the package has."""
    out = {}
    for backend in ("torch", "onnx"):
        if backend == "onnx" and not (package / "weights.onnx").exists():
            print(f"  rfpipe onnx backend: skipped (no weights.onnx in {package})")
            continue
        det = rfpipe.Detector.load(package, backend=backend, device="cpu")
        d = det(frame, confidence=confidence)[0]
        out[backend] = (d.xyxy, d.class_id, d.confidence)
        print(f"  rfpipe {backend} backend: {len(d)} detections, classes {sorted(set(d.class_id.tolist()))}, "
              f"class names {det.class_names[:3]}...")
    return out


def check_inference_models(package: Path, frame: np.ndarray, confidence: float) -> tuple | None:
    if not (package / "weights.onnx").exists():
        print("  inference-models: skipped (no weights.onnx)")
        return None
    from inference_models.models.rfdetr.rfdetr_object_detection_onnx import (
        RFDetrForObjectDetectionONNX,
    )

    model = RFDetrForObjectDetectionONNX.from_pretrained(
        str(package), onnx_execution_providers=["CPUExecutionProvider"], device=torch.device("cpu"))
    batch, meta = model.pre_process(frame)
    d = model.post_process(model.forward(batch), meta, confidence=confidence)[0]
    xyxy, cls, conf = d.xyxy.cpu().numpy(), d.class_id.cpu().numpy(), d.confidence.cpu().numpy()
    print(f"  inference-models RFDetrForObjectDetectionONNX: {len(cls)} detections")
    return xyxy, cls, conf


def check_serve(package: Path, image: Path, confidence: float) -> list[dict]:
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rfpipe_cli = Path(sys.executable).with_name("rfpipe")
    cmd = [str(rfpipe_cli), "serve", str(package), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
           "--backend", "torch"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"rfpipe serve exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if json.load(r).get("status") == "ready":
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("rfpipe serve was not ready within 120 s")
            time.sleep(1)
        model_id = package.name
        body = {"model_id": model_id, "confidence": confidence,
                "image": {"type": "base64", "value": base64.b64encode(image.read_bytes()).decode()}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/infer/object_detection", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.load(r)
        preds = answer["predictions"]
        print(f"  rfpipe serve (127.0.0.1:{port}, model_id {model_id}): HTTP 200, {len(preds)} predictions")
        return preds
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("packages", nargs="+", type=Path)
    parser.add_argument("--image", type=Path, required=True, help="a test image (JPEG/PNG)")
    parser.add_argument("--confidence", type=float, default=0.5)
    parser.add_argument("--no-serve", action="store_true")
    args = parser.parse_args()
    frame = read_image(args.image)
    failed = []
    for package in args.packages:
        print(f"{package}:")
        ours = check_rfpipe(package, frame, args.confidence)
        if "onnx" in ours:
            ok = _same(ours["torch"], ours["onnx"]) and (
                len(ours["torch"][2]) == 0 or float(np.abs(ours["torch"][2] - ours["onnx"][2]).max()) < 1e-3)
            print(f"  rfpipe torch vs onnx: {'same' if ok else 'DIFFERENT'}")
            ok or failed.append(f"{package.name}: torch vs onnx")
        theirs = check_inference_models(package, frame, args.confidence)
        if theirs is not None:
            ok = _same(ours["onnx"], theirs)
            print(f"  rfpipe onnx vs inference-models: {'same classes, boxes within 1 px' if ok else 'DIFFERENT'}")
            ok or failed.append(f"{package.name}: rfpipe vs inference-models")
        if not args.no_serve:
            preds = check_serve(package, args.image, args.confidence)
            ok = len(preds) == len(ours["torch"][0]) and sorted(p["class_id"] for p in preds) == sorted(
                ours["torch"][1].tolist())
            print(f"  rfpipe serve vs Detector: {'same classes' if ok else 'DIFFERENT'}")
            ok or failed.append(f"{package.name}: serve vs Detector")
    if failed:
        print("FAILED: " + "; ".join(failed))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
