"""End to end on a GPU: rfpipe's Detector vs inference-models' own RF-DETR model, same package, weights, frames.

Builds the untrained RF-DETR Nano package (torch weights) at RESOLUTION, then in one process:
1. post-processing exactness on the GPU: inference-models' forward outputs through both post-processors;
2. `rfpipe bench` rows for each preprocessing implementation present, torch backend in float32
   (and float16), beside inference-models' torch model
   (its default, not `optimize_for_inference`), batches 1, 4, 8 over the bundled photos.
Writes e2e.json and e2e.png under $OUT (or ./out/e2e). Usage: python benchmarks/e2e_device.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rfpipe
from rfpipe.samples import load_samples, sample_paths
from rfpipe.testing.untrained import build_packages
from rfpipe.tools import bench

RESOLUTION = int(os.environ.get("RESOLUTION", 384))  # Nano's own resolution
REPS = int(os.environ.get("REPS", 30))
BATCHES = [int(b) for b in os.environ.get("BATCHES", "1,4,8").split(",")]
PACKAGE = os.environ.get("PACKAGE", "letterbox")


def postprocess_exactness(ours: rfpipe.Detector, theirs) -> dict:
    """Their forward outputs through post-processing on the device, all photos in one batch.

    `common` is inference-models' RF-DETR post-processing of its ONNX/TensorRT models (DESIGN.md's
    semantics, which rfpipe follows); `torch_model` is its torch model's own post_process, which
    has different arithmetic (box clamping, un-padding in normalised coordinates), for the record.
    """
    from inference_models.models.rfdetr.common import (
        post_process_object_detection_results,
    )

    frames = list(load_samples().values())
    batch, their_meta = theirs.pre_process(frames)
    outputs = theirs.forward(batch)
    boxes, logits = outputs["pred_boxes"], outputs["pred_logits"]
    _, our_meta = ours.preprocess(frames, implementation="reference")
    report = {}
    for name in ("common", "torch_model"):
        checked = equal = detections = 0
        for confidence in (0.3, 0.4, 0.5):
            if name == "common":
                their_dets = post_process_object_detection_results(
                    bboxes=boxes, logits=logits, pre_processing_meta=their_meta, threshold=confidence,
                    num_classes=len(theirs.class_names), classes_re_mapping=theirs._classes_re_mapping,
                    device=boxes.device)
            else:
                their_dets = theirs.post_process({k: v.clone() for k, v in outputs.items() if torch.is_tensor(v)},
                                                 their_meta, confidence=confidence)
            our_dets = ours.postprocess(logits, boxes, our_meta, confidence=confidence)
            for a, b in zip(our_dets, their_dets, strict=True):
                checked += 1
                detections += len(a)
                equal += bool(np.array_equal(a.xyxy, b.xyxy.cpu().numpy())
                              and np.array_equal(a.class_id, b.class_id.cpu().numpy())
                              and np.array_equal(a.confidence, b.confidence.cpu().numpy()))
        report[name] = {"images_checked": checked, "images_identical": equal, "detections": detections}
    return report


def main() -> None:
    out = Path(os.environ.get("OUT") or "out/e2e")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(os.environ.get("DEVICE", "cuda"))
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="rfpipe-e2e-"))
    paths = build_packages(root, resolution=RESOLUTION, onnx=False)
    print(f"built untrained Nano {RESOLUTION} packages in {time.perf_counter() - start:.1f} s", flush=True)
    package = paths[PACKAGE]

    from inference_models.models.rfdetr.rfdetr_object_detection_pytorch import (
        RFDetrForObjectDetectionTorch,
    )

    theirs = RFDetrForObjectDetectionTorch.from_pretrained(str(package), device=device)
    ours = rfpipe.Detector.load(package, device=device, backend="torch")
    exactness = postprocess_exactness(ours, theirs)
    print(f"post-processing on GPU vs inference-models: {exactness}", flush=True)

    implementations = [name for name in ("reference", "cpu", "cuda") if _importable(name)]
    encoded = [p.read_bytes() for p in sample_paths()]
    rows = bench.run_bench(ours, encoded, BATCHES, implementations, reps=REPS, warmup=3, baseline=theirs,
                           progress=False)
    fast = "cuda" if "cuda" in implementations else "cpu"
    variants = (("float16", {"dtype": "float16"}),) if device.type == "cuda" else ()
    failures = {}
    for label, options in variants:
        try:
            variant = rfpipe.Detector.load(package, device=device, backend="torch", **options)
            for row in bench.run_bench(variant, encoded, BATCHES, [fast], reps=REPS, warmup=3, progress=False):
                row["pipeline"] += f"+{label}"
                rows.append(row)
        except Exception as error:  # a variant that cannot run here is reported, not fatal
            failures[label] = f"{type(error).__name__}: {error}"
            print(f"variant {label} failed: {failures[label]}", flush=True)
    rows.sort(key=lambda r: (r["batch"], r["pipeline"]))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    title = f"untrained RF-DETR Nano {RESOLUTION}, {PACKAGE} package, torch backend, {name}"
    print(title)
    print(bench.format_table(rows))
    meta = {"title": title, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "implementations": implementations, "reps": REPS, "frames": len(encoded), "failures": failures}
    (out / "e2e.json").write_text(json.dumps({"meta": meta, "exactness": exactness, "rows": rows}, indent=1))
    bench.plot(rows, out / "e2e.png", title)


def _importable(implementation: str) -> bool:
    import importlib

    from rfpipe.preprocess import IMPLEMENTATIONS

    try:
        importlib.import_module(IMPLEMENTATIONS[implementation])
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
