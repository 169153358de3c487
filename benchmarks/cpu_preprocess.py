"""CPU preprocessing benchmark: inference-models base vs rfpipe reference vs rfpipe cpu, one run.

Every row times the three on the same frame in the same process and checks that rfpipe's cpu
output is bit-identical to the reference (and the reference to base). Prints median ms and the
speed-up of `cpu` over `base`. Usage:

    python benchmarks/cpu_preprocess.py [--reps 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import make_raw_config

import rfpipe
from rfpipe.samples import load_samples


def synthetic_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Gradients plus noise, as the team's upstream anchor benchmark builds its frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) * 255 // (width + height))], -1)
    return np.clip(img + rng.integers(-30, 30, img.shape), 0, 255).astype(np.uint8)


def photo_frame(height: int, width: int) -> np.ndarray:
    photo = load_samples()["retina"]
    return cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)


def median_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def upstream_base():
    try:
        from conftest import Upstream

        return Upstream()
    except ImportError:
        return None


def bench_case(name: str, raw: dict, frame: np.ndarray, batch: int, reps: int, base) -> dict:
    """Time base (if installed), reference and cpu on one input; check the outputs are identical."""
    config = rfpipe.ModelConfig.from_dict(raw)
    images = list(frame) if batch > 1 else frame

    def ref():
        return rfpipe.preprocess(images, config, implementation="reference")[0]

    def fast():
        return rfpipe.preprocess(images, config, implementation="cpu")[0]

    row = {"case": name, "reps": reps}
    exact = torch.equal(ref(), fast())
    row["reference_ms"] = median_ms(ref, reps)
    row["cpu_ms"] = median_ms(fast, reps)
    if base is not None:
        def upstream():
            return base.preprocess(raw, images, "bgr")[0]

        exact = exact and torch.equal(upstream(), ref())
        row["base_ms"] = median_ms(upstream, reps)
        row["speedup_vs_base"] = row["base_ms"] / row["cpu_ms"]
    row["speedup_vs_reference"] = row["reference_ms"] / row["cpu_ms"]
    row["bit_identical"] = exact
    return row


CASES = [
    # name, config kwargs, frame builder, batch
    ("1920x1080 -> 560 stretch", dict(size=(560, 560)), lambda: synthetic_frame(1080, 1920), 1),
    ("1920x1080 -> 640x480 letterbox -> 560", dict(mode="letterbox", size=(560, 560), dataset=(640, 480)),
     lambda: synthetic_frame(1080, 1920), 1),
    ("1920x1080 photo -> 560 stretch", dict(size=(560, 560)), lambda: photo_frame(1080, 1920), 1),
    ("1920x1080 -> 640x640 center-crop -> 560", dict(mode="center-crop", size=(560, 560), dataset=(640, 640)),
     lambda: synthetic_frame(1080, 1920), 1),
    ("640x480 -> 560 stretch", dict(size=(560, 560)), lambda: synthetic_frame(480, 640), 1),
    ("3840x2160 -> 560 stretch", dict(size=(560, 560)), lambda: synthetic_frame(2160, 3840), 1),
    ("4 x 1920x1080 -> 560 stretch", dict(size=(560, 560)),
     lambda: np.stack([synthetic_frame(1080, 1920, s) for s in range(4)]), 4),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    base = upstream_base()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name, kwargs, build, batch in CASES:
        row = bench_case(name, make_raw_config(**kwargs), build(), batch, args.reps, base)
        rows.append(row)
        print(json.dumps(row), flush=True)

    import PIL

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}; "
          f"torch {torch.__version__}; Pillow {PIL.__version__}; OpenCV {cv2.__version__}")
    header = f"{'case':44s} {'base ms':>8s} {'ref ms':>8s} {'cpu ms':>8s} {'x base':>7s} {'x ref':>6s}  exact"
    print(header)
    for r in rows:
        base_ms = f"{r['base_ms']:8.2f}" if "base_ms" in r else f"{'-':>8s}"
        speed = f"{r['speedup_vs_base']:7.2f}" if "speedup_vs_base" in r else f"{'-':>7s}"
        print(f"{r['case']:44s} {base_ms} {r['reference_ms']:8.2f} {r['cpu_ms']:8.2f} {speed} "
              f"{r['speedup_vs_reference']:6.2f}  {r['bit_identical']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
