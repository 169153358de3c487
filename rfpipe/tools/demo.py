"""The demo: detect objects in the bundled photos, stage by stage.

Run with `./dev demo` (or `python -m rfpipe.tools.demo`). Without `--model`, the model is an UNTRAINED
RF-DETR Nano (no trained weights can be downloaded here; randomly initialised, built offline with
rfdetr, cached): its boxes are arbitrary. `./dev demo --model PATH` runs the given package or rfdetr
checkpoint instead (for example the trained Nano of benchmarks/train). What the demo shows is the
pipeline: each preprocessing implementation's time and its bit-exactness against the reference,
forward and post-processing times, and annotated images in out/demo/. It says which model it ran.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import torch

import rfpipe
from rfpipe.devices import default_device
from rfpipe.samples import load_samples
from rfpipe.testing.untrained import cached_packages
from rfpipe.tools.predict import annotate

PACKAGE = "letterbox"  # two-step preprocessing: OpenCV letterbox to 640x480, then Pillow to 320x320
OUT_DIR = Path("out/demo")


def _median_ms(fn, reps: int = 5):
    result = fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="./dev demo", description="Detect objects in the bundled photos, stage by stage.")
    parser.add_argument("--model", type=Path, help="a model package directory or rfdetr checkpoint (.pth); "
                        "default: the untrained RF-DETR Nano")
    parser.add_argument("--confidence", type=float, default=0.4, help="keep detections above this (default 0.4)")
    args = parser.parse_args(argv)
    device = default_device()
    start = time.perf_counter()
    if args.model is None:
        print("rfpipe demo. Model: the UNTRAINED RF-DETR Nano (random weights, built offline): "
              "the boxes below are arbitrary; the timings and the exactness checks are real.")
        model = cached_packages()[PACKAGE]
        print(f"model package: {model} (ready in {time.perf_counter() - start:.1f} s)")
    else:
        model = args.model
        print(f"rfpipe demo. Model: {model} (the package given with --model; its detections are what it learned).")
    detector = rfpipe.Detector.load(model, device=device)
    implementations = ["reference", "cpu"] + (["cuda"] if device == "cuda" else [])
    print(f"{detector!r}; resize mode {detector.config.resize_mode.value}; "
          f"classes {', '.join(detector.class_names)}; device={device}\n")

    header = " ".join(f"{'pre ' + name + ' ms':>16s}" for name in implementations)
    print(f"{'photo':18s} {'size':>9s} {header}  exact  {'forward ms':>10s} {'post ms':>8s} {'boxes':>5s}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    all_exact = True
    for name, image in load_samples().items():
        reference, _ = detector.preprocess(image, implementation="reference")
        pre_times, exact = [], []
        for impl in implementations:
            ms, (batch, metadata) = _median_ms(lambda impl=impl, image=image: detector.preprocess(image, implementation=impl))
            pre_times.append(ms)
            exact.append(torch.equal(batch.cpu(), reference.cpu()))
        forward_ms, (logits, boxes) = _median_ms(lambda batch=batch: detector.forward(batch), reps=3)
        post_ms, (dets,) = _median_ms(
            lambda out=(logits, boxes, metadata): detector.postprocess(*out, confidence=args.confidence))
        cv2.imwrite(str(OUT_DIR / f"{name}.jpg"), annotate(image, dets))
        all_exact &= all(exact)
        size = f"{image.shape[1]}x{image.shape[0]}"
        cells = " ".join(f"{t:16.2f}" for t in pre_times)
        print(f"{name:18s} {size:>9s} {cells}  {str(all(exact)):5s}  {forward_ms:10.1f} {post_ms:8.2f} {len(dets):5d}")
    print(f"\nevery implementation bit-identical to the reference: {all_exact}")
    what = "untrained weights: arbitrary boxes" if args.model is None else f"model {model}"
    print(f"annotated photos: {OUT_DIR}/ ({what})")
    print(f"try: rfpipe predict {model} rfpipe/samples --out out/predict")


if __name__ == "__main__":
    main()
