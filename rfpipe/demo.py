"""The demo: preprocess the bundled sample photos with every implementation, time it, check exactness.

Run with `./dev demo` (or `python -m rfpipe.demo`). Uses a typical RF-DETR package config
(560x560, ImageNet normalisation); no model weights are involved at this stage.
"""

from __future__ import annotations

import statistics
import time

import torch

import rfpipe
from rfpipe.samples import load_samples

DEMO_CONFIG = {
    "network_input": {
        "training_input_size": {"width": 560, "height": 560},
        "dataset_version_resize_dimensions": {"width": 640, "height": 480},
        "resize_mode": "letterbox",
        "color_mode": "rgb",
        "input_channels": 3,
        "dynamic_spatial_size_supported": False,
        "normalization": [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]],
    }
}


def _median_ms(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    implementations = ["reference", "cpu"] + (["cuda"] if device == "cuda" else [])
    photos = load_samples()
    for mode in ("stretch", "letterbox", "center-crop"):
        raw = {"network_input": dict(DEMO_CONFIG["network_input"], resize_mode=mode)}
        config = rfpipe.ModelConfig.from_dict(raw)
        print(f"\n{mode} to 560x560 (dataset-version 640x480), device={device}")
        print(f"{'photo':20s} {'size':>10s} " + " ".join(f"{name + ' ms':>13s}" for name in implementations) + "  bit-identical")
        for name, image in photos.items():
            reference, _ = rfpipe.preprocess(image, config, device=device, implementation="reference")
            times, same = [], []
            for impl in implementations:
                def call(impl=impl, image=image, config=config):
                    return rfpipe.preprocess(image, config, device=device, implementation=impl)[0]

                times.append(_median_ms(call))
                same.append(torch.equal(call(), reference))
            size = f"{image.shape[1]}x{image.shape[0]}"
            print(f"{name:20s} {size:>10s} " + " ".join(f"{t:13.2f}" for t in times) + f"  {all(same)}")


if __name__ == "__main__":
    main()
