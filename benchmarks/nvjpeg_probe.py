"""Where nvJPEG batch decoding spends its time (issue #10: the engine's floor row read 284 frames/s).

Times, on 256 different 720p JPEGs in batches of 32: torchvision's `decode_jpeg(list, device=...)`
alone (default mode and RGB mode, default stream and a side stream), rfpipe's
`decode_batch_on_device` (header and EXIF checks, orientation, BGR), and the header checks alone
on the CPU. Prints one JSON object; `--json PATH` writes it too.

Usage (device): python3 benchmarks/nvjpeg_probe.py [--json $OUT/nvjpeg_probe.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_device import jpegs_720p  # noqa: E402

from rfpipe.io.decode import checked_header, exif_orientation, jpeg_components  # noqa: E402
from rfpipe.io.pool import decode_batch_on_device  # noqa: E402


def rate(fn, batches, repeats: int = 3) -> float:
    """Frames per second of `fn(batch)` over every batch (best of `repeats`), the device synchronised."""
    fn(batches[0])
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return sum(len(b) for b in batches) / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = jpegs_720p(256)
    batches = [encoded[i : i + args.batch] for i in range(0, len(encoded), args.batch)]
    tensors = [[torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in batch] for batch in batches]
    side = torch.cuda.Stream()

    def on_side(batch):
        with torch.cuda.stream(side):
            decode_jpeg(batch, device="cuda", mode=ImageReadMode.RGB)
        side.synchronize()

    start = time.perf_counter()
    for data in encoded:
        checked_header(data, max_pixels=1 << 30), exif_orientation(data), jpeg_components(data)
    checks_us = (time.perf_counter() - start) / len(encoded) * 1e6
    report = {
        "device": torch.cuda.get_device_name(0), "batch": args.batch, "images": len(encoded),
        "torchvision_default_mode_fps": rate(lambda b: decode_jpeg(b, device="cuda"), tensors),
        "torchvision_rgb_fps": rate(lambda b: decode_jpeg(b, device="cuda", mode=ImageReadMode.RGB), tensors),
        "torchvision_rgb_side_stream_fps": rate(on_side, tensors),
        "torchvision_one_by_one_fps": rate(lambda b: [decode_jpeg(t, device="cuda") for t in b], tensors),
        "rfpipe_decode_batch_on_device_fps": rate(lambda b: decode_batch_on_device(b, "cuda"), batches),
        "cpu_header_checks_us_per_image": checks_us,
    }
    print(json.dumps(report, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
